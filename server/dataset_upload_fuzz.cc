// libFuzzer target for the dataset upload path as the scheduler validates it
// (server/dataset_validation.h ValidateDatasetTar): libarchive over the spooled upload (tar, or a
// compressed tar detected by content), the tar entry checks, samples.jsonl parsing and the limits
// (worker/model/samples.cc), then every referenced image's header (server/image_header.cc).
// Build with -DPRUNESVC_FUZZ=ON and clang; seeds in server/testdata/dataset_upload_corpus.
//
// Input: the bytes of the uploaded file, as UploadDataset spools them to disk. They are written to
// one temporary file per process (reused for every input) and validated with small limits
// (16 samples, 256 KiB), so each run stays fast. Any input must give a sample set or an error,
// never a crash (ASan/UBSan); an accepted set must respect the limits and hold only images whose
// header checks.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "server/dataset_validation.h"
#include "server/image_header.h"
#include "worker/model/samples.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "dataset_upload_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

// The process's spool file, removed at exit.
const std::string& SpoolPath() {
  static const std::string* path = [] {
    auto* p = new std::string((std::filesystem::temp_directory_path() /
                               ("dataset_upload_fuzz." + std::to_string(getpid()) + ".tar"))
                                  .string());
    std::atexit([] { std::remove(SpoolPath().c_str()); });
    return p;
  }();
  return *path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = SpoolPath();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  Check(f != nullptr, "cannot open the spool file");
  Check(size == 0 || std::fwrite(data, 1, size, f) == size, "cannot write the spool file");
  Check(std::fclose(f) == 0, "cannot close the spool file");

  prunesvc::model::SampleLimits limits;
  limits.max_samples = 16;
  limits.max_total_bytes = 256 << 10;
  auto set = prunesvc::server::ValidateDatasetTar(path, "upload", limits);
  if (!set.ok()) return 0;
  Check(!set->samples.empty(), "accepted an empty sample set");
  Check(set->samples.size() <= limits.max_samples, "more samples than max_samples");
  Check(set->total_bytes <= limits.max_total_bytes, "more bytes than max_total_bytes");
  Check(set->sha256.size() == 64, "sha256 is not 64 hex digits");
  for (const prunesvc::model::Sample& s : set->samples) {
    const absl::string_view bytes(reinterpret_cast<const char*>(s.image_bytes.data()),
                                  s.image_bytes.size());
    Check(prunesvc::server::CheckImageHeader(bytes).ok(), "accepted an image with a bad header");
  }
  return 0;
}
