#include "server/image_header.h"

#include <string>

#include "gtest/gtest.h"

namespace prunesvc::server {
namespace {

std::string Be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }
std::string Be16(uint32_t v) { return {char(v >> 8), char(v)}; }

std::string Png(uint32_t w, uint32_t h) {
  return std::string("\x89PNG\r\n\x1a\n", 8) + Be32(13) + "IHDR" + Be32(w) + Be32(h) +
         std::string("\x08\x02\x00\x00\x00", 5);
}

std::string Jpeg(uint32_t w, uint32_t h) {
  std::string app0 = std::string("\xFF\xE0", 2) + Be16(16) + std::string(14, 'j');
  std::string sof =
      std::string("\xFF\xC0", 2) + Be16(17) + "\x08" + Be16(h) + Be16(w) + std::string(10, '\x01');
  return std::string("\xFF\xD8", 2) + app0 + "\xFF" + sof + std::string("\xFF\xD9", 2);
}

TEST(ImageHeaderTest, ReadsPngAndJpegDimensions) {
  auto p = ParseImageHeader(Png(64, 32));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->format, "png");
  EXPECT_EQ(p->width, 64);
  EXPECT_EQ(p->height, 32);
  auto j = ParseImageHeader(Jpeg(640, 480));
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->format, "jpeg");
  EXPECT_EQ(j->width, 640);
  EXPECT_EQ(j->height, 480);
}

TEST(ImageHeaderTest, EnforcesTheSideLimit) {
  EXPECT_TRUE(CheckImageHeader(Png(4096, 4096)).ok());
  absl::Status s = CheckImageHeader(Png(4097, 10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("4096x4096"), std::string::npos) << s;
  EXPECT_FALSE(CheckImageHeader(Jpeg(10, 5000)).ok());
}

TEST(ImageHeaderTest, RejectsMalformedHeaders) {
  const std::string png = Png(8, 8);
  const std::string jpeg = Jpeg(8, 8);
  const std::string cases[] = {
      "",
      "GIF89a.......",
      png.substr(0, 8),
      png.substr(0, 20),
      Png(0, 8),
      Png(8, 0),
      std::string("\x89PNG\r\n\x1a\n", 8) + Be32(13) + "IDAT" + Be32(8) + Be32(8),
      jpeg.substr(0, 3),
      jpeg.substr(0, 25),
      Jpeg(0, 8),
      std::string("\xFF\xD8\xFF\xE0\x00\x01", 6),               // length < 2
      std::string("\xFF\xD8\xFF\xD9", 4),                       // EOI before SOF
      std::string("\xFF\xD8\xFF\xE0\xFF\xFF", 6) + "xx",        // length past the end
      std::string("\xFF\xD8\xFF\xDA\x00\x08", 6) + "12345678",  // scan before SOF
      std::string("\xFF\xD8\x00\x00", 4),
  };
  for (const std::string& c : cases) {
    auto h = ParseImageHeader(c);
    EXPECT_FALSE(h.ok()) << "accepted " << c.size() << " bytes";
    if (!h.ok()) {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace prunesvc::server
