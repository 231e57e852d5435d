// Parity of image decoding, PIL bicubic resizing and CLIP preprocessing with Debian's python3-pil
// (Pillow 9.4), using reference data written at test time by image_test_ref.py; plus malformed
// inputs and preprocessor_config.json parsing.
#include "worker/model/image.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/preprocess.h"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

std::vector<uint8_t> ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

std::string ReadText(const fs::path& path) {
  auto b = ReadBytes(path);
  return std::string(b.begin(), b.end());
}

std::vector<float> ReadFloats(const fs::path& path) {
  auto b = ReadBytes(path);
  std::vector<float> f(b.size() / 4);
  std::memcpy(f.data(), b.data(), f.size() * 4);
  return f;
}

// Runs the reference script once for the whole suite.
class PilReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/prunesvc_image_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new fs::path(tmpl);
    const std::string source =
        EnvOr("PRUNESVC_SOURCE", fs::path(__FILE__).parent_path().parent_path().parent_path());
    const std::string python = EnvOr("PRUNESVC_PYTHON", "/usr/bin/python3");
    const std::string cmd = python + " " + source + "/worker/model/image_test_ref.py " +
                            dir_->string() + " 2>" + dir_->string() + "/ref.log";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << ReadText(*dir_ / "ref.log");
    manifest_ = new nlohmann::json(nlohmann::json::parse(ReadText(*dir_ / "manifest.json")));
  }
  static void TearDownTestSuite() {
    if (dir_ != nullptr) {
      std::error_code ec;
      fs::remove_all(*dir_, ec);
    }
    delete dir_;
    delete manifest_;
    dir_ = nullptr;
    manifest_ = nullptr;
  }

  static RgbImage ReadRaw(const std::string& name, int w, int h) {
    RgbImage im;
    im.width = w;
    im.height = h;
    im.pixels = ReadBytes(*dir_ / name);
    return im;
  }

  static fs::path* dir_;
  static nlohmann::json* manifest_;
};
fs::path* PilReference::dir_ = nullptr;
nlohmann::json* PilReference::manifest_ = nullptr;

TEST_F(PilReference, PngDecodeMatchesPilConvertRgbExactly) {
  int n = 0;
  for (const auto& e : (*manifest_)["decode"]) {
    const std::string file = e["file"];
    SCOPED_TRACE(file + " (PIL mode " + e["pil_mode"].get<std::string>() + ")");
    auto im = ReadImageFile((*dir_ / file).string());
    ASSERT_TRUE(im.ok()) << im.status();
    EXPECT_EQ(im->width, e["width"].get<int>());
    EXPECT_EQ(im->height, e["height"].get<int>());
    const auto want = ReadBytes(*dir_ / e["rgb"].get<std::string>());
    ASSERT_EQ(im->pixels.size(), want.size());
    EXPECT_TRUE(im->pixels == want) << "pixels differ from PIL's convert('RGB')";
    ++n;
  }
  EXPECT_GE(n, 30);
}

TEST_F(PilReference, JpegDecodeMatchesPil) {
  int max_delta = 0;
  int n = 0;
  for (const auto& e : (*manifest_)["jpeg"]) {
    const std::string file = e["file"];
    SCOPED_TRACE(file);
    auto im = ReadImageFile((*dir_ / file).string());
    ASSERT_TRUE(im.ok()) << im.status();
    const auto want = ReadBytes(*dir_ / e["rgb"].get<std::string>());
    ASSERT_EQ(im->pixels.size(), want.size());
    int file_max = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      file_max = std::max(file_max, std::abs(int{im->pixels[i]} - int{want[i]}));
    }
    std::printf("JPEG %s: max |delta| vs PIL = %d\n", file.c_str(), file_max);
    max_delta = std::max(max_delta, file_max);
    ++n;
  }
  EXPECT_EQ(n, 5);
  // Same libjpeg-turbo, same default settings as PIL → identical pixels.
  EXPECT_EQ(max_delta, 0);
  RecordProperty("jpeg_max_abs_delta", max_delta);
}

TEST_F(PilReference, ExpectedDecodeErrors) {
  for (const auto& e : (*manifest_)["decode_errors"]) {
    const std::string file = e["file"];
    auto im = ReadImageFile((*dir_ / file).string());
    ASSERT_FALSE(im.ok()) << file;
    EXPECT_THAT(im.status().message(), HasSubstr(e["error_substr"].get<std::string>()));
    EXPECT_THAT(im.status().message(), HasSubstr(file));
  }
}

TEST_F(PilReference, BicubicResizeMatchesPilExactly) {
  int n = 0;
  for (const auto& e : (*manifest_)["resize"]) {
    const std::string src = e["src"];
    const int w = e["width"], h = e["height"];
    SCOPED_TRACE(src + " -> " + std::to_string(w) + "x" + std::to_string(h));
    auto im = ReadImageFile((*dir_ / src).string());
    ASSERT_TRUE(im.ok()) << im.status();
    const RgbImage got = ResizeBicubicPil(*im, w, h);
    ASSERT_EQ(got.width, w);
    ASSERT_EQ(got.height, h);
    const auto want = ReadBytes(*dir_ / e["out"].get<std::string>());
    ASSERT_EQ(got.pixels.size(), want.size());
    size_t mismatches = 0;
    int max_delta = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (got.pixels[i] != want[i]) ++mismatches;
      max_delta = std::max(max_delta, std::abs(int{got.pixels[i]} - int{want[i]}));
    }
    EXPECT_EQ(mismatches, 0u) << "max |delta| " << max_delta;
    ++n;
  }
  EXPECT_GE(n, 25);
}

TEST_F(PilReference, ClipPreprocessMatchesHfReimplementation) {
  double max_delta = 0;
  int n = 0;
  for (const auto& e : (*manifest_)["preprocess"]) {
    const std::string src = e["src"], cfg_name = e["config"];
    SCOPED_TRACE(src + " with " + cfg_name);
    auto cfg = ParsePreprocessorConfig(ReadText(*dir_ / cfg_name), cfg_name);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    auto im = ReadImageFile((*dir_ / src).string());
    ASSERT_TRUE(im.ok()) << im.status();
    auto pv = PreprocessImage(*im, *cfg);
    ASSERT_TRUE(pv.ok()) << pv.status();
    EXPECT_EQ(pv->channels, e["channels"].get<int>());
    ASSERT_EQ(pv->height, e["height"].get<int>());
    ASSERT_EQ(pv->width, e["width"].get<int>());
    const auto want = ReadFloats(*dir_ / e["out"].get<std::string>());
    ASSERT_EQ(pv->data.size(), want.size());
    double file_max = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      file_max = std::max(file_max, std::abs(double{pv->data[i]} - double{want[i]}));
    }
    EXPECT_LE(file_max, 1e-5);
    max_delta = std::max(max_delta, file_max);
    ++n;
  }
  std::printf("CLIP preprocessing: %d cases, max |delta| vs reference = %g\n", n, max_delta);
  RecordProperty("preprocess_max_abs_delta", std::to_string(max_delta));
  EXPECT_EQ(n, 55);
}

TEST_F(PilReference, CroppedResizeEqualsFullResizeThenCrop) {
  // PreprocessImage only computes the crop window of the resize; check it against the plain
  // composition ResizeBicubicPil + CenterCrop.
  auto im = ReadImageFile((*dir_ / "rgb_500x333.png").string());
  ASSERT_TRUE(im.ok());
  ClipPreprocessConfig cfg;
  cfg.do_rescale = false;
  cfg.do_normalize = false;
  for (auto [cw, ch] : {std::pair{336, 336}, std::pair{600, 100}, std::pair{1, 1}}) {
    cfg.crop_width = cw;
    cfg.crop_height = ch;
    auto pv = PreprocessImage(*im, cfg);
    ASSERT_TRUE(pv.ok());
    const RgbImage full = CenterCrop(ResizeBicubicPil(*im, 504, 336), cw, ch);
    ASSERT_EQ(pv->data.size(), full.pixels.size());
    for (int c = 0; c < 3; ++c) {
      for (int i = 0; i < cw * ch; ++i) {
        ASSERT_EQ(pv->data[c * cw * ch + i], full.pixels[i * 3 + c]) << cw << "x" << ch;
      }
    }
  }
}

TEST_F(PilReference, WritePngIsLosslessDeterministicAndReadableByPil) {
  RgbImage im;
  im.width = 37;
  im.height = 21;
  std::mt19937 gen(7);
  for (int i = 0; i < im.width * im.height * 3; ++i) im.pixels.push_back(gen() & 0xff);
  const fs::path path = *dir_ / "written.png";
  ASSERT_TRUE(WritePng(path.string(), im).ok());
  auto back = ReadImageFile(path.string());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->width, im.width);
  EXPECT_EQ(back->height, im.height);
  EXPECT_TRUE(back->pixels == im.pixels);
  auto again = EncodePng(im);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(*again == ReadBytes(path)) << "encoding is not deterministic";
  // PIL reads the same pixels back.
  {
    std::ofstream raw(*dir_ / "written.rgb", std::ios::binary);
    raw.write(reinterpret_cast<const char*>(im.pixels.data()), im.pixels.size());
  }
  const std::string python = EnvOr("PRUNESVC_PYTHON", "/usr/bin/python3");
  const std::string cmd = python +
                          " -c \"import sys, numpy as np; from PIL import Image; "
                          "im = Image.open(sys.argv[1]); "
                          "sys.exit(0 if im.mode == 'RGB' and np.array(im).tobytes() == "
                          "open(sys.argv[2], 'rb').read() else 1)\" " +
                          path.string() + " " + (*dir_ / "written.rgb").string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
}

// ---------------------------------------------------------------------------------------------
// Malformed inputs.

void AppendChunk(std::vector<uint8_t>& out, const char* tag, const std::vector<uint8_t>& data) {
  auto be32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
  };
  be32(static_cast<uint32_t>(data.size()));
  std::vector<uint8_t> body(tag, tag + 4);
  body.insert(body.end(), data.begin(), data.end());
  out.insert(out.end(), body.begin(), body.end());
  be32(static_cast<uint32_t>(crc32(0, body.data(), static_cast<uInt>(body.size()))));
}

// A PNG whose IHDR claims w×h (8-bit RGB), followed by a tiny IDAT and IEND.
std::vector<uint8_t> PngWithHeader(uint32_t w, uint32_t h) {
  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> ihdr;
  for (uint32_t v : {w, h}) {
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<uint8_t>(v >> s));
  }
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});
  AppendChunk(out, "IHDR", ihdr);
  AppendChunk(out, "IDAT", {0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01});
  AppendChunk(out, "IEND", {});
  return out;
}

std::vector<uint8_t> SmallPng() {
  RgbImage im;
  im.width = 64;
  im.height = 40;
  std::mt19937 gen(3);
  for (int i = 0; i < im.width * im.height * 3; ++i) im.pixels.push_back(gen() & 0xff);
  return EncodePng(im).value();
}

absl::Status DecodeStatus(const std::vector<uint8_t>& bytes, const DecodeOptions& options = {}) {
  return DecodeImage(bytes, "sample.png", options).status();
}

TEST(ImageMalformed, EmptyAndGarbage) {
  absl::Status s = DecodeStatus({});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("sample.png"));
  EXPECT_THAT(s.message(), HasSubstr("empty"));
  s = DecodeStatus({'G', 'I', 'F', '8', '9', 'a', 0, 0, 1, 2, 3});
  EXPECT_THAT(s.message(), HasSubstr("not a PNG or JPEG"));
  std::vector<uint8_t> sig_only = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  s = DecodeStatus(sig_only);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("truncated"));
  std::vector<uint8_t> junk = sig_only;
  std::mt19937 gen(11);
  for (int i = 0; i < 500; ++i) junk.push_back(gen() & 0xff);
  s = DecodeStatus(junk);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("cannot decode PNG"));
}

TEST(ImageMalformed, TruncatedPngAtEveryRegion) {
  const auto png = SmallPng();
  ASSERT_TRUE(DecodeImage(png, "ok.png").ok());
  // Cut inside the signature, IHDR, IDAT and just before IDAT's CRC.
  for (size_t cut : {size_t{5}, size_t{20}, size_t{40}, png.size() / 2, png.size() - 17}) {
    std::vector<uint8_t> t(png.begin(), png.begin() + cut);
    absl::Status s = DecodeStatus(t);
    ASSERT_FALSE(s.ok()) << "cut at " << cut;
    EXPECT_THAT(s.message(), HasSubstr("sample.png"));
  }
}

TEST(ImageMalformed, CorruptPngData) {
  auto png = SmallPng();
  // Flip a byte in the middle of the IDAT payload: CRC mismatch on a critical chunk.
  png[png.size() / 2] ^= 0x5a;
  EXPECT_FALSE(DecodeStatus(png).ok());
  // Zero-size image header.
  absl::Status s = DecodeStatus(PngWithHeader(0, 10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("cannot decode PNG"));
}

TEST(ImageMalformed, OversizePngHeaderRejectedBeforeAllocation) {
  // 100000×100000×3 bytes would be 30 GB; the header check must reject it first.
  absl::Status s = DecodeStatus(PngWithHeader(100000, 100000));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("100000x100000"));
  EXPECT_THAT(s.message(), HasSubstr("4096x4096"));
  s = DecodeStatus(PngWithHeader(5000, 1));
  EXPECT_THAT(s.message(), HasSubstr("5000x1"));
  // The limit is configurable.
  DecodeOptions small;
  small.max_width = 32;
  small.max_height = 32;
  s = DecodeStatus(SmallPng(), small);
  EXPECT_THAT(s.message(), HasSubstr("64x40"));
  EXPECT_THAT(s.message(), HasSubstr("32x32"));
}

std::vector<uint8_t> SmallJpeg(const fs::path& dir) {
  // Written by PIL for this test (libjpeg-turbo).
  const fs::path path = dir / "small.jpg";
  const std::string python = EnvOr("PRUNESVC_PYTHON", "/usr/bin/python3");
  const std::string cmd = python +
                          " -c \"import sys, numpy as np; from PIL import Image; "
                          "Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 64, 3),"
                          " dtype=np.uint8), 'RGB').save(sys.argv[1], quality=90)\" " +
                          path.string();
  if (std::system(cmd.c_str()) != 0) return {};
  return ReadBytes(path);
}

TEST(ImageMalformed, TruncatedCorruptAndOversizeJpeg) {
  char tmpl[] = "/tmp/prunesvc_jpeg_test_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const fs::path dir(tmpl);
  const auto jpg = SmallJpeg(dir);
  ASSERT_FALSE(jpg.empty());
  auto ok = DecodeImage(jpg, "sample.jpg");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->width, 64);
  EXPECT_EQ(ok->height, 40);

  for (size_t cut : {size_t{3}, size_t{30}, jpg.size() / 2, jpg.size() - 40}) {
    std::vector<uint8_t> t(jpg.begin(), jpg.begin() + cut);
    auto s = DecodeImage(t, "sample.jpg").status();
    ASSERT_FALSE(s.ok()) << "cut at " << cut;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("sample.jpg"));
  }
  std::vector<uint8_t> garbage = {0xff, 0xd8, 0xff};
  std::mt19937 gen(2);
  for (int i = 0; i < 300; ++i) garbage.push_back(gen() & 0xff);
  EXPECT_FALSE(DecodeImage(garbage, "sample.jpg").ok());

  // Patch the SOF0 header to claim 60000×60000.
  auto big = jpg;
  bool patched = false;
  for (size_t i = 0; i + 9 < big.size(); ++i) {
    if (big[i] == 0xff && big[i + 1] == 0xc0) {
      big[i + 5] = big[i + 7] = 60000 >> 8;
      big[i + 6] = big[i + 8] = 60000 & 0xff;
      patched = true;
      break;
    }
  }
  ASSERT_TRUE(patched);
  auto s = DecodeImage(big, "sample.jpg").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("60000x60000"));
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST(ImageMalformed, RandomByteFlipsGiveImageOrError) {
  // A deterministic mini-fuzz (image_fuzz.cc is the real one): corrupted files either decode to
  // a consistent image or give an error naming the source — never a crash.
  char tmpl[] = "/tmp/prunesvc_flip_test_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const auto jpg = SmallJpeg(tmpl);
  std::error_code ec;
  fs::remove_all(tmpl, ec);
  ASSERT_FALSE(jpg.empty());
  std::mt19937 gen(99);
  int errors = 0;
  for (const auto& original : {SmallPng(), jpg}) {
    for (int iter = 0; iter < 300; ++iter) {
      auto bytes = original;
      const int flips = 1 + static_cast<int>(gen() % 4);
      for (int f = 0; f < flips; ++f) bytes[gen() % bytes.size()] = gen() & 0xff;
      auto im = DecodeImage(bytes, "flipped");
      if (im.ok()) {
        EXPECT_TRUE(im->Valid());
      } else {
        ++errors;
        EXPECT_THAT(im.status().message(), HasSubstr("flipped"));
      }
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(ImageMalformed, MissingFile) {
  auto s = ReadImageFile("/nonexistent/dir/x.png").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/dir/x.png"));
}

TEST(Resize, InvalidArgumentsGiveEmptyImage) {
  RgbImage im;
  im.width = 2;
  im.height = 2;
  im.pixels.assign(12, 100);
  EXPECT_EQ(ResizeBicubicPil(im, 0, 5).width, 0);
  EXPECT_EQ(ResizeBicubicPil(im, 5, -1).width, 0);
  im.pixels.resize(11);  // inconsistent buffer
  EXPECT_EQ(ResizeBicubicPil(im, 3, 3).width, 0);
  EXPECT_FALSE(PreprocessImage(im, ClipPreprocessConfig{}).ok());
}

TEST(Resize, ConstantImageStaysConstant) {
  // Normalised coefficients sum to ~1, so a flat image must stay flat at every scale.
  RgbImage im;
  im.width = 31;
  im.height = 17;
  im.pixels.assign(31 * 17 * 3, 77);
  for (auto [w, h] : {std::pair{5, 3}, std::pair{100, 71}, std::pair{31, 2}}) {
    RgbImage out = ResizeBicubicPil(im, w, h);
    ASSERT_EQ(out.pixels.size(), static_cast<size_t>(w) * h * 3);
    EXPECT_TRUE(
        std::all_of(out.pixels.begin(), out.pixels.end(), [](uint8_t v) { return v == 77; }));
  }
}

// ---------------------------------------------------------------------------------------------
// preprocessor_config.json

TEST(PreprocessorConfig, LlavaConfig) {
  auto c = ParsePreprocessorConfig(R"({
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": true, "do_convert_rgb": true,
    "do_normalize": true, "do_rescale": true, "do_resize": true,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaProcessor",
    "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}})",
                                   "preprocessor_config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->shortest_edge, 336);
  EXPECT_EQ(c->crop_height, 336);
  EXPECT_EQ(c->crop_width, 336);
  EXPECT_DOUBLE_EQ(c->rescale_factor, 1.0 / 255);
  EXPECT_DOUBLE_EQ(c->image_std[2], 0.27577711);
  EXPECT_EQ(ResizeOutputSize(500, 333, *c), (std::pair<int, int>{504, 336}));
  EXPECT_EQ(ResizeOutputSize(333, 500, *c), (std::pair<int, int>{336, 504}));
  EXPECT_EQ(ResizeOutputSize(400, 400, *c), (std::pair<int, int>{336, 336}));
}

TEST(PreprocessorConfig, OldIntegerFormsAndDefaults) {
  auto c = ParsePreprocessorConfig(R"({"size": 224, "crop_size": 200,
      "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": 0.5})",
                                   "old.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->shortest_edge, 224);
  EXPECT_EQ(c->crop_height, 200);
  EXPECT_EQ(c->crop_width, 200);
  EXPECT_EQ(c->image_mean[1], 0.5);
  c = ParsePreprocessorConfig("{}", "empty.json");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->shortest_edge, 224);  // CLIPImageProcessor's own defaults
  EXPECT_EQ(c->crop_width, 224);
  c = ParsePreprocessorConfig(R"({"size": {"height": 30, "width": 20}, "crop_size": [7, 9]})",
                              "hw.json");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->shortest_edge, 0);
  EXPECT_EQ(ResizeOutputSize(100, 100, *c), (std::pair<int, int>{20, 30}));
  EXPECT_EQ(c->crop_height, 7);
  EXPECT_EQ(c->crop_width, 9);
}

TEST(PreprocessorConfig, BadFieldsNameTheField) {
  struct Case {
    const char* json;
    const char* want;
  };
  const Case cases[] = {
      {R"({"size": "336"})", "\"size\""},
      // A number beyond a double (nlohmann out_of_range 406; image_fuzz found it uncaught).
      {R"({"rescale_factor": 1e999})", "invalid JSON"},
      {R"({"size": {"shortest_edge": 0}})", "size.shortest_edge"},
      {R"({"size": {"shortest_edge": 33.5}})", "size.shortest_edge"},
      {R"({"size": {"shortest_edge": 336, "longest_edge": 500}})", "longest_edge"},
      {R"({"size": [1, 2, 3]})", "\"size\""},
      {R"({"crop_size": {"shortest_edge": 336}})", "crop_size"},
      {R"({"crop_size": {"height": 336}})", "crop_size"},
      {R"({"crop_size": {"height": -1, "width": 3}})", "crop_size.height"},
      {R"({"do_resize": "yes"})", "do_resize"},
      {R"({"do_normalize": 1})", "do_normalize"},
      {R"({"rescale_factor": "1/255"})", "rescale_factor"},
      {R"({"image_mean": [0.5, 0.5]})", "image_mean"},
      {R"({"image_mean": [0.5, "x", 0.5]})", "image_mean[1]"},
      {R"({"image_std": [0.5, 0, 0.5]})", "image_std"},
      {R"({"resample": 2})", "resample"},
      {R"({"resample": "bicubic"})", "resample"},
      {R"({"image_processor_type": "LlavaNextImageProcessor"})", "image_processor_type"},
      {R"({"image_processor_type": 7})", "image_processor_type"},
      {R"({"image_processor_type": "LlavaImageProcessor", "do_pad": true})", "do_pad"},
      {R"([1, 2])", "object"},
      {R"({"size": )", "invalid JSON"},
  };
  for (const Case& c : cases) {
    auto r = ParsePreprocessorConfig(c.json, "cfg.json");
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(r.status().message(), HasSubstr(c.want)) << c.json;
    EXPECT_THAT(r.status().message(), HasSubstr("cfg.json")) << c.json;
  }
}

TEST(PreprocessorConfig, ValidateRejectsBadStructs) {
  ClipPreprocessConfig c;
  EXPECT_TRUE(ValidatePreprocessConfig(c).ok());
  c.crop_width = 0;
  EXPECT_FALSE(ValidatePreprocessConfig(c).ok());
  c = ClipPreprocessConfig{};
  c.image_std[1] = 0;
  EXPECT_FALSE(ValidatePreprocessConfig(c).ok());
  c = ClipPreprocessConfig{};
  c.resample = 2;
  EXPECT_FALSE(ValidatePreprocessConfig(c).ok());
  c = ClipPreprocessConfig{};
  c.shortest_edge = 0;  // then an exact size is required
  EXPECT_FALSE(ValidatePreprocessConfig(c).ok());
}

}  // namespace
}  // namespace prunesvc::model
