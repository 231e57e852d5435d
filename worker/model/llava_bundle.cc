#include "worker/model/llava_bundle.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

namespace prunesvc::model {
namespace {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}

// The ids of " A", " B", … for the longest prefix of letters that are single tokens, in the
// multiple-choice template's context (what Tokenizer::LetterTokenIds checks, one letter at a time
// so a vocabulary lacking e.g. " Q" still supports 16 options).
std::vector<int> SingleTokenLetters(const Tokenizer& tokenizer) {
  std::vector<int> ids;
  for (int n = 1; n <= 26; ++n) {
    auto letters = tokenizer.LetterTokenIds(n);
    if (!letters.ok()) break;
    ids = std::move(*letters);
  }
  return ids;
}

std::string SampleLabel(const Sample& s) {
  return absl::StrCat("samples.jsonl:", s.line, ": sample \"", s.id, "\"");
}

}  // namespace

absl::StatusOr<std::string> ResolveModelDir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(fs::path(dir) / "config.json", ec)) return dir;
  const std::string inner = (fs::path(dir) / "model").string();
  if (fs::is_regular_file(fs::path(inner) / "config.json", ec)) {
    spdlog::info("{} is a prunesvc artifact: using its model directory {}", dir, inner);
    return inner;
  }
  return absl::NotFoundError(absl::StrCat(dir, ": not a model directory (no ", dir,
                                          "/config.json) nor an artifact (no ", inner,
                                          "/config.json)"));
}

absl::StatusOr<std::unique_ptr<LlavaBundle>> LoadLlavaBundle(const std::string& model_dir,
                                                             at::Device device) {
  auto bundle = std::make_unique<LlavaBundle>();
  bundle->dir = model_dir;
  ASSIGN_OR_RETURN(bundle->config, LoadLlavaConfig(model_dir));
  const LlavaConfig& config = bundle->config;

  ASSIGN_OR_RETURN(bundle->tokenizer, Tokenizer::Load(model_dir));
  const Tokenizer& tok = *bundle->tokenizer;
  if (tok.image_token_id() != config.image_token_index) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, "/config.json: image_token_index ", config.image_token_index,
                     " differs from the tokenizer's <image> id ", tok.image_token_id(),
                     " (added_tokens.json / tokenizer_config.json)"));
  }
  if (tok.vocab_size() > config.text.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, "/config.json: text_config.vocab_size ", config.text.vocab_size,
                     " is smaller than the tokenizer's ", tok.vocab_size(), " tokens"));
  }

  const std::string pp_path = model_dir + "/preprocessor_config.json";
  ASSIGN_OR_RETURN(std::string pp_text, ReadTextFile(pp_path));
  ASSIGN_OR_RETURN(bundle->preprocess, ParsePreprocessorConfig(pp_text, pp_path));
  const ClipPreprocessConfig& pp = bundle->preprocess;
  // The vision tower's position embeddings fix its input size; HF would fail at the first image.
  if (!pp.do_center_crop || pp.crop_height != config.vision.image_size ||
      pp.crop_width != config.vision.image_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        pp_path, ": crop_size must be ", config.vision.image_size, "x", config.vision.image_size,
        " (vision_config.image_size in config.json) with do_center_crop, got ",
        pp.do_center_crop ? "" : "no crop, ", pp.crop_height, "x", pp.crop_width));
  }
  if (config.vision.num_channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, "/config.json: vision_config.num_channels must be 3 (RGB), got ",
                     config.vision.num_channels));
  }

  ASSIGN_OR_RETURN(Checkpoint ckpt, LoadCheckpoint(model_dir));
  bundle->source_dtype = ckpt.source_dtype;
  for (const auto& [name, t] : ckpt.tensors) bundle->checkpoint_parameters += t.numel();
  bundle->layout = ckpt.layout;
  ASSIGN_OR_RETURN(bundle->model, LlavaModel::Create(config, ckpt, device));
  bundle->letter_token_ids = SingleTokenLetters(tok);
  return bundle;
}

absl::StatusOr<PreparedSample> PrepareSample(const LlavaBundle& bundle, const Sample& sample) {
  const Tokenizer& tok = *bundle.tokenizer;
  const std::string label = SampleLabel(sample);
  PreparedSample out;
  out.id = sample.id;
  out.type = sample.type;
  out.line = sample.line;

  std::string prompt;
  std::string answer;
  if (sample.multiple_choice()) {
    const size_t letters = bundle.letter_token_ids.size();
    if (sample.options.size() > letters) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": field \"options\": ", sample.options.size(), " options, but the tokenizer has ",
          letters, " single-token answer letters"));
    }
    const int correct = sample.answer_index();
    if (correct < 0 || correct >= int(sample.options.size())) {
      return absl::InvalidArgumentError(absl::StrCat(label, ": field \"answer\": \"", sample.answer,
                                                     "\" is not an option letter"));
    }
    prompt = MultipleChoicePrompt(sample.question, sample.options);
    answer = AnswerText(std::string(1, OptionLetter(correct)));
    out.scoring.option_token_ids.assign(bundle.letter_token_ids.begin(),
                                        bundle.letter_token_ids.begin() + sample.options.size());
    out.scoring.correct_option = correct;
  } else {
    prompt = OpenAnswerPrompt(sample.question);
    answer = AnswerText(sample.answer);
  }

  ASSIGN_OR_RETURN(EncodedSample enc, tok.EncodeForScoring(prompt, answer, label));
  const int image_tokens =
      int(std::count(enc.ids.begin(), enc.ids.begin() + enc.answer_begin, tok.image_token_id()));
  if (image_tokens != 1) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": the prompt has ", image_tokens,
                                                   " <image> tokens, expected exactly 1 (does the "
                                                   "question or an option contain \"<image>\"?)"));
  }
  if (sample.multiple_choice()) {
    // Scoring reads the letter's logit at the last prompt position; the answer must be that
    // very token, or the loss and the accuracy would score different things.
    const int want = out.scoring.option_token_ids[out.scoring.correct_option];
    if (enc.answer_end - enc.answer_begin != 1 || enc.ids[enc.answer_begin] != want) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": field \"answer\": \"", sample.answer,
                       "\" does not tokenize to its letter's single token after the prompt"));
    }
  }
  out.scoring.token_ids = std::move(enc.ids);
  out.scoring.answer_begin = enc.answer_begin;
  out.scoring.answer_end = enc.answer_end;

  const std::string image_label = absl::StrCat(label, ": image \"", sample.image_path, "\"");
  ASSIGN_OR_RETURN(RgbImage image, DecodeImage(sample.image_bytes, image_label));
  auto pixels = PreprocessImage(image, bundle.preprocess);
  if (!pixels.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(image_label, ": preprocessing: ", pixels.status().message()));
  }
  out.pixels = std::move(*pixels);
  return out;
}

absl::Status AttachImageFeatures(const LlavaModel& model, absl::Span<PreparedSample> samples,
                                 int batch_size) {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size must be at least 1, got ", batch_size));
  }
  for (size_t start = 0; start < samples.size(); start += batch_size) {
    const size_t end = std::min(samples.size(), start + size_t(batch_size));
    std::vector<PixelValues> images;
    images.reserve(end - start);
    for (size_t i = start; i < end; ++i) images.push_back(samples[i].pixels);
    ASSIGN_OR_RETURN(at::Tensor pixels, StackPixels(images, model.device()));
    ASSIGN_OR_RETURN(at::Tensor features, model.ComputeImageFeatures(pixels));
    try {
      for (size_t i = start; i < end; ++i) {
        const int64_t k = int64_t(i - start);
        // A copy per sample, so dropping one sample's features frees its memory.
        samples[i].scoring.image_features = features.slice(0, k, k + 1).clone();
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("splitting image features: ", e.what()));
    }
  }
  return absl::OkStatus();
}

}  // namespace prunesvc::model
