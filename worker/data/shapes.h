// shapes-vqa (docs/architecture.md §4): a procedural multiple-choice VQA set of coloured shapes on
// a plain canvas, the training and evaluation data of the tiny LLaVA model. docs/shapes-vqa.md
// describes the format for users; this comment states the rules the code keeps.
//
// Determinism: every pixel and string is a function of (options, seed, index) computed with
// integer arithmetic and the generator's own PRNG (xoshiro256** seeded through splitmix64; no
// <random> distributions, whose algorithms are implementation-defined). Sample `index` draws from
// its own stream Prng::ForSample(seed, index), so a set of N samples is a prefix of any larger
// set with the same seed and options. PNG bytes additionally depend on the zlib build (see
// model::EncodePng); pixels, samples.jsonl and the hashes do not.
//
// Scenes: `image_size`² canvas, black background, 1..3 objects (defaults), each a shape from
// kShapeNames in a colour from kPalette with "radius" r (bounding box (2r+1)² centred on (x, y)).
// Objects lie at least 1 px inside the canvas and their bounding boxes are at least 1 px apart,
// so every object is one 8-connected component of its colour.
//
// Questions (type round-robin over `types` by index, so the types are exactly balanced; all have
// 4 options shuffled per sample, one correct, distractors from the same category):
//   colour:   "What colour is the <shape>?"            the shape is unique in the scene
//   shape:    "What shape is the <colour> object?"     the colour is unique in the scene
//   count:    "How many objects are there?" or "How many <colour> objects are there?" (50/50)
//   position: "Where is the <c1> <s1> relative to the <c2> <s2>?" → left of/right of/above/below;
//             every (colour, shape) pair in the scene is distinct, and the answer holds by
//             RelationOf()'s margin rule.
// Answers are drawn uniformly (colour, shape, count value, relation) before the scene is built
// around them, so no answer is a-priori likelier than another.
//
// Hashes and splits: ImageSha256 hashes the pixels; ContentSha256 hashes (image hash, question,
// correct answer text) — options and their order are left out, so the same image and question
// with other distractors is still the same content. The low 2 bits of the image hash's first
// byte put every possible image in one partition: train (0, 1), search (2) or eval (3). With
// `split` set, a drawn sample whose image is in another partition is redrawn from the same
// stream, so sets generated for different splits never share an image, whatever the seeds.
//
// Thread-safety: free functions are reentrant; Prng is a value type (one per thread).
#ifndef PRUNESVC_WORKER_DATA_SHAPES_H_
#define PRUNESVC_WORKER_DATA_SHAPES_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/image.h"

namespace prunesvc::data {

// xoshiro256** (Blackman & Vigna), seeded from splitmix64. Same sequence on every platform.
class Prng {
 public:
  // The stream of one sample: splitmix64 over a key mixed from both values, so neighbouring
  // indices and seeds give unrelated streams.
  static Prng ForSample(uint64_t seed, uint64_t index);
  // Seeds the four state words with successive splitmix64 outputs starting from `seed`.
  explicit Prng(uint64_t seed);
  // A raw state, for known-answer tests against the reference implementation.
  static Prng FromState(const std::array<uint64_t, 4>& state);

  uint64_t Next();
  // Uniform in [0, n) by rejection (no modulo bias); n > 0.
  uint64_t Below(uint64_t n);
  // Uniform in [lo, hi]; lo <= hi.
  int Range(int lo, int hi);

 private:
  std::array<uint64_t, 4> s_;
};

// splitmix64's output function (a bijection on 64-bit values).
uint64_t Mix64(uint64_t x);

struct PaletteColour {
  std::string_view name;
  uint8_t r, g, b;
};
// Six colours far apart in RGB and from the black background.
inline constexpr std::array<PaletteColour, 6> kPalette = {{
    {"red", 230, 30, 30},
    {"green", 30, 200, 40},
    {"blue", 40, 90, 255},
    {"yellow", 250, 225, 20},
    {"purple", 170, 50, 220},
    {"white", 245, 245, 245},
}};
inline constexpr std::array<uint8_t, 3> kBackground = {0, 0, 0};

enum class Shape { kCircle = 0, kSquare = 1, kTriangle = 2, kCross = 3 };
inline constexpr std::array<std::string_view, 4> kShapeNames = {"circle", "square", "triangle",
                                                                "cross"};

enum class QuestionType { kColour = 0, kShape = 1, kCount = 2, kPosition = 3 };
inline constexpr std::array<std::string_view, 4> kQuestionTypeNames = {"colour", "shape", "count",
                                                                       "position"};
absl::StatusOr<QuestionType> ParseQuestionType(std::string_view name);
// Comma-separated list, e.g. "colour,count"; duplicates are an error.
absl::StatusOr<std::vector<QuestionType>> ParseQuestionTypes(std::string_view list);

// Relation of object A to object B, as position questions phrase it.
enum class Relation { kLeftOf = 0, kRightOf = 1, kAbove = 2, kBelow = 3, kNone = 4 };
inline constexpr std::array<std::string_view, 4> kRelationNames = {"left of", "right of", "above",
                                                                   "below"};

// Partitions of the image space (see the file comment). kAll disables partitioning.
enum class Split { kAll, kTrain, kSearch, kEval };
absl::StatusOr<Split> ParseSplit(std::string_view name);
std::string_view SplitName(Split split);
// The partition an image hash (64 lower-case hex digits) belongs to: never kAll.
Split SplitOfImageHash(std::string_view image_sha256);

struct ShapesOptions {
  int image_size = 32;  // canvas side, 16..512
  int min_objects = 1;
  int max_objects = 3;  // 1..8
  int min_radius = 0;   // 0 → image_size / 8 (4 at 32 px)
  int max_radius = 0;   // 0 → image_size * 3 / 16 (6 at 32 px)
  std::vector<QuestionType> types = {QuestionType::kColour, QuestionType::kShape,
                                     QuestionType::kCount, QuestionType::kPosition};
  Split split = Split::kTrain;
};

// Fills in the radius defaults and checks every field, including that max_objects objects of
// max_radius always fit (InvalidArgument naming the field otherwise).
absl::StatusOr<ShapesOptions> ResolveOptions(ShapesOptions options);

struct SceneObject {
  int colour = 0;  // index into kPalette
  Shape shape = Shape::kCircle;
  int x = 0, y = 0;  // centre pixel
  int radius = 0;    // bounding box [x - radius, x + radius] × [y - radius, y + radius]
};

struct Scene {
  int size = 0;
  std::vector<SceneObject> objects;
};

// Integer rasteriser (no anti-aliasing): circle dx²+dy² ≤ r²+r; square fills its box; triangle
// points up, row k (0 = top) spans |dx| ≤ k/2; cross (plus) has arms |dx| ≤ r/3 or |dy| ≤ r/3.
// Each shape touches all four sides of its bounding box.
model::RgbImage RenderScene(const Scene& scene);

// The relation of `a` to `b`: left/right when the boxes are separated horizontally and
// 2·|Δy| ≤ |Δx| (centres); above/below symmetrically (y grows downwards); otherwise kNone.
Relation RelationOf(const SceneObject& a, const SceneObject& b);

struct ShapesSample {
  uint64_t index = 0;
  std::string id;          // "shapes-<seed>-<index>"
  std::string image_path;  // ImagePath(index)
  std::string question;
  std::vector<std::string> options;  // 4
  int answer_index = 0;              // into options; the letter is 'A' + answer_index
  QuestionType type = QuestionType::kColour;
  Scene scene;
  model::RgbImage image;
  std::string image_sha256;
  std::string content_sha256;
};

// "images/000042.png": 6 digits, 0-based (so a million samples fit).
std::string ImagePath(uint64_t index);

// SHA-256 (hex) of "shapes-vqa image v1\n", width and height as 4-byte little-endian, pixels.
std::string ImageSha256(const model::RgbImage& image);
// SHA-256 (hex) of "shapes-vqa content v1\n" + image_sha256 + "\n" + question + "\n" + answer
// text (the correct option's text, not its letter).
std::string ContentSha256(std::string_view image_sha256, std::string_view question,
                          std::string_view answer_text);

// Generates sample `index` of the set with this seed. `options` must come from ResolveOptions.
absl::StatusOr<ShapesSample> GenerateSample(const ShapesOptions& options, uint64_t seed,
                                            uint64_t index);

// One samples.jsonl line (no newline): id, image, question, options, answer, type, then the
// extras "scene" ({"size", "objects": [{"colour", "shape", "x", "y", "r"}]}) and
// "content_sha256".
std::string SampleJsonLine(const ShapesSample& sample);

inline constexpr int64_t kMaxCount = 1'000'000;

struct WriteOptions {
  // Replace DIR/samples.jsonl and DIR/images/ in a non-empty DIR (other files are kept).
  bool force = false;
  // Called after each tenth of the samples (done, total).
  std::function<void(int64_t, int64_t)> progress;
};

// Writes DIR/images/NNNNNN.png for samples 0..count-1, then DIR/samples.jsonl (through a
// temporary file and rename, so an interrupted run never leaves a samples.jsonl pointing at
// missing images). DIR is created if missing. Errors: FailedPrecondition for a non-empty DIR
// without `force` (or DIR not a directory), InvalidArgument for bad options/count, others for
// I/O failures, each naming the path.
absl::Status WriteShapesSet(const ShapesOptions& options, uint64_t seed, int64_t count,
                            const std::string& dir, const WriteOptions& write_options = {});

}  // namespace prunesvc::data

#endif  // PRUNESVC_WORKER_DATA_SHAPES_H_
