// Tar handling for prunectl: packing a dataset directory for UploadDataset (deterministic bytes:
// sorted paths, fixed metadata, so the same directory always hashes the same), unpacking a
// fetched artifact without letting an entry escape the destination, and the sha256 checks.
//
// Pure functions over files; thread-safe for distinct paths.
#ifndef PRUNESVC_CLIENT_ARCHIVE_UTIL_H_
#define PRUNESVC_CLIENT_ARCHIVE_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc::client {

// Packs the regular files under `dir` (symlinks to files are read through; other special files
// are skipped) into a ustar/pax tar in memory, entries sorted by relative path, mode 0644, mtime
// 0, owner 0. `samples.jsonl` must be at the root (INVALID_ARGUMENT otherwise).
absl::StatusOr<std::string> PackDirectoryToTar(const std::string& dir);

// Unpacks the tar (or compressed tar) at `tar_path` into the existing directory `dest`. Refuses
// (DATA_LOSS, naming the entry) absolute paths, ".." components, symlinks, hard links and
// special files; regular files are written 0644, directories 0755.
absl::Status UnpackTarSafely(const std::string& tar_path, const std::string& dest);

// Checks every line of `dir`/MANIFEST.sha256 (`sha256sum` format) against the file it names and
// that every other file under `dir` is listed. DATA_LOSS naming the first mismatch.
absl::Status VerifyManifest(const std::string& dir);

// Lower-case hex sha256 of a file's bytes.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// "sha256:<hex>" or "<hex>" → lower-case bare hex.
std::string BareSha256(absl::string_view digest);

// OK when the file's sha256 equals `expected` (bare or "sha256:"-prefixed, any case); DATA_LOSS
// otherwise.
absl::Status VerifyFileSha256(const std::string& path, absl::string_view expected);

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_ARCHIVE_UTIL_H_
