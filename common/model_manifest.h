// A model stored in the scheduler's blob store (UploadModel, issue 19): the manifest that lists a
// model directory's files, and the `blob://` model URIs that name one.
//
// A model directory (config.json, tokenizer files, safetensors shards, ...) is uploaded file by
// file: each file becomes a content-addressed blob ("sha256:" + the hex of its bytes), and the
// manifest — this JSON, in canonical form — becomes one more blob whose id is the model's id:
//
//   {"files":[{"path":"config.json","sha256":"<64 hex>","size":1234},...],
//    "format":"prunesvc-model/v1","name":"llava-1.5-7b"}
//
// Invariants of a valid manifest (ParseModelManifest and ValidateModelManifest enforce them):
// - 1..kMaxModelFiles files, sorted by path, no path twice, none a directory of another
//   ("a" beside "a/b"); config.json at the root (every model this project loads has one).
// - A path is relative, "/"-separated, each component 1..255 bytes, not "." or "..", with no NUL,
//   backslash or control character; at most 1024 bytes. So a worker can lay the files out under
//   a directory of its own and nothing lands outside it.
// - sha256 is 64 lowercase hex digits; size >= 0; the sizes add up without overflow.
// Serialization is canonical (keys sorted, no spaces, files sorted): the same directory gives the
// same bytes, hence the same model id, on every machine.
//
// Thread-safe: free functions over values.
#ifndef PRUNESVC_COMMON_MODEL_MANIFEST_H_
#define PRUNESVC_COMMON_MODEL_MANIFEST_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc {

inline constexpr absl::string_view kModelManifestFormat = "prunesvc-model/v1";
inline constexpr absl::string_view kBlobModelScheme = "blob://";
inline constexpr int kMaxModelFiles = 10000;
inline constexpr size_t kMaxModelPathBytes = 1024;
inline constexpr size_t kMaxModelNameBytes = 256;

struct ModelFileEntry {
  std::string path;    // relative, "/"-separated
  int64_t size = 0;    // bytes
  std::string sha256;  // 64 lowercase hex digits of the file's bytes (no "sha256:" prefix)

  bool operator==(const ModelFileEntry&) const = default;
};

struct ModelManifest {
  std::string name;  // display name (the directory's base name by default); may be empty
  std::vector<ModelFileEntry> files;

  int64_t total_bytes() const;
  bool operator==(const ModelManifest&) const = default;
};

// OK when `path` is a safe relative path (see the invariants); else INVALID_ARGUMENT naming it.
absl::Status ValidateModelPath(absl::string_view path);
// Sorts the files by path, then checks every invariant. Errors name the field and the entry
// ("files[3].path: ...").
absl::Status ValidateModelManifest(ModelManifest& manifest);

// Canonical JSON of a valid manifest (call ValidateModelManifest first).
std::string SerializeModelManifest(const ModelManifest& manifest);
// Parses and validates. `what` names the input in errors ("manifest sha256:…").
absl::StatusOr<ModelManifest> ParseModelManifest(absl::string_view json, absl::string_view what);

// Builds the manifest of directory `dir`: every regular file under it (symbolic links are
// followed, as a HuggingFace cache's snapshot directories need; other file types are refused),
// hashed. `progress(bytes_hashed, total_bytes)` may be empty.
absl::StatusOr<ModelManifest> ManifestOfDirectory(
    const std::string& dir, const std::string& name,
    const std::function<void(int64_t, int64_t)>& progress);

// "blob://sha256:<hex>" for model id "sha256:<hex>".
std::string BlobModelUri(absl::string_view model_id);
bool IsBlobModelUri(absl::string_view uri);
// The model id ("sha256:<hex>") a blob:// URI names; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<std::string> BlobModelId(absl::string_view uri, absl::string_view field);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_MODEL_MANIFEST_H_
