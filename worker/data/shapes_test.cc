#include "worker/data/shapes.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/data/shapes_seeds.h"
#include "worker/model/image.h"
#include "worker/model/samples.h"

namespace prunesvc::data {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path MakeTempDir(const std::string& tag) {
  std::string templ = (fs::path(::testing::TempDir()) / ("shapes_" + tag + "_XXXXXX")).string();
  EXPECT_NE(mkdtemp(templ.data()), nullptr);
  return fs::path(templ);
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Relative path → bytes of every regular file under `root`.
std::map<std::string, std::string> ReadTree(const fs::path& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), root).string()] = ReadFile(e.path());
  }
  return out;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out = absl::StrSplit(text, '\n');
  if (!out.empty() && out.back().empty()) out.pop_back();
  return out;
}

ShapesOptions Resolved(ShapesOptions o = {}) {
  auto r = ResolveOptions(o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : ShapesOptions{};
}

fs::path WriteSet(const std::string& tag, uint64_t seed, int64_t count, ShapesOptions o = {}) {
  fs::path dir = MakeTempDir(tag);
  absl::Status s = WriteShapesSet(o, seed, count, dir.string());
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

// ---- PRNG: known answers from the reference implementations ----

TEST(PrngTest, MatchesReferenceImplementations) {
  // splitmix64 from seed 0: first output published with the algorithm (Vigna, splitmix64.c).
  EXPECT_EQ(Mix64(0x9e3779b97f4a7c15ULL), 0xe220a8397b1dcdafULL);
  // xoshiro256** from state {1, 2, 3, 4} (xoshiro256starstar.c).
  Prng p = Prng::FromState({1, 2, 3, 4});
  EXPECT_EQ(p.Next(), 11520u);
  EXPECT_EQ(p.Next(), 0u);
  EXPECT_EQ(p.Next(), 1509978240u);
  EXPECT_EQ(p.Next(), 1215971899390074240u);
  // Seeding from splitmix64(0): state = its first four outputs (checked with a Python port).
  Prng q(0);
  EXPECT_EQ(q.Next(), 11091344671253066420u);
  EXPECT_EQ(q.Next(), 13793997310169335082u);
}

TEST(PrngTest, BelowIsInRangeAndCoversIt) {
  Prng p = Prng::ForSample(1, 0);
  std::vector<int> hist(6);
  for (int i = 0; i < 6000; ++i) {
    const uint64_t v = p.Below(6);
    ASSERT_LT(v, 6u);
    ++hist[v];
  }
  // Expected 1000 each; 5σ ≈ 144.
  for (int h : hist) EXPECT_NEAR(h, 1000, 150);
  for (int i = 0; i < 1000; ++i) {
    const int v = p.Range(-2, 2);
    ASSERT_GE(v, -2);
    ASSERT_LE(v, 2);
  }
  EXPECT_EQ(p.Below(1), 0u);
}

TEST(PrngTest, SampleStreamsDiffer) {
  std::set<uint64_t> firsts;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    for (uint64_t index = 0; index < 20; ++index) {
      firsts.insert(Prng::ForSample(seed, index).Next());
    }
  }
  EXPECT_EQ(firsts.size(), 400u);
  EXPECT_NE(Prng::ForSample(1, 2).Next(), Prng::ForSample(2, 1).Next());
}

// ---- Options and names ----

TEST(OptionsTest, DefaultsResolve) {
  ShapesOptions o = Resolved();
  EXPECT_EQ(o.image_size, 32);
  EXPECT_EQ(o.min_radius, 4);
  EXPECT_EQ(o.max_radius, 6);
  EXPECT_EQ(o.types.size(), 4u);
  EXPECT_EQ(o.split, Split::kTrain);
  ShapesOptions big;
  big.image_size = 48;
  big = Resolved(big);
  EXPECT_EQ(big.min_radius, 6);
  EXPECT_EQ(big.max_radius, 9);
}

TEST(OptionsTest, RejectsBadValues) {
  auto expect_error = [](ShapesOptions o, const std::string& text) {
    auto r = ResolveOptions(o);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(text));
  };
  ShapesOptions o;
  o.image_size = 8;
  expect_error(o, "image_size 8");
  o = {};
  o.image_size = 100000;
  expect_error(o, "image_size 100000");
  o = {};
  o.min_radius = 1;
  o.max_radius = 3;
  expect_error(o, "min_radius 1");
  o = {};
  o.min_radius = 5;
  o.max_radius = 4;
  expect_error(o, "min_radius 5");
  o = {};
  o.max_objects = 0;
  expect_error(o, "max_objects 0");
  o = {};
  o.max_objects = 9;
  expect_error(o, "max_objects 9");
  o = {};
  o.min_objects = 3;
  o.max_objects = 2;
  expect_error(o, "min_objects 3");
  o = {};
  o.max_objects = 5;  // 5 objects of radius 6 in 32 px
  expect_error(o, "do not fit");
  o = {};
  o.max_objects = 1;
  expect_error(o, "position questions need");
  o = {};
  o.types.clear();
  expect_error(o, "types is empty");
  // Unresolved options are refused rather than generating nonsense.
  EXPECT_FALSE(GenerateSample(ShapesOptions{}, 1, 0).ok());
}

TEST(OptionsTest, ParsesNames) {
  auto t = ParseQuestionTypes("count,colour");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, (std::vector<QuestionType>{QuestionType::kCount, QuestionType::kColour}));
  EXPECT_THAT(std::string(ParseQuestionTypes("colour,colour").status().message()),
              HasSubstr("listed twice"));
  EXPECT_THAT(std::string(ParseQuestionTypes("color").status().message()),
              HasSubstr("unknown question type \"color\""));
  EXPECT_FALSE(ParseQuestionTypes("").ok());
  EXPECT_FALSE(ParseQuestionTypes("colour,").ok());
  for (Split s : {Split::kAll, Split::kTrain, Split::kSearch, Split::kEval}) {
    auto parsed = ParseSplit(SplitName(s));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_FALSE(ParseSplit("test").ok());
  EXPECT_EQ(SplitOfImageHash(std::string(64, '0')), Split::kTrain);
  EXPECT_EQ(SplitOfImageHash("01" + std::string(62, '0')), Split::kTrain);
  EXPECT_EQ(SplitOfImageHash("f2" + std::string(62, '0')), Split::kSearch);
  EXPECT_EQ(SplitOfImageHash("0b" + std::string(62, '0')), Split::kEval);
  EXPECT_EQ(ImagePath(0), "images/000000.png");
  EXPECT_EQ(ImagePath(999999), "images/999999.png");
}

// ---- Determinism ----

TEST(DeterminismTest, SameSetTwiceIsByteIdentical) {
  fs::path a = WriteSet("det_a", 7, 120);
  fs::path b = WriteSet("det_b", 7, 120);
  auto ta = ReadTree(a);
  auto tb = ReadTree(b);
  EXPECT_EQ(ta.size(), 121u);  // 120 images + samples.jsonl; no temporary left
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& [name, bytes] : ta) {
    ASSERT_TRUE(tb.count(name)) << name;
    EXPECT_EQ(bytes, tb[name]) << name;
  }
  // Another seed gives other content.
  fs::path c = WriteSet("det_c", 8, 120);
  EXPECT_NE(ReadFile(a / "samples.jsonl"), ReadFile(c / "samples.jsonl"));
}

TEST(DeterminismTest, SmallerCountIsAPrefix) {
  fs::path small = WriteSet("prefix_64", 11, 64);
  fs::path large = WriteSet("prefix_200", 11, 200);
  const auto ls = Lines(ReadFile(small / "samples.jsonl"));
  const auto ll = Lines(ReadFile(large / "samples.jsonl"));
  ASSERT_EQ(ls.size(), 64u);
  ASSERT_EQ(ll.size(), 200u);
  for (size_t i = 0; i < ls.size(); ++i) EXPECT_EQ(ls[i], ll[i]) << "line " << i + 1;
  for (int i = 0; i < 64; ++i) {
    const std::string name = ImagePath(static_cast<uint64_t>(i));
    EXPECT_EQ(ReadFile(small / name), ReadFile(large / name)) << name;
  }
  EXPECT_FALSE(fs::exists(small / ImagePath(64)));
  EXPECT_TRUE(fs::exists(large / ImagePath(199)));
}

// Pins the generator: samples.jsonl holds every question, option order and (through
// content_sha256) every pixel, and does not depend on zlib. A change here changes the training
// data of the committed tiny model — update models/README.md's recorded command with it.
TEST(DeterminismTest, GoldenContent) {
  ShapesOptions o = Resolved();
  auto s0 = GenerateSample(o, kShapesTrainSeed, 0);
  ASSERT_TRUE(s0.ok()) << s0.status();
  EXPECT_EQ(SampleJsonLine(*s0),
            "{\"id\":\"shapes-1-0\",\"image\":\"images/000000.png\",\"question\":\"What colour is "
            "the square?\",\"options\":[\"yellow\",\"blue\",\"purple\",\"green\"],\"answer\":"
            "\"D\",\"type\":\"colour\",\"scene\":{\"size\":32,\"objects\":[{\"colour\":\"green\","
            "\"shape\":\"circle\",\"x\":9,\"y\":25,\"r\":4},{\"colour\":\"green\",\"shape\":"
            "\"square\",\"x\":10,\"y\":14,\"r\":5}]},\"content_sha256\":"
            "\"daf8939651a18314b70624d9a75edba379bf3abef7cdb9bad413e3d2122d5532\"}");
  Sha256 all;
  for (uint64_t i = 0; i < 256; ++i) {
    auto s = GenerateSample(o, kShapesTrainSeed, i);
    ASSERT_TRUE(s.ok()) << s.status();
    all.Update(SampleJsonLine(*s));
  }
  EXPECT_EQ(DigestHex(all.Final()),
            "2ff302912b3b234d8a326ce8e979a3f55e6df7e115b79360acec390ff85f18ee");
}

// ---- Held-out vs training ----

// Content hash recomputed from what a consumer sees: decoded PNG pixels, the question and the
// text of the option the answer letter names.
std::string ContentHashFromFile(const model::Sample& s) {
  auto img = model::DecodeImage(s.image_bytes, s.id);
  EXPECT_TRUE(img.ok()) << img.status();
  if (!img.ok()) return "";
  return ContentSha256(ImageSha256(*img), s.question,
                       s.options[static_cast<size_t>(s.answer_index())]);
}

TEST(SplitTest, HeldOutIsDisjointFromTraining) {
  ShapesOptions train;
  train.split = Split::kTrain;
  ShapesOptions eval;
  eval.split = Split::kEval;
  fs::path train_dir = WriteSet("train", kShapesTrainSeed, 2000, train);
  fs::path eval_dir = WriteSet("eval", kShapesEvalSeed, 1000, eval);
  auto train_set = model::LoadSampleSet(train_dir.string());
  auto eval_set = model::LoadSampleSet(eval_dir.string());
  ASSERT_TRUE(train_set.ok()) << train_set.status();
  ASSERT_TRUE(eval_set.ok()) << eval_set.status();
  std::set<std::string> train_hashes;
  for (const auto& s : train_set->samples) train_hashes.insert(ContentHashFromFile(s));
  int shared = 0;
  for (const auto& s : eval_set->samples) shared += train_hashes.count(ContentHashFromFile(s));
  EXPECT_EQ(shared, 0);

  // The recorded content_sha256 field is the same hash.
  const auto lines = Lines(ReadFile(eval_dir / "samples.jsonl"));
  ASSERT_EQ(lines.size(), eval_set->samples.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(nlohmann::json::parse(lines[i])["content_sha256"].get<std::string>(),
              ContentHashFromFile(eval_set->samples[i]));
  }
}

// Why the partition exists: without it the same seeds do share content (single-object scenes
// are a small space), so the disjointness above is not an accident of the seeds.
TEST(SplitTest, WithoutPartitionSeedsCollide) {
  ShapesOptions all;
  all.split = Split::kAll;
  all.max_objects = 2;
  all.types = {QuestionType::kColour, QuestionType::kShape};
  all = Resolved(all);
  std::set<std::string> a;
  for (uint64_t i = 0; i < 2000; ++i) a.insert(GenerateSample(all, 1, i)->content_sha256);
  int shared = 0;
  for (uint64_t i = 0; i < 2000; ++i) shared += a.count(GenerateSample(all, 2, i)->content_sha256);
  EXPECT_GT(shared, 0);
  // And with partitions every image lands in the requested split.
  for (Split split : {Split::kTrain, Split::kSearch, Split::kEval}) {
    ShapesOptions o;
    o.split = split;
    o = Resolved(o);
    for (uint64_t i = 0; i < 100; ++i) {
      auto s = GenerateSample(o, 5, i);
      ASSERT_TRUE(s.ok());
      EXPECT_EQ(SplitOfImageHash(ImageSha256(s->image)), split);
    }
  }
}

// ---- Every sample is right, checked against the pixels ----

struct Component {
  std::string colour;
  std::string shape;
  int x0, y0, x1, y1;  // inclusive bounding box
  int cx() const { return (x0 + x1) / 2; }
  int cy() const { return (y0 + y1) / 2; }
};

// Classifies a component's mask (w × h, row-major) by geometry rather than by the rasteriser's
// formulas: square = box full; triangle = one pixel on top, full bottom row; cross = every pixel
// lies in a full row or a full column; circle = symmetric, corners empty, middle row/column full.
// Valid for radius ≥ 3 (at radius 2 a disc is a thick plus).
std::string Classify(const std::vector<bool>& m, int w, int h) {
  auto at = [&](int x, int y) { return m[static_cast<size_t>(y * w + x)]; };
  auto row_full = [&](int y) {
    for (int x = 0; x < w; ++x) {
      if (!at(x, y)) return false;
    }
    return true;
  };
  auto col_full = [&](int x) {
    for (int y = 0; y < h; ++y) {
      if (!at(x, y)) return false;
    }
    return true;
  };
  int filled = 0, top = 0;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) filled += at(x, y);
  }
  for (int x = 0; x < w; ++x) top += at(x, 0);
  if (w != h || w % 2 == 0) return "odd-box";
  if (filled == w * h) return "square";
  if (top == 1 && at(w / 2, 0) && row_full(h - 1)) return "triangle";
  bool plus = true;
  for (int y = 0; y < h && plus; ++y) {
    for (int x = 0; x < w && plus; ++x) {
      if (at(x, y) && !row_full(y) && !col_full(x)) plus = false;
    }
  }
  if (plus) return "cross";
  bool symmetric = true;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      symmetric = symmetric && at(x, y) == at(w - 1 - x, y) && at(x, y) == at(x, h - 1 - y) &&
                  at(x, y) == at(y, x);
    }
  }
  if (symmetric && !at(0, 0) && row_full(h / 2) && col_full(w / 2)) return "circle";
  return "unknown";
}

// 8-connected components of equal-coloured non-background pixels.
std::vector<Component> Components(const model::RgbImage& img) {
  std::map<std::array<uint8_t, 3>, std::string> names;
  for (const auto& c : kPalette) names[{c.r, c.g, c.b}] = std::string(c.name);
  const int w = img.width, h = img.height;
  auto rgb = [&](int x, int y) {
    const uint8_t* p = img.pixels.data() + (static_cast<size_t>(y) * w + x) * 3;
    return std::array<uint8_t, 3>{p[0], p[1], p[2]};
  };
  std::vector<int> label(static_cast<size_t>(w * h), -1);
  std::vector<Component> out;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const auto c = rgb(x, y);
      if (c == kBackground || label[static_cast<size_t>(y * w + x)] >= 0) continue;
      if (!names.count(c)) {
        ADD_FAILURE() << "pixel (" << x << "," << y << ") has a colour outside the palette";
        continue;
      }
      const int id = static_cast<int>(out.size());
      Component comp{names[c], "", x, y, x, y};
      std::vector<std::pair<int, int>> stack = {{x, y}}, pixels;
      label[static_cast<size_t>(y * w + x)] = id;
      while (!stack.empty()) {
        auto [px, py] = stack.back();
        stack.pop_back();
        pixels.emplace_back(px, py);
        comp.x0 = std::min(comp.x0, px);
        comp.x1 = std::max(comp.x1, px);
        comp.y0 = std::min(comp.y0, py);
        comp.y1 = std::max(comp.y1, py);
        for (int dy = -1; dy <= 1; ++dy) {
          for (int dx = -1; dx <= 1; ++dx) {
            const int nx = px + dx, ny = py + dy;
            if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
            int& l = label[static_cast<size_t>(ny * w + nx)];
            if (l < 0 && rgb(nx, ny) == c) {
              l = id;
              stack.emplace_back(nx, ny);
            }
          }
        }
      }
      const int bw = comp.x1 - comp.x0 + 1, bh = comp.y1 - comp.y0 + 1;
      std::vector<bool> mask(static_cast<size_t>(bw * bh));
      for (auto [px, py] : pixels) {
        mask[static_cast<size_t>((py - comp.y0) * bw + px - comp.x0)] = true;
      }
      comp.shape = Classify(mask, bw, bh);
      out.push_back(comp);
    }
  }
  return out;
}

// The position rule from docs/shapes-vqa.md, on component boxes.
std::string RelationText(const Component& a, const Component& b) {
  const int dx = a.cx() - b.cx(), dy = a.cy() - b.cy();
  if (2 * std::abs(dy) <= std::abs(dx) && a.x1 < b.x0) return "left of";
  if (2 * std::abs(dy) <= std::abs(dx) && b.x1 < a.x0) return "right of";
  if (2 * std::abs(dx) <= std::abs(dy) && a.y1 < b.y0) return "above";
  if (2 * std::abs(dx) <= std::abs(dy) && b.y1 < a.y0) return "below";
  return "ambiguous";
}

// Loads a set written by WriteShapesSet and checks every sample against its decoded pixels.
void CheckSet(const fs::path& dir, const ShapesOptions& options, size_t expected) {
  model::SampleLimits limits;
  limits.max_samples = 10000;
  auto set = model::LoadSampleSet(dir.string(), limits);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->samples.size(), expected);
  const auto lines = Lines(ReadFile(dir / "samples.jsonl"));
  std::map<std::string, int> per_type, letters;
  std::map<std::string, std::set<std::string>> answers_per_type;
  std::set<size_t> object_counts;
  const std::regex colour_q("What colour is the (\\w+)\\?");
  const std::regex shape_q("What shape is the (\\w+) object\\?");
  const std::regex count_all_q("How many objects are there\\?");
  const std::regex count_colour_q("How many (\\w+) objects are there\\?");
  const std::regex position_q("Where is the (\\w+) (\\w+) relative to the (\\w+) (\\w+)\\?");
  for (size_t i = 0; i < set->samples.size(); ++i) {
    const model::Sample& s = set->samples[i];
    SCOPED_TRACE(s.id + ": " + s.question);
    EXPECT_TRUE(std::regex_match(s.id, std::regex("shapes-[0-9]+-" + std::to_string(i))));
    EXPECT_EQ(s.image_path, ImagePath(i));
    ASSERT_EQ(s.options.size(), 4u);
    ASSERT_EQ(std::set<std::string>(s.options.begin(), s.options.end()).size(), 4u);
    ASSERT_EQ(s.answer.size(), 1u);
    ASSERT_GE(s.answer_index(), 0);
    ASSERT_LT(s.answer_index(), 4);
    const std::string answer = s.options[static_cast<size_t>(s.answer_index())];
    ++per_type[s.type];
    ++letters[s.answer];
    answers_per_type[s.type].insert(answer);

    auto img = model::DecodeImage(s.image_bytes, s.id);
    ASSERT_TRUE(img.ok()) << img.status();
    ASSERT_EQ(img->width, options.image_size);
    ASSERT_EQ(img->height, options.image_size);
    const std::vector<Component> comps = Components(*img);

    // The scene description matches the pixels: one component per object, same box, colour
    // and shape; boxes at least 1 px apart and 1 px inside the canvas.
    const nlohmann::json line = nlohmann::json::parse(lines[i]);
    const auto& objects = line["scene"]["objects"];
    ASSERT_EQ(comps.size(), objects.size());
    object_counts.insert(comps.size());
    for (const auto& obj : objects) {
      const int x = obj["x"], y = obj["y"], r = obj["r"];
      int found = 0;
      for (const Component& c : comps) {
        if (c.x0 == x - r && c.x1 == x + r && c.y0 == y - r && c.y1 == y + r) {
          ++found;
          EXPECT_EQ(c.colour, obj["colour"]);
          EXPECT_EQ(c.shape, obj["shape"]);
        }
      }
      EXPECT_EQ(found, 1) << obj.dump();
      EXPECT_GE(r, options.min_radius);
      EXPECT_LE(r, options.max_radius);
    }
    for (const Component& c : comps) {
      EXPECT_GE(c.x0, 1);
      EXPECT_GE(c.y0, 1);
      EXPECT_LE(c.x1, options.image_size - 2);
      EXPECT_LE(c.y1, options.image_size - 2);
      for (const Component& d : comps) {
        if (&c == &d) continue;
        EXPECT_TRUE(c.x1 + 1 < d.x0 || d.x1 + 1 < c.x0 || c.y1 + 1 < d.y0 || d.y1 + 1 < c.y0);
      }
    }
    auto with = [&](const std::string& colour, const std::string& shape) {
      std::vector<const Component*> out;
      for (const Component& c : comps) {
        if ((colour.empty() || c.colour == colour) && (shape.empty() || c.shape == shape)) {
          out.push_back(&c);
        }
      }
      return out;
    };

    std::smatch m;
    if (s.type == "colour") {
      ASSERT_TRUE(std::regex_match(s.question, m, colour_q));
      auto hits = with("", m[1]);
      ASSERT_EQ(hits.size(), 1u) << "the shape must be unique";
      EXPECT_EQ(answer, hits[0]->colour);
    } else if (s.type == "shape") {
      ASSERT_TRUE(std::regex_match(s.question, m, shape_q));
      auto hits = with(m[1], "");
      ASSERT_EQ(hits.size(), 1u) << "the colour must be unique";
      EXPECT_EQ(answer, hits[0]->shape);
    } else if (s.type == "count") {
      if (std::regex_match(s.question, m, count_all_q)) {
        EXPECT_EQ(answer, absl::StrCat(comps.size()));
      } else {
        ASSERT_TRUE(std::regex_match(s.question, m, count_colour_q));
        EXPECT_EQ(answer, absl::StrCat(with(m[1], "").size()));
      }
    } else if (s.type == "position") {
      ASSERT_TRUE(std::regex_match(s.question, m, position_q));
      auto a = with(m[1], m[2]);
      auto b = with(m[3], m[4]);
      ASSERT_EQ(a.size(), 1u);
      ASSERT_EQ(b.size(), 1u);
      ASSERT_NE(a[0], b[0]);
      EXPECT_EQ(answer, RelationText(*a[0], *b[0]));
    } else {
      ADD_FAILURE() << "unknown type " << s.type;
    }
    // Distractors come from the answer's category.
    std::set<std::string> category;
    if (s.type == "colour") {
      for (const auto& c : kPalette) category.insert(std::string(c.name));
    } else if (s.type == "shape") {
      for (auto n : kShapeNames) category.insert(std::string(n));
    } else if (s.type == "position") {
      for (auto n : kRelationNames) category.insert(std::string(n));
    } else {
      for (int n = 0; n <= 9; ++n) category.insert(absl::StrCat(n));
    }
    for (const auto& o : s.options) EXPECT_TRUE(category.count(o)) << o;
  }

  // Balance: types round-robin (exact up to one), answer letters near 25 % each.
  const size_t n = set->samples.size();
  ASSERT_EQ(per_type.size(), options.types.size());
  for (const auto& [type, k] : per_type) {
    EXPECT_GE(static_cast<size_t>(k), n / options.types.size()) << type;
    EXPECT_LE(static_cast<size_t>(k), n / options.types.size() + 1) << type;
  }
  for (const auto& [letter, k] : letters) {
    // Binomial(n, 1/4): 5σ bound.
    const double sd = std::sqrt(n * 0.25 * 0.75);
    EXPECT_NEAR(k, n / 4.0, 5 * sd) << letter;
  }
  EXPECT_EQ(letters.size(), 4u);
  EXPECT_EQ(object_counts.size(),
            static_cast<size_t>(options.max_objects - options.min_objects + 1));
}

TEST(ContentTest, DefaultSetIsCorrectAgainstPixels) {
  ShapesOptions o = Resolved();
  fs::path dir = WriteSet("content", 3, 2000, o);
  CheckSet(dir, o, 2000);
}

TEST(ContentTest, LargerCanvasMoreObjectsIsCorrectAgainstPixels) {
  ShapesOptions o;
  o.image_size = 48;
  o.max_objects = 4;
  o.min_objects = 2;
  o.split = Split::kEval;
  o = Resolved(o);
  fs::path dir = WriteSet("content48", 4, 800, o);
  CheckSet(dir, o, 800);
}

TEST(ContentTest, AnswersAreBalancedWithinTypes) {
  ShapesOptions o = Resolved();
  std::map<std::string, std::map<std::string, int>> hist;
  for (uint64_t i = 0; i < 4000; ++i) {
    auto s = GenerateSample(o, 9, i);
    ASSERT_TRUE(s.ok());
    std::string key(kQuestionTypeNames[static_cast<size_t>(s->type)]);
    if (s->type == QuestionType::kCount) {
      key += s->question == "How many objects are there?" ? "/total" : "/colour";
    }
    ++hist[key][s->options[static_cast<size_t>(s->answer_index)]];
  }
  // Every possible answer occurs, none dominates: colour 6 values, shape 4, relation 4, total
  // count 1..3, colour count 0..3.
  const std::map<std::string, size_t> values = {
      {"colour", 6}, {"shape", 4}, {"position", 4}, {"count/total", 3}, {"count/colour", 4}};
  for (const auto& [key, expected_values] : values) {
    const auto& h = hist[key];
    EXPECT_EQ(h.size(), expected_values) << key;
    int total = 0, most = 0;
    for (const auto& [v, k] : h) {
      total += k;
      most = std::max(most, k);
    }
    EXPECT_LT(most, 2 * total / static_cast<int>(expected_values)) << key;
  }
}

// ---- The CLI ----

std::string Binary() {
  const char* env = std::getenv("PRUNESVC_BIN");
  return (fs::path(env != nullptr ? env : PRUNESVC_BIN_DIR) / "shapes-vqa").string();
}

struct RunResult {
  int exit_code;
  std::string output;
};

RunResult RunCli(const std::string& args) {
  const fs::path log = MakeTempDir("log") / "out.txt";
  const std::string cmd = Binary() + " " + args + " > " + log.string() + " 2>&1";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFile(log)};
}

TEST(CliTest, WritesTheSameSetAsTheLibrary) {
  fs::path dir = MakeTempDir("cli") / "new" / "set";  // missing parents are created
  RunResult r = RunCli("--seed 21 --count 40 --out " + dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  fs::path lib = WriteSet("cli_lib", 21, 40);
  EXPECT_EQ(ReadTree(dir), ReadTree(lib));
}

TEST(CliTest, NonEmptyDirNeedsForceAndForceKeepsOtherFiles) {
  fs::path dir = MakeTempDir("force");
  RunResult r = RunCli("--seed 5 --count 12 --out " + dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto before = ReadTree(dir);

  r = RunCli("--seed 6 --count 3 --out " + dir.string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("is not empty"));
  EXPECT_THAT(r.output, HasSubstr("--force"));
  EXPECT_EQ(ReadTree(dir), before);  // untouched

  // A foreign file only: still refused.
  fs::path other = MakeTempDir("force_other");
  { std::ofstream(other / "notes.txt") << "mine"; }
  EXPECT_EQ(RunCli("--seed 6 --count 3 --out " + other.string()).exit_code, 2);

  { std::ofstream(dir / "notes.txt") << "keep me"; }
  { std::ofstream(dir / "images" / "stale.txt") << "x"; }
  r = RunCli("--seed 6 --count 3 --force --out " + dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ReadFile(dir / "notes.txt"), "keep me");
  const auto after = ReadTree(dir);
  EXPECT_EQ(after.size(), 5u);  // notes.txt, samples.jsonl, 3 images
  EXPECT_EQ(Lines(after.at("samples.jsonl")).size(), 3u);
  EXPECT_FALSE(fs::exists(dir / "images" / "stale.txt"));
  EXPECT_FALSE(fs::exists(dir / ImagePath(3)));
  EXPECT_EQ(after.at("samples.jsonl"), ReadFile(WriteSet("force_lib", 6, 3) / "samples.jsonl"));

  // --out naming a file.
  r = RunCli("--seed 6 --count 3 --force --out " + (dir / "notes.txt").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("not a directory"));
}

TEST(CliTest, BadFlagsExitTwo) {
  const std::string out = (MakeTempDir("flags") / "x").string();
  struct Case {
    std::string args, message;
  };
  for (const Case& c : std::vector<Case>{
           {"--count 3 --out " + out, "--seed is required"},
           {"--seed -1 --count 3 --out " + out, "--seed is required"},
           {"--seed 1 --out " + out, "--count must be in 1..1000000"},
           {"--seed 1 --count 1000001 --out " + out, "--count must be in"},
           {"--seed 1 --count 3", "--out is required"},
           {"--seed 1 --count 3 --types colour,size --out " + out, "unknown question type"},
           {"--seed 1 --count 3 --split test --out " + out, "unknown split"},
           {"--seed 1 --count 3 --image-size 8 --out " + out, "image_size 8"},
       }) {
    RunResult r = RunCli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
    EXPECT_FALSE(fs::exists(out)) << c.args;
  }
}

}  // namespace
}  // namespace prunesvc::data
