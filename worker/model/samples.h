// Sample-set loader (docs/architecture.md §4 "Sample set"): a directory, or a tar (plain or
// compressed: .tar.gz/.tgz/.tar.bz2/.tar.xz/.tar.zst, detected by content via libarchive), holding
// `samples.jsonl` plus the image files it references. One JSON object per line:
//   {"id": "q1", "image": "images/0001.png", "question": "...", "options": ["red", "blue"],
//    "answer": "B", "type": "colour"}
// `options` present (2..26 non-empty strings) → multiple choice, `answer` is the option letter;
// absent or null → open answer, `answer` is the reference text. `type` is optional; unknown
// fields are ignored. Blank lines are skipped, a UTF-8 BOM and CRLF line ends are tolerated.
// Every malformed line is an error "FILE:LINE: field \"NAME\": what is wrong".
//
// Containment: image paths must be relative, '/'-separated, without "..", and may not resolve
// (through symlinks, for directories) outside the set's root; tar entries whose names are
// absolute or contain ".." are ignored, as are non-regular entries (symlinks, hard links). A tar
// whose samples.jsonl sits in a single top-level folder ("set/samples.jsonl") uses that folder
// as its root.
//
// Limits: at most `max_samples` samples and `max_total_bytes` of samples.jsonl plus image bytes
// (an image referenced by several samples counts once per sample: each holds its own copy);
// checked against sizes before reading, so loading stops early. A tar's entries may declare at
// most 2 × max_total_bytes in all (unreferenced entries included), so a hostile archive cannot
// make loading slow.
//
// Content hash (SampleSet::sha256, lower-case hex): SHA-256 over the raw bytes of samples.jsonl
// followed by the 32-byte SHA-256 digest of each sample's image bytes, in file order. A directory
// and a tar holding the same files therefore hash the same.
//
// Images are returned as bytes; decoding (and the image-size limit) belongs to the image decoder.
// Torch-free. Thread-safety: free functions without shared state; safe to call concurrently.
#ifndef PRUNESVC_WORKER_MODEL_SAMPLES_H_
#define PRUNESVC_WORKER_MODEL_SAMPLES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace prunesvc::model {

struct Sample {
  std::string id;
  std::string image_path;  // normalized relative path inside the set ("images/0001.png")
  std::string question;
  std::vector<std::string> options;  // empty → open answer
  std::string answer;                // letter for multiple choice, text for open answer
  std::string type;                  // "" when absent
  std::vector<uint8_t> image_bytes;  // empty until the loader attaches them
  int line = 0;                      // 1-based line in samples.jsonl

  bool multiple_choice() const { return !options.empty(); }
  // 0-based index of the answer option for multiple choice; -1 for open answers.
  int answer_index() const { return multiple_choice() ? answer[0] - 'A' : -1; }
};

struct SampleSet {
  std::vector<Sample> samples;  // file order
  std::string sha256;           // see the file comment
  uint64_t total_bytes = 0;     // samples.jsonl + image bytes held
};

struct SampleLimits {
  size_t max_samples = 4096;
  uint64_t max_total_bytes = 256ull << 20;
};

// Loads a directory or tar (see the file comment). Errors: NotFound (no such path, no
// samples.jsonl, a missing image, naming its line), InvalidArgument (malformed line, bad path,
// bad archive), ResourceExhausted (a limit).
absl::StatusOr<SampleSet> LoadSampleSet(const std::string& path, const SampleLimits& limits = {});

// Parses and validates samples.jsonl content (no images attached). `file` names it in errors.
// A file with no samples (only blank lines) is an error.
// Exposed for the scheduler's upload validation and for fuzzing.
absl::StatusOr<std::vector<Sample>> ParseSamplesJsonl(std::string_view content,
                                                      const std::string& file, size_t max_samples);

// Normalizes a relative '/'-separated path: drops "." and empty components; InvalidArgument for
// an empty, absolute or backslash/NUL-containing path or one with a ".." component.
absl::StatusOr<std::string> NormalizeRelativePath(std::string_view path);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_SAMPLES_H_
