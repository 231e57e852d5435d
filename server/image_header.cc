#include "server/image_header.h"

#include "absl/strings/str_cat.h"

namespace prunesvc::server {
namespace {

uint32_t Be32(absl::string_view b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 24) | (uint32_t(uint8_t(b[at + 1])) << 16) |
         (uint32_t(uint8_t(b[at + 2])) << 8) | uint32_t(uint8_t(b[at + 3]));
}
uint32_t Be16(absl::string_view b, size_t at) {
  return (uint32_t(uint8_t(b[at])) << 8) | uint32_t(uint8_t(b[at + 1]));
}

absl::StatusOr<ImageHeader> ParsePng(absl::string_view b) {
  // Signature (8), IHDR length (4) = 13, "IHDR", width (4), height (4).
  if (b.size() < 24 || Be32(b, 8) != 13 || b.substr(12, 4) != "IHDR") {
    return absl::InvalidArgumentError("PNG without a complete IHDR chunk");
  }
  return ImageHeader{"png", Be32(b, 16), Be32(b, 20)};
}

bool IsSof(uint8_t marker) {
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

absl::StatusOr<ImageHeader> ParseJpeg(absl::string_view b) {
  size_t at = 2;  // after SOI
  while (at + 1 < b.size()) {
    if (uint8_t(b[at]) != 0xFF) return absl::InvalidArgumentError("JPEG marker expected");
    const uint8_t marker = uint8_t(b[at + 1]);
    if (marker == 0xFF) {  // fill byte
      ++at;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
      at += 2;
      continue;
    }
    if (marker == 0xD9 || marker == 0xDA) break;  // EOI or scan before any SOF
    if (at + 4 > b.size()) break;
    const uint32_t len = Be16(b, at + 2);
    if (len < 2) return absl::InvalidArgumentError("JPEG segment with a length below 2");
    if (IsSof(marker)) {
      if (len < 7 || at + 9 > b.size()) break;
      return ImageHeader{"jpeg", Be16(b, at + 7), Be16(b, at + 5)};
    }
    at += 2 + len;
  }
  return absl::InvalidArgumentError("JPEG without a frame header (SOF) before its data");
}

}  // namespace

absl::StatusOr<ImageHeader> ParseImageHeader(absl::string_view bytes) {
  static constexpr absl::string_view kPng("\x89PNG\r\n\x1a\n", 8);
  absl::StatusOr<ImageHeader> h;
  if (bytes.substr(0, 8) == kPng) {
    h = ParsePng(bytes);
  } else if (bytes.size() >= 3 && uint8_t(bytes[0]) == 0xFF && uint8_t(bytes[1]) == 0xD8 &&
             uint8_t(bytes[2]) == 0xFF) {
    h = ParseJpeg(bytes);
  } else {
    return absl::InvalidArgumentError("not a PNG or JPEG image");
  }
  if (h.ok() && (h->width == 0 || h->height == 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(h->format, " image of ", h->width, "x", h->height, " pixels"));
  }
  return h;
}

absl::Status CheckImageHeader(absl::string_view bytes, int64_t max_side) {
  absl::StatusOr<ImageHeader> h = ParseImageHeader(bytes);
  if (!h.ok()) return h.status();
  if (h->width > max_side || h->height > max_side) {
    return absl::InvalidArgumentError(absl::StrCat(h->format, " image of ", h->width, "x",
                                                   h->height, " pixels exceeds the limit of ",
                                                   max_side, "x", max_side));
  }
  return absl::OkStatus();
}

}  // namespace prunesvc::server
