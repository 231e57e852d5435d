// The artifact directory of a pruning job (docs/architecture.md §5 "Artifact") and the file
// plumbing around it: atomic creation (OUT.partial-<pid>/ renamed to OUT as the very last step),
// the model's side files copied from the input, the input's weight-file digests (provenance), the
// sha256 manifest, and the tar the worker uploads.
//
// Atomicity: an existing non-empty OUT is refused before any work (CheckOutDir); a PartialDir
// that is not committed removes itself, so OUT is either absent (or the empty directory it was) or
// complete.
//
// Thread-compatible; functions touch only the paths they are given.
#ifndef PRUNESVC_WORKER_PRUNE_ARTIFACT_H_
#define PRUNESVC_WORKER_PRUNE_ARTIFACT_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace prunesvc::prune {

absl::StatusOr<std::string> Sha256OfFile(const std::string& path);
absl::Status WriteTextFile(const std::string& path, const std::string& text);

// The input's weight files (*.safetensors and the shard index), sorted by name.
std::vector<std::string> WeightFiles(const std::string& model_dir);
// sha256 over "HEX  NAME\n" lines of the weight files (sha256sum's format, sorted by name), and
// the per-file digests as {name: hex}.
absl::StatusOr<std::pair<std::string, nlohmann::json>> ModelSha256(const std::string& model_dir);

// sha256 over "HEX  NAME\n" lines of every regular, non-hidden, non-weight file of `model_dir`
// (config, tokenizer and processor files: what ModelSha256 leaves out), sorted by name.
absl::StatusOr<std::string> ModelSideFilesSha256(const std::string& model_dir);

// Copies every regular, non-hidden, non-weight file of `model_dir` (config, tokenizer, processor
// files) into `model_out`, sorted by name; returns their names.
absl::StatusOr<nlohmann::json> CopyModelSideFiles(const std::string& model_dir,
                                                  const std::string& model_out);

// Strips trailing slashes.
std::string NormalizeOutDir(std::string out);
// OK when `out` does not exist or is an empty directory (or, with `replace`, any directory);
// FailedPrecondition otherwise, naming --force.
absl::Status CheckOutDir(const std::string& out, bool replace = false);

// OUT.partial-<pid>: created up front, removed unless committed (renamed to OUT).
// Removes the OUT.partial-PID directories of runs that are gone (no process PID: a SIGKILLed or
// crashed run's leftovers; a live PID's directory is kept) and returns their paths. PartialDir::
// Create calls it, so the next run on OUT cleans up and says so.
std::vector<std::string> RemoveStalePartials(const std::string& out);

class PartialDir {
 public:
  // `replace`: Commit replaces a non-empty OUT: the old one stays until the new one is complete,
  // is then moved aside (OUT.replaced-<pid>), the new one renamed in, and only then the old one
  // removed (moved back if the rename fails).
  static absl::StatusOr<std::unique_ptr<PartialDir>> Create(const std::string& out,
                                                            bool replace = false);
  ~PartialDir();
  PartialDir(const PartialDir&) = delete;
  PartialDir& operator=(const PartialDir&) = delete;

  const std::string& path() const { return path_; }
  absl::Status Commit();

 private:
  PartialDir(std::string out, std::string path, bool replace)
      : out_(std::move(out)), path_(std::move(path)), replace_(replace) {}
  const std::string out_, path_;
  const bool replace_;
  bool committed_ = false;
};

// MANIFEST.sha256 in `sha256sum -c` format: every file under `dir` except itself, sorted.
absl::Status WriteManifest(const std::string& dir);

// Packs `dir` into an uncompressed POSIX tar at `tar_path` (entries relative to `dir`, sorted,
// fixed mtime/uid/gid so the same files give the same bytes).
absl::Status TarDirectory(const std::string& dir, const std::string& tar_path);

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_ARTIFACT_H_
