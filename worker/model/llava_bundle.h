// A LLaVA model directory loaded as one unit (config, weights, tokenizer, preprocessor) and the
// step that turns a sample-set `Sample` into what the scorer consumes (docs/llava.md "Prompt
// templates and scoring").
//
// Why a bundle: llava-eval, llava-generate, the worker and the tiny-model trainer all need the
// same five files read and cross-checked the same way (the tokenizer's `<image>` id is the
// config's image_token_index, the preprocessor's crop is the vision tower's image size, the
// tokenizer fits the embedding), and the same prompt construction, so results agree across tools.
//
// Invariants of a loaded bundle: model/tokenizer non-null; tokenizer->image_token_id() ==
// config.image_token_index; tokenizer->vocab_size() <= config.text.vocab_size; the preprocessor
// produces config.vision.num_channels × image_size × image_size pixels; letter_token_ids holds the
// ids of " A", " B", … for the longest prefix of letters that are single tokens (0..26 entries).
//
// Thread-safety: a loaded bundle is immutable; PrepareSample is thread-safe. AttachImageFeatures
// only calls LlavaModel's const methods. No exceptions escape (libtorch errors become Status).
#ifndef PRUNESVC_WORKER_MODEL_LLAVA_BUNDLE_H_
#define PRUNESVC_WORKER_MODEL_LLAVA_BUNDLE_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/model/checkpoint.h"
#include "worker/model/config.h"
#include "worker/model/image.h"
#include "worker/model/llava_model.h"
#include "worker/model/preprocess.h"
#include "worker/model/samples.h"
#include "worker/model/scoring.h"
#include "worker/model/tokenizer.h"

namespace prunesvc::model {

struct LlavaBundle {
  std::string dir;
  LlavaConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  ClipPreprocessConfig preprocess;
  std::unique_ptr<LlavaModel> model;
  DType source_dtype = DType::kF32;  // dominant dtype of the weight files (for writing artifacts)
  WeightLayout layout = WeightLayout::kLegacy;
  // Parameters in the weight files (every tensor, including vision layers past the feature
  // layer that the model never runs): the count report.json and models/README.md give.
  int64_t checkpoint_parameters = 0;
  // Token ids of " A", " B", … after "ASSISTANT:", for the longest prefix of letters that are
  // single tokens. Multiple-choice samples may have at most letter_token_ids.size() options.
  std::vector<int> letter_token_ids;
};

// The model directory a user means by `dir`: `dir` itself when it has a config.json, DIR/model
// when `dir` is a prunesvc artifact (its model/ has one) — so an artifact is accepted wherever a
// model directory is. NotFound, naming both places, otherwise.
absl::StatusOr<std::string> ResolveModelDir(const std::string& dir);

// Loads `model_dir`: config.json, the weights (model.safetensors or shards), tokenizer.model +
// added_tokens.json / tokenizer_config.json, preprocessor_config.json (required). Errors name the
// file (and field) at fault, including cross-file mismatches.
absl::StatusOr<std::unique_ptr<LlavaBundle>> LoadLlavaBundle(const std::string& model_dir,
                                                             at::Device device = at::kCPU);

// A sample as the model sees it. `scoring.image_features` is left undefined until
// AttachImageFeatures runs; `pixels` holds the preprocessed image (CHW float).
struct PreparedSample {
  ScoringSample scoring;
  PixelValues pixels;
  std::string id;
  std::string type;
  int line = 0;  // 1-based line in samples.jsonl (0 if unknown)
};

// Builds the prompt (multiple-choice template when options are present, else open answer), the
// answer text (" " + letter / " " + answer), tokenizes with EncodeForScoring, sets the option
// letter ids and the correct option, and decodes + preprocesses the image.
// Errors (InvalidArgument, naming the sample's line and id): the prompt does not contain exactly
// one `<image>` token (e.g. a question with a literal "<image>"), more options than single-token
// letters, a multiple-choice answer that does not tokenize to its letter's one token, an image
// that does not decode.
absl::StatusOr<PreparedSample> PrepareSample(const LlavaBundle& bundle, const Sample& sample);

// Runs the vision tower + projector over the samples' pixels, `batch_size` images at a time, and
// sets each sample's scoring.image_features to [1, image_seq_length, text hidden].
absl::Status AttachImageFeatures(const LlavaModel& model, absl::Span<PreparedSample> samples,
                                 int batch_size);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_LLAVA_BUNDLE_H_
