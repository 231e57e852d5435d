// shapes-vqa: writes a shapes-vqa sample set (docs/shapes-vqa.md).
// Exit status: 0 on success, 2 for bad flags or a non-empty --out without --force, 1 for I/O
// failures.
#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "common/flags.h"
#include "common/logging.h"
#include "worker/data/shapes.h"

ABSL_FLAG(std::string, seed, "",
          "Required. Seed (0..2^64-1); sample i of a seed is the same in every set, so "
          "--count 64 is a prefix of --count 1000.");
ABSL_FLAG(int64_t, count, 0, "Required. Number of samples, 1..1000000.");
ABSL_FLAG(std::string, out, "", "Required. Output directory; must be empty or missing.");
ABSL_FLAG(bool, force, false,
          "Replace samples.jsonl and images/ in a non-empty --out (other files are kept).");
ABSL_FLAG(std::string, split, "train",
          "Image-space partition: train, search, eval (disjoint from each other), or all "
          "(no partition; may overlap any of them).");
ABSL_FLAG(std::string, types, "colour,shape,count,position",
          "Question types, assigned round-robin by sample index.");
ABSL_FLAG(int, image_size, 32, "Canvas side in pixels (16..512).");
ABSL_FLAG(int, min_objects, 1, "Fewest objects per scene (position questions use ≥ 2).");
ABSL_FLAG(int, max_objects, 3, "Most objects per scene (1..8).");
ABSL_FLAG(int, min_radius, 0, "Smallest object radius (box 2r+1); 0 = image-size/8.");
ABSL_FLAG(int, max_radius, 0, "Largest object radius; 0 = image-size*3/16.");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

int main(int argc, char** argv) {
  prunesvc::ParseFlags(argc, argv,
                       "shapes-vqa: writes a procedural multiple-choice VQA set of coloured "
                       "shapes.\nUsage: shapes-vqa --seed N --count N --out DIR [--force] "
                       "[--split train|search|eval|all] [--image-size 32] [--max-objects 3]");
  prunesvc::InitLogging("shapes-vqa", absl::GetFlag(FLAGS_log_level));

  uint64_t seed = 0;
  if (!absl::SimpleAtoi(absl::GetFlag(FLAGS_seed), &seed)) {
    spdlog::error("--seed is required: a number in 0..2^64-1 (got \"{}\")",
                  absl::GetFlag(FLAGS_seed));
    return 2;
  }
  const int64_t count = absl::GetFlag(FLAGS_count);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    spdlog::error("--out is required");
    return 2;
  }
  if (count < 1 || count > prunesvc::data::kMaxCount) {
    spdlog::error("--count must be in 1..{} (got {})", prunesvc::data::kMaxCount, count);
    return 2;
  }

  prunesvc::data::ShapesOptions options;
  options.image_size = absl::GetFlag(FLAGS_image_size);
  options.min_objects = absl::GetFlag(FLAGS_min_objects);
  options.max_objects = absl::GetFlag(FLAGS_max_objects);
  options.min_radius = absl::GetFlag(FLAGS_min_radius);
  options.max_radius = absl::GetFlag(FLAGS_max_radius);
  auto types = prunesvc::data::ParseQuestionTypes(absl::GetFlag(FLAGS_types));
  auto split = prunesvc::data::ParseSplit(absl::GetFlag(FLAGS_split));
  if (!types.ok() || !split.ok()) {
    spdlog::error("{}", !types.ok() ? types.status().message() : split.status().message());
    return 2;
  }
  options.types = *types;
  options.split = *split;
  auto resolved = prunesvc::data::ResolveOptions(options);
  if (!resolved.ok()) {
    spdlog::error("bad options: {}", resolved.status().message());
    return 2;
  }

  prunesvc::data::WriteOptions write_options;
  write_options.force = absl::GetFlag(FLAGS_force);
  // Progress every tenth only for sets that take noticeable time.
  if (count >= 10000) {
    write_options.progress = [](int64_t done, int64_t total) {
      spdlog::info("{}/{} samples ({}%)", done, total, done * 100 / total);
    };
  }
  absl::Status status = prunesvc::data::WriteShapesSet(*resolved, seed, count, out, write_options);
  if (!status.ok()) {
    spdlog::error("{}", status.message());
    return absl::IsFailedPrecondition(status) || absl::IsInvalidArgument(status) ? 2 : 1;
  }
  spdlog::info("wrote {} samples to {} (seed {}, split {}, {}px, {}..{} objects, radius {}..{})",
               count, out, seed, prunesvc::data::SplitName(resolved->split), resolved->image_size,
               resolved->min_objects, resolved->max_objects, resolved->min_radius,
               resolved->max_radius);
  return 0;
}
