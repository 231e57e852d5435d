// CLIP image preprocessing as HuggingFace's (slow, PIL-based) CLIPImageProcessor does it, with a
// port of Pillow 9.4's bicubic resampler so resized pixels are bit-identical to PIL's.
//
// Pipeline (transformers image_processing_clip.py / image_transforms.py):
//   RGB uint8 → resize (shortest edge → s, long side int(s·long/short); or an exact height×width)
//   with PIL bicubic on uint8 → center crop (top = ⌊(H−h)/2⌋, zero padding when the image is
//   smaller than the crop) → rescale: float32(float64(x) · rescale_factor) → normalise in float32:
//   (x − float32(mean)) / float32(std) → CHW float32.
// The float arithmetic is done in the same precisions as numpy does it there, so results agree
// with HF bit-for-bit in practice (the tests allow 1e-5).
//
// The library is compiled with -ffp-contract=off: fused multiply-adds would change the resampler's
// double-precision coefficients and break exact parity.
// Thread-safety: all functions are reentrant.
#ifndef PRUNESVC_WORKER_MODEL_PREPROCESS_H_
#define PRUNESVC_WORKER_MODEL_PREPROCESS_H_

#include <array>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/image.h"

namespace prunesvc::model {

// PIL resampling filter ids (PILImageResampling). Only BICUBIC is implemented.
inline constexpr int kPilBicubic = 3;

struct ClipPreprocessConfig {
  // Resize target: shortest_edge > 0 → shortest-edge resize; shortest_edge == 0 → resize to
  // exactly resize_height × resize_width (HF `size: {"height", "width"}`).
  int shortest_edge = 336;
  int resize_height = 0;
  int resize_width = 0;
  int crop_height = 336;
  int crop_width = 336;
  bool do_resize = true;
  bool do_center_crop = true;
  bool do_rescale = true;
  bool do_normalize = true;
  // Our decoder always yields RGB, so this is informational (HF converts with PIL's
  // convert("RGB"), which DecodeImage already matches).
  bool do_convert_rgb = true;
  double rescale_factor = 1.0 / 255;
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};
  int resample = kPilBicubic;
};

// Checks ranges: positive sizes (≤ 16384), finite rescale factor, finite mean, finite non-zero
// std, resample == 3.
absl::Status ValidatePreprocessConfig(const ClipPreprocessConfig& config);

// Parses HF's preprocessor_config.json (CLIPImageProcessor / CLIPFeatureExtractor /
// LlavaImageProcessor without padding). Accepted forms, as transformers' get_size_dict reads them:
// `size`: {"shortest_edge": N} | {"height": H, "width": W} | N (= shortest edge) | [H, W];
// `crop_size`: {"height": H, "width": W} | N (= N×N) | [H, W]. `image_mean`/`image_std`: three
// numbers or one (broadcast). Missing keys take CLIPImageProcessor's constructor defaults (which
// differ from ClipPreprocessConfig's LLaVA-1.5 defaults: size 224, crop 224). Wrong types, bad
// values and unsupported processors or options give an InvalidArgument error naming the field and
// `source_name`. Unknown keys are ignored, as HF ignores them.
absl::StatusOr<ClipPreprocessConfig> ParsePreprocessorConfig(std::string_view json,
                                                             std::string_view source_name);

// Output (width, height) of the resize step for an input of in_width × in_height, following
// transformers' get_resize_output_image_size(default_to_square=False).
std::pair<int, int> ResizeOutputSize(int in_width, int in_height,
                                     const ClipPreprocessConfig& config);

// Pillow 9.4 `Image.resize((out_w, out_h), Image.BICUBIC)` on an RGB image: separable, a = −0.5,
// support widened by the downscale factor (antialiasing), 22-bit fixed-point coefficients,
// horizontal pass first. Returns an empty image (width 0) if `image` is not Valid() or a target
// size is < 1.
RgbImage ResizeBicubicPil(const RgbImage& image, int out_w, int out_h);

// HF center_crop on uint8 HWC: offsets ⌊(H−h)/2⌋, ⌊(W−w)/2⌋ (negative → zero padding).
RgbImage CenterCrop(const RgbImage& image, int crop_w, int crop_h);

struct PixelValues {
  int channels = 0;
  int height = 0;
  int width = 0;
  std::vector<float> data;  // CHW, channels * height * width
};

absl::StatusOr<PixelValues> PreprocessImage(const RgbImage& image,
                                            const ClipPreprocessConfig& config);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_PREPROCESS_H_
