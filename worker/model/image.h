// Image decoding (PNG, JPEG) to 8-bit RGB with the exact pixel values Pillow 9.4 produces for
// `Image.open(f).convert("RGB")`, and deterministic PNG encoding.
//
// Why exactness matters: CLIP preprocessing is checked against HF's PIL-based pipeline, so the
// decoded pixels must be the ones PIL would hand to it. Conversion rules (PIL 9.4, verified in
// image_test.cc against Debian's python3-pil):
//   - RGBA / LA: alpha is dropped, no compositing; LA/L replicate the gray value.
//   - Palette (P, any bit depth, with or without tRNS): palette lookup, transparency ignored;
//     indices past the PLTE entries map to PIL's default ramp (i, i, i).
//   - Gray 1/2/4-bit: scaled to 0..255 (bit replication).
//   - 16-bit RGB / RGBA / LA: the high byte of each sample.
//   - 16-bit gray: PIL opens it as mode "I" and convert("RGB") clamps, so v > 255 becomes 255.
//   - tRNS on gray/RGB images, gamma, sRGB and ICC chunks are ignored (PIL applies none).
//   - JPEG: libjpeg(-turbo) with default settings (ISLOW DCT, fancy upsampling), the same library
//     and settings PIL uses, so pixels are identical. CMYK/YCCK JPEGs are rejected. EXIF
//     orientation is not applied (neither does Image.open).
//
// Limits are checked from the header before any pixel buffer is allocated. All failures are
// absl::Status errors naming the source; decoding never aborts or reads out of bounds.
// Thread-safety: all functions are reentrant (no shared state).
#ifndef PRUNESVC_WORKER_MODEL_IMAGE_H_
#define PRUNESVC_WORKER_MODEL_IMAGE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace prunesvc::model {

// An 8-bit RGB image, row-major HWC. Invariant (for images produced here):
// pixels.size() == width * height * 3.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;

  bool Valid() const {
    return width > 0 && height > 0 &&
           pixels.size() == static_cast<size_t>(width) * static_cast<size_t>(height) * 3;
  }
};

struct DecodeOptions {
  // docs/architecture.md §4: images ≤ 4096×4096 by default.
  int max_width = 4096;
  int max_height = 4096;
  // Files larger than this are refused by ReadImageFile before reading.
  int64_t max_file_bytes = int64_t{256} << 20;
};

// Decodes a PNG or JPEG (detected by signature) to RGB. `source_name` is used in error messages
// (a file path or sample id).
absl::StatusOr<RgbImage> DecodeImage(absl::Span<const uint8_t> bytes, std::string_view source_name,
                                     const DecodeOptions& options = {});

// Reads and decodes an image file; errors name `path`.
absl::StatusOr<RgbImage> ReadImageFile(const std::string& path, const DecodeOptions& options = {});

// Encodes an 8-bit RGB PNG: non-interlaced, filter None on every row, zlib level 9, no ancillary
// chunks (no timestamps, gamma or text). The bytes depend only on the pixels and the zlib build
// (Debian 12: zlib 1.2.13).
absl::StatusOr<std::vector<uint8_t>> EncodePng(const RgbImage& image);

// EncodePng, then writes the bytes to `path` via a temporary file and rename.
absl::Status WritePng(const std::string& path, const RgbImage& image);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_IMAGE_H_
