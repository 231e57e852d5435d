// Reads an image's format and dimensions from its header without decoding it: what the
// scheduler checks for every image of an uploaded dataset (the workers decode later, under their
// own limits). PNG: the signature and the IHDR chunk; JPEG: SOI, then markers up to the first
// SOF (baseline, progressive, lossless, arithmetic). Anything else, a truncated header or a zero
// dimension is INVALID_ARGUMENT.
//
// Pure functions; thread-safe.
#ifndef PRUNESVC_SERVER_IMAGE_HEADER_H_
#define PRUNESVC_SERVER_IMAGE_HEADER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc::server {

inline constexpr int64_t kMaxImageSide = 4096;

struct ImageHeader {
  std::string format;  // "png" or "jpeg"
  int64_t width = 0;
  int64_t height = 0;
};

absl::StatusOr<ImageHeader> ParseImageHeader(absl::string_view bytes);

// ParseImageHeader plus the size limit (each side <= max_side): INVALID_ARGUMENT naming the
// dimensions and the limit.
absl::Status CheckImageHeader(absl::string_view bytes, int64_t max_side = kMaxImageSide);

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_IMAGE_HEADER_H_
