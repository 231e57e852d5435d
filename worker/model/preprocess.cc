#include "worker/model/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace prunesvc::model {
namespace {

// ---------------------------------------------------------------------------------------------
// Pillow's resampler (libImaging/Resample.c, 9.4), re-derived. Every double expression below is
// written in the same order as Pillow's so the coefficients round identically.

// Fixed-point fraction bits: 32 − 8 (pixel) − 2 (headroom for negative lobes / sums above 1).
constexpr int kPrecisionBits = 32 - 8 - 2;

// Keys cubic convolution with a = −0.5 (Pillow's choice; torch uses −0.75).
double BicubicKernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
constexpr double kBicubicSupport = 2.0;

// Filter taps for output positions [first, first + n) of a 1-D resample in_size → out_size.
// Output i reads inputs start[i] .. start[i] + count[i] − 1 with weights k[i * ksize + j].
struct Taps {
  int ksize = 0;
  std::vector<int> start;
  std::vector<int> count;
  std::vector<int32_t> k;
};

Taps ComputeTaps(int in_size, int out_size, int first, int n) {
  // Pillow's box is float; (in1 − in0) is exact for any realistic size.
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  // Widening the kernel by the downscale factor is what makes PIL's shrink antialiased.
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kBicubicSupport * filterscale;
  Taps taps;
  taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.start.resize(n);
  taps.count.resize(n);
  taps.k.assign(static_cast<size_t>(n) * taps.ksize, 0);
  std::vector<double> w(taps.ksize);
  for (int i = 0; i < n; ++i) {
    const int xx = first + i;
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // (int) truncates like Pillow's cast; negatives are clamped to 0 right after anyway.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    // ksize bounds xmax mathematically; the min() only guards against a pathological rounding.
    xmax = std::min(xmax, taps.ksize);
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double v = BicubicKernel((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) w[x] /= ww;
    }
    int32_t* k = &taps.k[static_cast<size_t>(i) * taps.ksize];
    for (int x = 0; x < xmax; ++x) {
      // Round half away from zero, then truncate — Pillow's normalize_coeffs_8bpc.
      k[x] = w[x] < 0 ? static_cast<int32_t>(-0.5 + w[x] * (1 << kPrecisionBits))
                      : static_cast<int32_t>(0.5 + w[x] * (1 << kPrecisionBits));
    }
    taps.start[i] = xmin;
    taps.count[i] = std::max(xmax, 0);
  }
  return taps;
}

// Pillow's clip8: the accumulator starts at the rounding bias 1 << (kPrecisionBits − 1), so an
// arithmetic shift rounds to nearest; out-of-range results saturate.
inline uint8_t Clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Resamples `in` to out_w × out_h but only materialises the output window
// [x0, x0 + w) × [y0, y0 + h). Each output pixel depends only on its own taps, so the window equals
// the same region of the full resize — this is what lets the crop skip unused pixels.
RgbImage ResizeRegion(const RgbImage& in, int out_w, int out_h, int x0, int y0, int w, int h) {
  RgbImage out;
  out.width = w;
  out.height = h;
  out.pixels.assign(static_cast<size_t>(w) * h * 3, 0);
  if (w <= 0 || h <= 0) return out;
  // Pillow: need_horizontal = xsize != imIn->xsize (default box), likewise vertical; a pass that
  // is not needed is skipped, not run as an identity resample.
  const bool need_h = out_w != in.width;
  const bool need_v = out_h != in.height;

  Taps vtaps;
  int row_first = y0;
  int row_end = y0 + h;
  if (need_v) {
    vtaps = ComputeTaps(in.height, out_h, y0, h);
    // Taps are monotone in the output index, so the first/last output bound the input rows used
    // (Pillow's ybox_first / ybox_last).
    row_first = vtaps.start[0];
    row_end = vtaps.start[h - 1] + vtaps.count[h - 1];
  }
  const int tmp_rows = row_end - row_first;

  // Horizontal pass (or column copy) over the input rows the vertical pass needs.
  std::vector<uint8_t> tmp(static_cast<size_t>(w) * std::max(tmp_rows, 0) * 3);
  const size_t in_stride = static_cast<size_t>(in.width) * 3;
  if (need_h) {
    const Taps htaps = ComputeTaps(in.width, out_w, x0, w);
    for (int r = 0; r < tmp_rows; ++r) {
      const uint8_t* src = in.pixels.data() + in_stride * (row_first + r);
      uint8_t* dst = tmp.data() + static_cast<size_t>(r) * w * 3;
      for (int xx = 0; xx < w; ++xx) {
        const int32_t* k = &htaps.k[static_cast<size_t>(xx) * htaps.ksize];
        const uint8_t* p = src + static_cast<size_t>(htaps.start[xx]) * 3;
        int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < htaps.count[xx]; ++x, p += 3) {
          s0 += p[0] * k[x];
          s1 += p[1] * k[x];
          s2 += p[2] * k[x];
        }
        dst[xx * 3] = Clip8(s0);
        dst[xx * 3 + 1] = Clip8(s1);
        dst[xx * 3 + 2] = Clip8(s2);
      }
    }
  } else {
    for (int r = 0; r < tmp_rows; ++r) {
      std::copy_n(in.pixels.data() + in_stride * (row_first + r) + static_cast<size_t>(x0) * 3,
                  static_cast<size_t>(w) * 3, tmp.data() + static_cast<size_t>(r) * w * 3);
    }
  }

  if (!need_v) {
    out.pixels = std::move(tmp);
    return out;
  }
  const size_t tmp_stride = static_cast<size_t>(w) * 3;
  for (int yy = 0; yy < h; ++yy) {
    const int32_t* k = &vtaps.k[static_cast<size_t>(yy) * vtaps.ksize];
    const int ymin = vtaps.start[yy] - row_first;
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(yy) * tmp_stride;
    for (size_t i = 0; i < tmp_stride; ++i) {
      int32_t s = 1 << (kPrecisionBits - 1);
      const uint8_t* p = tmp.data() + static_cast<size_t>(ymin) * tmp_stride + i;
      for (int y = 0; y < vtaps.count[yy]; ++y, p += tmp_stride) s += *p * k[y];
      dst[i] = Clip8(s);
    }
  }
  return out;
}

// Python's floor division for the center-crop offset (negative when padding).
int FloorDiv2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

// ---------------------------------------------------------------------------------------------
// preprocessor_config.json

constexpr int kMaxConfigSize = 16384;

absl::Status FieldError(absl::string_view source, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", field, "\" ", what));
}

absl::StatusOr<int> GetSizeInt(const nlohmann::json& v, absl::string_view source,
                               absl::string_view field) {
  if (!v.is_number_integer()) return FieldError(source, field, "must be an integer");
  const int64_t n = v.get<int64_t>();
  if (n < 1 || n > kMaxConfigSize) {
    return FieldError(source, field, absl::StrCat("must be in [1, ", kMaxConfigSize, "], got ", n));
  }
  return static_cast<int>(n);
}

absl::StatusOr<bool> GetBool(const nlohmann::json& obj, absl::string_view source, const char* field,
                             bool fallback) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return FieldError(source, field, "must be true or false");
  return it->get<bool>();
}

// Reads `size` / `crop_size` as transformers' get_size_dict does. Sets either shortest or
// (height, width).
struct SizeSpec {
  int shortest = 0;
  int height = 0;
  int width = 0;
};

absl::StatusOr<SizeSpec> GetSizeSpec(const nlohmann::json& v, absl::string_view source,
                                     absl::string_view field, bool int_is_square) {
  SizeSpec spec;
  if (v.is_number_integer()) {
    ASSIGN_OR_RETURN(int n, GetSizeInt(v, source, field));
    if (int_is_square) {
      spec.height = spec.width = n;
    } else {
      spec.shortest = n;
    }
    return spec;
  }
  if (v.is_array()) {
    if (v.size() != 2) return FieldError(source, field, "as a list must be [height, width]");
    ASSIGN_OR_RETURN(spec.height, GetSizeInt(v[0], source, absl::StrCat(field, "[0]")));
    ASSIGN_OR_RETURN(spec.width, GetSizeInt(v[1], source, absl::StrCat(field, "[1]")));
    return spec;
  }
  if (!v.is_object()) {
    return FieldError(source, field, "must be an integer, [height, width] or an object");
  }
  const bool has_h = v.contains("height"), has_w = v.contains("width");
  const bool has_s = v.contains("shortest_edge");
  if (has_s && v.size() == 1) {
    ASSIGN_OR_RETURN(spec.shortest,
                     GetSizeInt(v["shortest_edge"], source, absl::StrCat(field, ".shortest_edge")));
    return spec;
  }
  if (has_h && has_w && v.size() == 2) {
    ASSIGN_OR_RETURN(spec.height, GetSizeInt(v["height"], source, absl::StrCat(field, ".height")));
    ASSIGN_OR_RETURN(spec.width, GetSizeInt(v["width"], source, absl::StrCat(field, ".width")));
    return spec;
  }
  return FieldError(source, field,
                    absl::StrCat("has unsupported keys ", v.dump(),
                                 "; expected {\"shortest_edge\": N} or {\"height\": H, "
                                 "\"width\": W} (longest_edge/max_* resizes are not supported)"));
}

absl::StatusOr<std::array<double, 3>> GetTriple(const nlohmann::json& v, absl::string_view source,
                                                absl::string_view field) {
  std::array<double, 3> out{};
  if (v.is_number()) {
    out.fill(v.get<double>());
  } else if (v.is_array() && v.size() == 3) {
    for (int i = 0; i < 3; ++i) {
      if (!v[i].is_number()) {
        return FieldError(source, absl::StrCat(field, "[", i, "]"), "must be a number");
      }
      out[i] = v[i].get<double>();
    }
  } else {
    return FieldError(source, field, "must be a number or a list of 3 numbers (one per channel)");
  }
  return out;
}

}  // namespace

absl::Status ValidatePreprocessConfig(const ClipPreprocessConfig& c) {
  auto in_range = [](int v) { return v >= 1 && v <= kMaxConfigSize; };
  if (c.do_resize) {
    if (c.shortest_edge != 0) {
      if (!in_range(c.shortest_edge)) {
        return absl::InvalidArgumentError(
            absl::StrCat("preprocess config: shortest_edge ", c.shortest_edge, " out of range"));
      }
    } else if (!in_range(c.resize_height) || !in_range(c.resize_width)) {
      return absl::InvalidArgumentError(absl::StrCat("preprocess config: resize size ",
                                                     c.resize_height, "x", c.resize_width,
                                                     " out of range"));
    }
  }
  if (c.do_center_crop && (!in_range(c.crop_height) || !in_range(c.crop_width))) {
    return absl::InvalidArgumentError(absl::StrCat("preprocess config: crop size ", c.crop_height,
                                                   "x", c.crop_width, " out of range"));
  }
  if (!std::isfinite(c.rescale_factor)) {
    return absl::InvalidArgumentError("preprocess config: rescale_factor is not finite");
  }
  for (int i = 0; i < 3; ++i) {
    if (!std::isfinite(c.image_mean[i]) || !std::isfinite(c.image_std[i]) ||
        c.image_std[i] == 0.0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "preprocess config: image_mean/image_std channel ", i, " must be finite, std non-zero"));
    }
  }
  if (c.resample != kPilBicubic) {
    return absl::InvalidArgumentError(
        absl::StrCat("preprocess config: resample ", c.resample,
                     " is not supported; only 3 (PIL bicubic, what CLIP/LLaVA use) is"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClipPreprocessConfig> ParsePreprocessorConfig(std::string_view json,
                                                             std::string_view source_view) {
  const absl::string_view source_name(source_view.data(), source_view.size());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": invalid JSON at byte ", e.byte, ": ", e.what()));
  } catch (const nlohmann::json::exception& e) {  // out_of_range.406: a number overflows a double
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": invalid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": top level must be an object"));
  }

  // Processor type: only processors whose numerics equal CLIPImageProcessor's are accepted.
  for (const char* key : {"image_processor_type", "feature_extractor_type"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_string()) return FieldError(source_name, key, "must be a string");
    const std::string type = it->get<std::string>();
    if (type == "CLIPImageProcessor" || type == "CLIPFeatureExtractor" ||
        type == "LlavaImageProcessor") {
      continue;
    }
    if (type == "CLIPImageProcessorFast") {
      // The fast processor resizes with torchvision, whose pixels differ slightly from PIL's.
      spdlog::warn("{}: {} is {}; applying the PIL-based CLIPImageProcessor numerics", source_name,
                   key, type);
      continue;
    }
    return FieldError(source_name, key,
                      absl::StrCat("is \"", type,
                                   "\"; only CLIPImageProcessor-compatible processors are "
                                   "supported (no anyres/LLaVA-NeXT, SigLIP, ...)"));
  }
  ASSIGN_OR_RETURN(bool do_pad, GetBool(j, source_name, "do_pad", false));
  if (do_pad) {
    return FieldError(source_name, "do_pad", "is true; pad-to-square is not supported");
  }

  ClipPreprocessConfig c;
  // CLIPImageProcessor constructor defaults for absent keys.
  c.shortest_edge = 224;
  c.crop_height = c.crop_width = 224;
  ASSIGN_OR_RETURN(c.do_resize, GetBool(j, source_name, "do_resize", true));
  ASSIGN_OR_RETURN(c.do_center_crop, GetBool(j, source_name, "do_center_crop", true));
  ASSIGN_OR_RETURN(c.do_rescale, GetBool(j, source_name, "do_rescale", true));
  ASSIGN_OR_RETURN(c.do_normalize, GetBool(j, source_name, "do_normalize", true));
  ASSIGN_OR_RETURN(c.do_convert_rgb, GetBool(j, source_name, "do_convert_rgb", true));

  if (auto it = j.find("size"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(SizeSpec s, GetSizeSpec(*it, source_name, "size", /*int_is_square=*/false));
    c.shortest_edge = s.shortest;
    c.resize_height = s.height;
    c.resize_width = s.width;
  }
  if (auto it = j.find("crop_size"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(SizeSpec s,
                     GetSizeSpec(*it, source_name, "crop_size", /*int_is_square=*/true));
    if (s.shortest != 0) {
      return FieldError(source_name, "crop_size", "must give height and width");
    }
    c.crop_height = s.height;
    c.crop_width = s.width;
  }
  if (auto it = j.find("rescale_factor"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return FieldError(source_name, "rescale_factor", "must be a number");
    c.rescale_factor = it->get<double>();
    if (!std::isfinite(c.rescale_factor)) {
      return FieldError(source_name, "rescale_factor", "must be finite");
    }
  }
  if (auto it = j.find("image_mean"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(c.image_mean, GetTriple(*it, source_name, "image_mean"));
  }
  if (auto it = j.find("image_std"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(c.image_std, GetTriple(*it, source_name, "image_std"));
    for (double s : c.image_std) {
      if (s == 0.0) return FieldError(source_name, "image_std", "must not contain 0");
    }
  }
  if (auto it = j.find("resample"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) return FieldError(source_name, "resample", "must be an integer");
    const int64_t r = it->get<int64_t>();
    if (r != kPilBicubic) {
      return FieldError(
          source_name, "resample",
          absl::StrCat("is ", r, "; only 3 (PIL bicubic, as CLIP/LLaVA use) is implemented"));
    }
    c.resample = static_cast<int>(r);
  }
  absl::Status valid = ValidatePreprocessConfig(c);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", valid.message()));
  }
  return c;
}

std::pair<int, int> ResizeOutputSize(int in_width, int in_height,
                                     const ClipPreprocessConfig& config) {
  if (config.shortest_edge == 0) return {config.resize_width, config.resize_height};
  const int64_t s = config.shortest_edge;
  const bool portrait = in_width <= in_height;
  const int64_t shorter = portrait ? in_width : in_height;
  const int64_t longer = portrait ? in_height : in_width;
  // Python: int(s * long / short) — exact product, correctly rounded division, truncation.
  const int new_long =
      static_cast<int>(static_cast<double>(s * longer) / static_cast<double>(shorter));
  return portrait ? std::pair<int, int>{static_cast<int>(s), new_long}
                  : std::pair<int, int>{new_long, static_cast<int>(s)};
}

RgbImage ResizeBicubicPil(const RgbImage& image, int out_w, int out_h) {
  if (!image.Valid() || out_w < 1 || out_h < 1) return RgbImage{};
  return ResizeRegion(image, out_w, out_h, 0, 0, out_w, out_h);
}

RgbImage CenterCrop(const RgbImage& image, int crop_w, int crop_h) {
  RgbImage out;
  if (!image.Valid() || crop_w < 1 || crop_h < 1) return out;
  out.width = crop_w;
  out.height = crop_h;
  out.pixels.assign(static_cast<size_t>(crop_w) * crop_h * 3, 0);
  const int top = FloorDiv2(image.height - crop_h);
  const int left = FloorDiv2(image.width - crop_w);
  for (int y = 0; y < crop_h; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= image.height) continue;
    for (int x = 0; x < crop_w; ++x) {
      const int sx = x + left;
      if (sx < 0 || sx >= image.width) continue;
      std::copy_n(&image.pixels[(static_cast<size_t>(sy) * image.width + sx) * 3], 3,
                  &out.pixels[(static_cast<size_t>(y) * crop_w + x) * 3]);
    }
  }
  return out;
}

absl::StatusOr<PixelValues> PreprocessImage(const RgbImage& image,
                                            const ClipPreprocessConfig& config) {
  RETURN_IF_ERROR(ValidatePreprocessConfig(config));
  constexpr int kMaxInputSide = 65536;  // keeps s·long/short far inside int
  if (!image.Valid() || image.width > kMaxInputSide || image.height > kMaxInputSide) {
    return absl::InvalidArgumentError(absl::StrCat("PreprocessImage: invalid image ", image.width,
                                                   "x", image.height, " (", image.pixels.size(),
                                                   " bytes)"));
  }
  int rw = image.width, rh = image.height;
  if (config.do_resize) std::tie(rw, rh) = ResizeOutputSize(image.width, image.height, config);
  if (rw < 1 || rh < 1) {
    return absl::InvalidArgumentError(absl::StrCat("PreprocessImage: resizing ", image.width, "x",
                                                   image.height, " gives an empty image"));
  }
  // Only the crop window of the resized image is computed (identical values, less work); areas
  // of the crop outside the resized image are zero, as HF's center_crop pads.
  const int out_w = config.do_center_crop ? config.crop_width : rw;
  const int out_h = config.do_center_crop ? config.crop_height : rh;
  if (static_cast<int64_t>(out_w) * out_h > (int64_t{1} << 28)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PreprocessImage: output ", out_w, "x", out_h, " is too large"));
  }
  const int top = config.do_center_crop ? FloorDiv2(rh - out_h) : 0;
  const int left = config.do_center_crop ? FloorDiv2(rw - out_w) : 0;
  const int y0 = std::max(top, 0), y1 = std::min(top + out_h, rh);
  const int x0 = std::max(left, 0), x1 = std::min(left + out_w, rw);
  RgbImage window;
  if (config.do_resize) {
    window = ResizeRegion(image, rw, rh, x0, y0, x1 - x0, y1 - y0);
  } else {
    window.width = x1 - x0;
    window.height = y1 - y0;
    window.pixels.resize(static_cast<size_t>(window.width) * window.height * 3);
    for (int y = 0; y < window.height; ++y) {
      std::copy_n(&image.pixels[(static_cast<size_t>(y + y0) * image.width + x0) * 3],
                  static_cast<size_t>(window.width) * 3,
                  &window.pixels[static_cast<size_t>(y) * window.width * 3]);
    }
  }

  // numpy: rescale computes float64(x) * factor then casts to float32; normalize casts mean and
  // std to float32 and computes (x − mean) / std in float32.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    const float mean = static_cast<float>(config.image_mean[c]);
    const float std = static_cast<float>(config.image_std[c]);
    for (int v = 0; v < 256; ++v) {
      float x = config.do_rescale
                    ? static_cast<float>(static_cast<double>(v) * config.rescale_factor)
                    : static_cast<float>(v);
      if (config.do_normalize) x = (x - mean) / std;
      lut[c][v] = x;
    }
  }
  PixelValues pv;
  pv.channels = 3;
  pv.height = out_h;
  pv.width = out_w;
  pv.data.resize(static_cast<size_t>(3) * out_h * out_w);
  const size_t plane = static_cast<size_t>(out_h) * out_w;
  for (int c = 0; c < 3; ++c) {
    float* dst = pv.data.data() + plane * c;
    for (int y = 0; y < out_h; ++y) {
      const int wy = y + top - y0;
      for (int x = 0; x < out_w; ++x) {
        const int wx = x + left - x0;
        uint8_t v = 0;  // padding
        if (wy >= 0 && wy < window.height && wx >= 0 && wx < window.width) {
          v = window.pixels[(static_cast<size_t>(wy) * window.width + wx) * 3 + c];
        }
        dst[static_cast<size_t>(y) * out_w + x] = lut[c][v];
      }
    }
  }
  return pv;
}

}  // namespace prunesvc::model
