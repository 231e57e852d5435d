#include "worker/data/shapes.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace prunesvc::data {
namespace {

namespace fs = std::filesystem;

constexpr int kNumColours = static_cast<int>(kPalette.size());
constexpr int kNumShapes = static_cast<int>(kShapeNames.size());
// A sample is redrawn when its image falls in another split or its answer cannot be staged; with
// resolved options a draw succeeds with probability ≥ 1/4, so this bound is never reached in
// practice — it only turns a logic error into a clear Status instead of a hang.
constexpr int kMaxAttempts = 10000;

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <typename T>
void Shuffle(Prng& rng, std::vector<T>& v) {
  // Fisher–Yates with the generator's own bounded draw (std::shuffle's algorithm is
  // implementation-defined).
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng.Below(i));
    std::swap(v[i - 1], v[j]);
  }
}

// `k` distinct values from [0, n) excluding `exclude` (-1 for none), in draw order.
std::vector<int> DrawDistinct(Prng& rng, int n, int k, int exclude) {
  std::vector<int> pool;
  for (int i = 0; i < n; ++i) {
    if (i != exclude) pool.push_back(i);
  }
  std::vector<int> out;
  for (int i = 0; i < k; ++i) {
    const size_t j = static_cast<size_t>(rng.Below(pool.size()));
    out.push_back(pool[j]);
    pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(j));
  }
  return out;
}

// A value in [0, n) other than `exclude`.
int DrawOther(Prng& rng, int n, int exclude) {
  int v = static_cast<int>(rng.Below(static_cast<uint64_t>(n - 1)));
  return v >= exclude ? v + 1 : v;
}

// True when the boxes of a and b (with a 1 px gap) do not touch.
bool Separated(const SceneObject& a, const SceneObject& b) {
  const int gap = 1;
  return a.x + a.radius + gap < b.x - b.radius || b.x + b.radius + gap < a.x - a.radius ||
         a.y + a.radius + gap < b.y - b.radius || b.y + b.radius + gap < a.y - a.radius;
}

// Places `obj` (radius already set) uniformly among the centres that keep it ≥ 1 px inside the
// canvas, clear of `placed`, and (when `relative_to` is set) in `relation` to it. Enumerating
// every candidate — at most image_size² — instead of rejection sampling means tight layouts
// never loop. Returns false when no position is left.
bool Place(Prng& rng, int size, const std::vector<SceneObject>& placed, SceneObject* obj,
           const SceneObject* relative_to = nullptr, Relation relation = Relation::kNone) {
  std::vector<std::pair<int, int>> candidates;
  const int lo = 1 + obj->radius;
  const int hi = size - 2 - obj->radius;
  for (int y = lo; y <= hi; ++y) {
    for (int x = lo; x <= hi; ++x) {
      obj->x = x;
      obj->y = y;
      bool ok = true;
      for (const SceneObject& other : placed) {
        if (!Separated(*obj, other)) {
          ok = false;
          break;
        }
      }
      if (ok && relative_to != nullptr && RelationOf(*obj, *relative_to) != relation) ok = false;
      if (ok) candidates.emplace_back(x, y);
    }
  }
  if (candidates.empty()) return false;
  const auto& [x, y] = candidates[rng.Below(candidates.size())];
  obj->x = x;
  obj->y = y;
  return true;
}

std::string Capitalised(std::string_view s) {
  std::string out(s);
  if (!out.empty() && out[0] >= 'a' && out[0] <= 'z') out[0] = static_cast<char>(out[0] - 32);
  return out;
}

// What a staged question needs before the options are shuffled.
struct Staged {
  std::string question;
  std::string answer;
  std::vector<std::string> distractors;  // 3
};

// Draws the objects' radii and places them in order; false when the layout ran out of room.
// With `second_to_first` set, object 1 must stand in that relation to object 0.
bool PlaceAll(Prng& rng, const ShapesOptions& o, std::vector<SceneObject>* objects,
              Relation second_to_first = Relation::kNone) {
  std::vector<SceneObject> placed;
  for (size_t i = 0; i < objects->size(); ++i) {
    SceneObject obj = (*objects)[i];
    obj.radius = rng.Range(o.min_radius, o.max_radius);
    const bool constrained = i == 1 && second_to_first != Relation::kNone;
    if (!Place(rng, o.image_size, placed, &obj, constrained ? &placed[0] : nullptr,
               second_to_first)) {
      return false;
    }
    placed.push_back(obj);
  }
  *objects = std::move(placed);
  return true;
}

std::vector<std::string> Names(const std::vector<int>& ids, bool colours) {
  std::vector<std::string> out;
  for (int id : ids) {
    out.emplace_back(colours ? kPalette[static_cast<size_t>(id)].name
                             : kShapeNames[static_cast<size_t>(id)]);
  }
  return out;
}

bool StageColour(Prng& rng, const ShapesOptions& o, Scene* scene, Staged* q) {
  const int n = rng.Range(o.min_objects, o.max_objects);
  const int shape = static_cast<int>(rng.Below(kNumShapes));
  const int colour = static_cast<int>(rng.Below(kNumColours));
  std::vector<SceneObject> objs(static_cast<size_t>(n));
  const size_t target = rng.Below(static_cast<uint64_t>(n));
  for (size_t i = 0; i < objs.size(); ++i) {
    objs[i].shape = static_cast<Shape>(i == target ? shape : DrawOther(rng, kNumShapes, shape));
    objs[i].colour = i == target ? colour : static_cast<int>(rng.Below(kNumColours));
  }
  if (!PlaceAll(rng, o, &objs)) return false;
  scene->objects = std::move(objs);
  q->question = absl::StrCat("What colour is the ", AsAbsl(kShapeNames[shape]), "?");
  q->answer = std::string(kPalette[colour].name);
  q->distractors = Names(DrawDistinct(rng, kNumColours, 3, colour), /*colours=*/true);
  return true;
}

bool StageShape(Prng& rng, const ShapesOptions& o, Scene* scene, Staged* q) {
  const int n = rng.Range(o.min_objects, o.max_objects);
  const int shape = static_cast<int>(rng.Below(kNumShapes));
  const int colour = static_cast<int>(rng.Below(kNumColours));
  std::vector<SceneObject> objs(static_cast<size_t>(n));
  const size_t target = rng.Below(static_cast<uint64_t>(n));
  for (size_t i = 0; i < objs.size(); ++i) {
    objs[i].colour = i == target ? colour : DrawOther(rng, kNumColours, colour);
    objs[i].shape = static_cast<Shape>(i == target ? shape : rng.Below(kNumShapes));
  }
  if (!PlaceAll(rng, o, &objs)) return false;
  scene->objects = std::move(objs);
  q->question = absl::StrCat("What shape is the ", AsAbsl(kPalette[colour].name), " object?");
  q->answer = std::string(kShapeNames[shape]);
  q->distractors = Names(DrawDistinct(rng, kNumShapes, 3, shape), /*colours=*/false);
  return true;
}

// Options for counts: 4 distinct numbers from [lo, lo + span), span ≥ 4, one of them `answer`.
std::vector<std::string> CountDistractors(Prng& rng, int lo, int span, int answer) {
  std::vector<std::string> out;
  for (int v : DrawDistinct(rng, span, 3, answer - lo)) out.push_back(absl::StrCat(lo + v));
  return out;
}

bool StageCount(Prng& rng, const ShapesOptions& o, Scene* scene, Staged* q) {
  std::vector<SceneObject> objs;
  if (rng.Below(2) == 0) {
    // Total count: answers uniform over [min_objects, max_objects]; options from 1..max(4, max+1).
    const int n = rng.Range(o.min_objects, o.max_objects);
    objs.resize(static_cast<size_t>(n));
    for (SceneObject& obj : objs) {
      obj.colour = static_cast<int>(rng.Below(kNumColours));
      obj.shape = static_cast<Shape>(rng.Below(kNumShapes));
    }
    q->question = "How many objects are there?";
    q->answer = absl::StrCat(n);
    q->distractors = CountDistractors(rng, 1, std::max(4, o.max_objects + 1), n);
  } else {
    // Count of one colour: k uniform over [0, max_objects] (0 = colour absent); the scene holds
    // at least k and at least min_objects objects; options from 0..max(3, max_objects).
    const int colour = static_cast<int>(rng.Below(kNumColours));
    const int k = rng.Range(0, o.max_objects);
    const int n = rng.Range(std::max({k, o.min_objects, 1}), o.max_objects);
    objs.resize(static_cast<size_t>(n));
    // Which objects get the colour: the first k of a shuffled index list.
    std::vector<int> order(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    Shuffle(rng, order);
    for (int i = 0; i < n; ++i) {
      SceneObject& obj = objs[static_cast<size_t>(order[static_cast<size_t>(i)])];
      obj.colour = i < k ? colour : DrawOther(rng, kNumColours, colour);
      obj.shape = static_cast<Shape>(rng.Below(kNumShapes));
    }
    q->question = absl::StrCat("How many ", AsAbsl(kPalette[colour].name), " objects are there?");
    q->answer = absl::StrCat(k);
    q->distractors = CountDistractors(rng, 0, std::max(4, o.max_objects + 1), k);
  }
  if (!PlaceAll(rng, o, &objs)) return false;
  scene->objects = std::move(objs);
  return true;
}

bool StagePosition(Prng& rng, const ShapesOptions& o, Scene* scene, Staged* q) {
  const int n = rng.Range(std::max(2, o.min_objects), o.max_objects);
  const auto relation = static_cast<Relation>(rng.Below(4));
  // Distinct (colour, shape) pairs, so both referring expressions pick out one object.
  const std::vector<int> pairs = DrawDistinct(rng, kNumColours * kNumShapes, n, -1);
  std::vector<SceneObject> objs(static_cast<size_t>(n));
  for (size_t i = 0; i < objs.size(); ++i) {
    objs[i].colour = pairs[i] / kNumShapes;
    objs[i].shape = static_cast<Shape>(pairs[i] % kNumShapes);
  }
  // Object 0 is asked about relative to object 1: place object 0, then object 1 among the
  // positions where object 0 stands in `relation` to it. The relation is stated of A (objs[0])
  // relative to B (objs[1]); Place checks RelationOf(candidate, relative_to), so ask for the
  // converse when placing B.
  static constexpr Relation kConverse[] = {Relation::kRightOf, Relation::kLeftOf, Relation::kBelow,
                                           Relation::kAbove};
  if (!PlaceAll(rng, o, &objs, kConverse[static_cast<int>(relation)])) return false;
  if (RelationOf(objs[0], objs[1]) != relation) return false;  // cannot happen; belt and braces
  scene->objects = std::move(objs);
  const SceneObject& a = scene->objects[0];
  const SceneObject& b = scene->objects[1];
  q->question = absl::StrCat("Where is the ", AsAbsl(kPalette[a.colour].name), " ",
                             AsAbsl(kShapeNames[static_cast<int>(a.shape)]), " relative to the ",
                             AsAbsl(kPalette[b.colour].name), " ",
                             AsAbsl(kShapeNames[static_cast<int>(b.shape)]), "?");
  q->answer = std::string(kRelationNames[static_cast<int>(relation)]);
  for (int r = 0; r < 4; ++r) {
    if (r != static_cast<int>(relation)) q->distractors.emplace_back(kRelationNames[r]);
  }
  return true;
}

void PutLe32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

// ---- PRNG ----

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

Prng::Prng(uint64_t seed) {
  for (uint64_t& word : s_) {
    seed += 0x9e3779b97f4a7c15ULL;
    word = Mix64(seed);
  }
}

Prng Prng::FromState(const std::array<uint64_t, 4>& state) {
  Prng p(0);
  p.s_ = state;
  return p;
}

Prng Prng::ForSample(uint64_t seed, uint64_t index) {
  // Distinct constants keep (seed, index) and (index, seed) apart.
  return Prng(Mix64(seed ^ 0x5348415045535651ULL) ^ Mix64(index + 0x7ef5a3c1d2b40987ULL));
}

uint64_t Prng::Next() {
  const auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

uint64_t Prng::Below(uint64_t n) {
  // Values below 2^64 mod n would make the low residues likelier; reject them.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    const uint64_t r = Next();
    if (r >= threshold) return r % n;
  }
}

int Prng::Range(int lo, int hi) {
  return lo + static_cast<int>(Below(static_cast<uint64_t>(static_cast<int64_t>(hi) - lo + 1)));
}

// ---- Names, options ----

absl::StatusOr<QuestionType> ParseQuestionType(std::string_view name) {
  for (size_t i = 0; i < kQuestionTypeNames.size(); ++i) {
    if (kQuestionTypeNames[i] == name) return static_cast<QuestionType>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown question type \"", AsAbsl(name),
                                                 "\" (expected colour, shape, count or position)"));
}

absl::StatusOr<std::vector<QuestionType>> ParseQuestionTypes(std::string_view list) {
  std::vector<QuestionType> out;
  for (absl::string_view part : absl::StrSplit(AsAbsl(list), ',')) {
    ASSIGN_OR_RETURN(QuestionType t, ParseQuestionType(std::string_view(part.data(), part.size())));
    if (std::find(out.begin(), out.end(), t) != out.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("question type \"", part, "\" is listed twice"));
    }
    out.push_back(t);
  }
  return out;
}

absl::StatusOr<Split> ParseSplit(std::string_view name) {
  for (Split s : {Split::kAll, Split::kTrain, Split::kSearch, Split::kEval}) {
    if (SplitName(s) == name) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown split \"", AsAbsl(name), "\" (expected train, search, eval or all)"));
}

std::string_view SplitName(Split split) {
  switch (split) {
    case Split::kAll:
      return "all";
    case Split::kTrain:
      return "train";
    case Split::kSearch:
      return "search";
    case Split::kEval:
      return "eval";
  }
  return "?";
}

Split SplitOfImageHash(std::string_view image_sha256) {
  // The second hex digit is the low nibble of the digest's first byte.
  const char c = image_sha256.size() >= 2 ? image_sha256[1] : '0';
  const int nibble = c >= 'a' ? c - 'a' + 10 : c >= 'A' ? c - 'A' + 10 : c - '0';
  switch (nibble & 3) {
    case 2:
      return Split::kSearch;
    case 3:
      return Split::kEval;
    default:
      return Split::kTrain;
  }
}

absl::StatusOr<ShapesOptions> ResolveOptions(ShapesOptions o) {
  if (o.image_size < 16 || o.image_size > 512) {
    return absl::InvalidArgumentError(
        absl::StrCat("image_size ", o.image_size, " is outside 16..512"));
  }
  if (o.min_radius == 0) o.min_radius = o.image_size / 8;
  if (o.max_radius == 0) o.max_radius = std::max(o.min_radius, o.image_size * 3 / 16);
  // Below radius 2 the four shapes are no longer told apart (a 3×3 circle is a cross).
  if (o.min_radius < 2 || o.min_radius > o.max_radius) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_radius ", o.min_radius, " must be ≥ 2 and ≤ max_radius ", o.max_radius));
  }
  if (o.max_objects < 1 || o.max_objects > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_objects ", o.max_objects, " is outside 1..8"));
  }
  if (o.min_objects < 1 || o.min_objects > o.max_objects) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_objects ", o.min_objects, " must be ≥ 1 and ≤ max_objects ", o.max_objects));
  }
  if (o.types.empty()) return absl::InvalidArgumentError("types is empty");
  // Room guarantee: objects of max_radius on a grid of (2r+1)-px cells with 1-px gaps inside a
  // 1-px border. Greedy placement can still corner itself; GenerateSample then redraws.
  const int per_side = (o.image_size - 1) / (2 * o.max_radius + 2);
  if (per_side * per_side < o.max_objects) {
    return absl::InvalidArgumentError(absl::StrCat(
        o.max_objects, " objects of max_radius ", o.max_radius, " do not fit reliably on a ",
        o.image_size, "px canvas (at most ", per_side * per_side, ")"));
  }
  const bool position =
      std::find(o.types.begin(), o.types.end(), QuestionType::kPosition) != o.types.end();
  if (position && o.max_objects < 2) {
    return absl::InvalidArgumentError("position questions need max_objects ≥ 2");
  }
  return o;
}

// ---- Rendering and geometry ----

model::RgbImage RenderScene(const Scene& scene) {
  model::RgbImage img;
  img.width = scene.size;
  img.height = scene.size;
  img.pixels.resize(static_cast<size_t>(scene.size) * scene.size * 3);
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    std::copy(kBackground.begin(), kBackground.end(), img.pixels.begin() + i);
  }
  for (const SceneObject& obj : scene.objects) {
    const PaletteColour& c = kPalette[static_cast<size_t>(obj.colour)];
    const int r = obj.radius;
    const int arm = r / 3;
    for (int dy = -r; dy <= r; ++dy) {
      for (int dx = -r; dx <= r; ++dx) {
        bool on = false;
        switch (obj.shape) {
          case Shape::kCircle:
            on = dx * dx + dy * dy <= r * r + r;
            break;
          case Shape::kSquare:
            on = true;
            break;
          case Shape::kTriangle:
            on = 2 * std::abs(dx) <= dy + r;  // |dx| ≤ row/2, row = dy + r, floor division
            break;
          case Shape::kCross:
            on = std::abs(dx) <= arm || std::abs(dy) <= arm;
            break;
        }
        const int x = obj.x + dx;
        const int y = obj.y + dy;
        if (!on || x < 0 || y < 0 || x >= scene.size || y >= scene.size) continue;
        uint8_t* p = img.pixels.data() + (static_cast<size_t>(y) * scene.size + x) * 3;
        p[0] = c.r;
        p[1] = c.g;
        p[2] = c.b;
      }
    }
  }
  return img;
}

Relation RelationOf(const SceneObject& a, const SceneObject& b) {
  const int dx = a.x - b.x;
  const int dy = a.y - b.y;
  if (2 * std::abs(dy) <= std::abs(dx)) {
    if (a.x + a.radius < b.x - b.radius) return Relation::kLeftOf;
    if (b.x + b.radius < a.x - a.radius) return Relation::kRightOf;
  }
  if (2 * std::abs(dx) <= std::abs(dy)) {
    if (a.y + a.radius < b.y - b.radius) return Relation::kAbove;
    if (b.y + b.radius < a.y - a.radius) return Relation::kBelow;
  }
  return Relation::kNone;
}

// ---- Hashes, samples ----

std::string ImagePath(uint64_t index) { return absl::StrFormat("images/%06u.png", index); }

std::string ImageSha256(const model::RgbImage& image) {
  std::string header = "shapes-vqa image v1\n";
  PutLe32(&header, static_cast<uint32_t>(image.width));
  PutLe32(&header, static_cast<uint32_t>(image.height));
  Sha256 h;
  h.Update(header);
  h.Update(absl::MakeConstSpan(image.pixels));
  return DigestHex(h.Final());
}

std::string ContentSha256(std::string_view image_sha256, std::string_view question,
                          std::string_view answer_text) {
  Sha256 h;
  h.Update(std::string_view("shapes-vqa content v1\n"));
  h.Update(image_sha256);
  h.Update(std::string_view("\n"));
  h.Update(question);
  h.Update(std::string_view("\n"));
  h.Update(answer_text);
  return DigestHex(h.Final());
}

absl::StatusOr<ShapesSample> GenerateSample(const ShapesOptions& o, uint64_t seed, uint64_t index) {
  if (o.types.empty() || o.min_radius < 2) {
    return absl::InvalidArgumentError("GenerateSample: options were not resolved");
  }
  ShapesSample s;
  s.index = index;
  s.id = absl::StrCat("shapes-", seed, "-", index);
  s.image_path = ImagePath(index);
  s.type = o.types[index % o.types.size()];
  Prng rng = Prng::ForSample(seed, index);
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    Scene scene;
    scene.size = o.image_size;
    Staged q;
    bool ok = false;
    switch (s.type) {
      case QuestionType::kColour:
        ok = StageColour(rng, o, &scene, &q);
        break;
      case QuestionType::kShape:
        ok = StageShape(rng, o, &scene, &q);
        break;
      case QuestionType::kCount:
        ok = StageCount(rng, o, &scene, &q);
        break;
      case QuestionType::kPosition:
        ok = StagePosition(rng, o, &scene, &q);
        break;
    }
    if (!ok) continue;
    model::RgbImage image = RenderScene(scene);
    std::string image_hash = ImageSha256(image);
    if (o.split != Split::kAll && SplitOfImageHash(image_hash) != o.split) continue;
    // Options: the answer at a uniformly drawn slot among the shuffled distractors.
    std::vector<std::string> options = std::move(q.distractors);
    Shuffle(rng, options);
    const size_t slot = rng.Below(options.size() + 1);
    options.insert(options.begin() + static_cast<std::ptrdiff_t>(slot), q.answer);
    s.scene = std::move(scene);
    s.image = std::move(image);
    s.content_sha256 = ContentSha256(image_hash, q.question, q.answer);
    s.image_sha256 = std::move(image_hash);
    s.question = std::move(q.question);
    s.options = std::move(options);
    s.answer_index = static_cast<int>(slot);
    return s;
  }
  return absl::InternalError(absl::StrCat("sample ", index, " (seed ", seed,
                                          "): no valid scene after ", kMaxAttempts, " draws"));
}

std::string SampleJsonLine(const ShapesSample& s) {
  nlohmann::ordered_json objects = nlohmann::ordered_json::array();
  for (const SceneObject& obj : s.scene.objects) {
    objects.push_back(nlohmann::ordered_json{
        {"colour", std::string(kPalette[static_cast<size_t>(obj.colour)].name)},
        {"shape", std::string(kShapeNames[static_cast<size_t>(obj.shape)])},
        {"x", obj.x},
        {"y", obj.y},
        {"r", obj.radius}});
  }
  nlohmann::ordered_json j;
  j["id"] = s.id;
  j["image"] = s.image_path;
  j["question"] = s.question;
  j["options"] = s.options;
  j["answer"] = std::string(1, static_cast<char>('A' + s.answer_index));
  j["type"] = std::string(kQuestionTypeNames[static_cast<size_t>(s.type)]);
  j["scene"] = nlohmann::ordered_json{{"size", s.scene.size}, {"objects", std::move(objects)}};
  j["content_sha256"] = s.content_sha256;
  return j.dump();
}

// ---- Writing a set ----

namespace {

absl::Status WriteFile(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat(path.string(), ": cannot open for writing: ", std::strerror(errno)));
  }
  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool closed = std::fclose(f) == 0;
  if (written != bytes.size() || !closed) {
    return absl::DataLossError(absl::StrCat(path.string(), ": write failed"));
  }
  return absl::OkStatus();
}

// Prepares DIR: created when missing; when non-empty, refused unless `force`, in which case only
// samples.jsonl (first, so no listing outlives its images) and images/ are removed.
absl::Status PrepareDir(const fs::path& dir, bool force) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir.string(), ": exists and is not a directory"));
    }
    fs::directory_iterator it(dir, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(dir.string(), ": cannot list: ", ec.message()));
    }
    if (it != fs::directory_iterator()) {
      if (!force) {
        return absl::FailedPreconditionError(
            absl::StrCat(dir.string(), " is not empty (it holds \"", it->path().filename().string(),
                         "\"); pass --force to replace its samples.jsonl and images/"));
      }
      for (const char* name : {"samples.jsonl", "images"}) {
        fs::remove_all(dir / name, ec);
        if (ec) {
          return absl::PermissionDeniedError(
              absl::StrCat((dir / name).string(), ": cannot remove: ", ec.message()));
        }
      }
    }
  } else {
    fs::create_directories(dir, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(dir.string(), ": cannot create: ", ec.message()));
    }
  }
  fs::create_directory(dir / "images", ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat((dir / "images").string(), ": cannot create: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteShapesSet(const ShapesOptions& options, uint64_t seed, int64_t count,
                            const std::string& dir, const WriteOptions& write_options) {
  ASSIGN_OR_RETURN(ShapesOptions o, ResolveOptions(options));
  if (count < 1 || count > kMaxCount) {
    return absl::InvalidArgumentError(absl::StrCat("count ", count, " is outside 1..", kMaxCount));
  }
  if (dir.empty()) return absl::InvalidArgumentError("output directory is empty");
  const fs::path root(dir);
  RETURN_IF_ERROR(PrepareDir(root, write_options.force));

  const fs::path tmp = root / "samples.jsonl.tmp";
  std::ofstream jsonl(tmp, std::ios::binary | std::ios::trunc);
  if (!jsonl) {
    return absl::PermissionDeniedError(absl::StrCat(tmp.string(), ": cannot open for writing"));
  }
  int64_t next_report = 1;
  for (int64_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(ShapesSample s, GenerateSample(o, seed, static_cast<uint64_t>(i)));
    ASSIGN_OR_RETURN(std::vector<uint8_t> png, model::EncodePng(s.image));
    RETURN_IF_ERROR(WriteFile(root / s.image_path, png));
    jsonl << SampleJsonLine(s) << '\n';
    if (!jsonl) return absl::DataLossError(absl::StrCat(tmp.string(), ": write failed"));
    // After each tenth: done * 10 ≥ next_report * count.
    if (write_options.progress && (i + 1) * 10 >= next_report * count) {
      write_options.progress(i + 1, count);
      while ((i + 1) * 10 >= next_report * count) ++next_report;
    }
  }
  jsonl.close();
  if (!jsonl) return absl::DataLossError(absl::StrCat(tmp.string(), ": write failed"));
  std::error_code ec;
  fs::rename(tmp, root / "samples.jsonl", ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat((root / "samples.jsonl").string(), ": cannot rename: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace prunesvc::data
