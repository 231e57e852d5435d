#include "worker/train/tiny_llava_trainer.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"
#include "worker/model/checkpoint.h"
#include "worker/model/config.h"
#include "worker/model/image.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/safetensors.h"
#include "worker/model/samples.h"
#include "worker/train/sentencepiece_trainer.h"

namespace prunesvc::train {
namespace {

namespace fs = std::filesystem;

constexpr char kVision[] = "vision_tower.vision_model.";
constexpr char kText[] = "language_model.model.";
constexpr char kLmHead[] = "language_model.lm_head.weight";
constexpr char kAux[] = "aux.";
constexpr int kNoColour = int(data::kPalette.size());          // 6
constexpr int kNoShape = int(data::kShapeNames.size());        // 4
constexpr int kAuxOutputs = kNoColour + 1 + kNoShape + 1 + 2;  // colour, shape logits; x, y

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Copies the tokenizer's four files from `from_dir` into the existing `to_dir` (a file already
// there as the same file is left alone).
absl::Status CopyTokenizerFiles(const std::string& from_dir, const std::string& to_dir) {
  for (const char* f : {"tokenizer.model", "added_tokens.json", "tokenizer_config.json",
                        "special_tokens_map.json"}) {
    const fs::path from = fs::path(from_dir) / f, to = fs::path(to_dir) / f;
    std::error_code ec;
    if (fs::exists(to) && fs::equivalent(from, to)) continue;
    fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot copy ", from.string(), " to ", to.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

template <typename F>
auto Guarded(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

int RoundUp(int v, int m) { return (v + m - 1) / m * m; }

at::Tensor QuickGelu(const at::Tensor& x) { return x * at::sigmoid(1.702 * x); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tokenizer

absl::Status TrainTokenizer(const std::vector<std::string>& corpus, int vocab_size,
                            const std::string& dir) {
  // The tokenizer encodes each text segment between `<image>` tokens on its own (with its own
  // dummy prefix), so those segments are the sentences sentencepiece should see.
  std::vector<std::string> sentences;
  for (const std::string& text : corpus) {
    size_t begin = 0;
    for (;;) {
      const size_t at = text.find("<image>", begin);
      const std::string seg = text.substr(begin, at == std::string::npos ? at : at - begin);
      if (!seg.empty()) sentences.push_back(seg);
      if (at == std::string::npos) break;
      begin = at + std::string_view("<image>").size();
    }
  }
  // Each letter as a sentence of its own: with sentencepiece's dummy prefix that is "▁A", the
  // piece an answer " A" after "ASSISTANT:" needs. BPE merges by frequency, so 1000 copies make
  // "▁A" … "▁Z" among the first merges (checked below).
  for (int rep = 0; rep < 1000; ++rep) {
    for (char c = 'A'; c <= 'Z'; ++c) sentences.push_back(std::string(1, c));
  }
  const std::map<std::string, std::string> flags = {
      {"model_type", "bpe"},  // as LLaMA's; unigram kept letters, not words
      {"vocab_size", std::to_string(vocab_size)},
      // docs/llava.md "Tokenizer": the defaults (nmt_nfkc + whitespace folding) would drop '\n'.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      // The corpus is templated: if it cannot support vocab_size pieces, take fewer.
      {"hard_vocab_limit", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", "16384"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", "1"},
  };
  std::string model_bytes, error;
  int pieces = 0;
  if (!TrainSentencePiece(sentences, flags, &model_bytes, &pieces, &error)) {
    return absl::InternalError(absl::StrCat("sentencepiece training failed: ", error));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  RETURN_IF_ERROR(WriteText(dir + "/tokenizer.model", model_bytes));

  const int image_id = pieces, pad_id = pieces + 1;
  nlohmann::json added = {{"<image>", image_id}, {"<pad>", pad_id}};
  RETURN_IF_ERROR(WriteText(dir + "/added_tokens.json", added.dump(2) + "\n"));
  auto entry = [](const std::string& content) {
    return nlohmann::json{{"content", content}, {"lstrip", false},      {"normalized", false},
                          {"rstrip", false},    {"single_word", false}, {"special", true}};
  };
  nlohmann::json decoder = {{"0", entry("<unk>")},
                            {"1", entry("<s>")},
                            {"2", entry("</s>")},
                            {std::to_string(image_id), entry("<image>")},
                            {std::to_string(pad_id), entry("<pad>")}};
  nlohmann::json tok_config = {{"add_bos_token", true},
                               {"add_eos_token", false},
                               {"added_tokens_decoder", decoder},
                               {"bos_token", "<s>"},
                               {"eos_token", "</s>"},
                               {"unk_token", "<unk>"},
                               {"pad_token", "<pad>"},
                               {"clean_up_tokenization_spaces", false},
                               // The model is trained and evaluated with the legacy
                               // segmentation (llava-eval, llava-hf's tokenizer.json); with
                               // "legacy": false HF's slow LlamaTokenizer, used when there is no
                               // tokenizer.json, splits "<image>\n" differently (issue 18).
                               {"legacy", true},
                               {"model_max_length", 512},
                               {"padding_side", "left"},
                               {"processor_class", "LlavaProcessor"},
                               {"sp_model_kwargs", nlohmann::json::object()},
                               {"tokenizer_class", "LlamaTokenizer"}};
  RETURN_IF_ERROR(WriteText(dir + "/tokenizer_config.json", tok_config.dump(2) + "\n"));
  nlohmann::json special = {
      {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}, {"pad_token", "<pad>"}};
  RETURN_IF_ERROR(WriteText(dir + "/special_tokens_map.json", special.dump(2) + "\n"));

  ASSIGN_OR_RETURN(auto tok, model::Tokenizer::Load(dir));
  auto letters = tok->LetterTokenIds(26);
  if (!letters.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the trained tokenizer does not keep every option letter as one token "
                     "(multiple-choice scoring needs that): ",
                     letters.status().message()));
  }
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string& text = corpus[i];
    const size_t cut = text.rfind("ASSISTANT:");
    if (cut == std::string::npos) continue;
    const size_t split = cut + std::string_view("ASSISTANT:").size();
    RETURN_IF_ERROR(tok->EncodeForScoring(text.substr(0, split), text.substr(split),
                                          absl::StrCat("corpus text ", i))
                        .status());
  }
  return absl::OkStatus();
}

nlohmann::json MakeConfigJson(const TinyLlavaSizes& s, int pieces) {
  const int image_id = pieces, pad_id = pieces + 1;
  const int vocab = RoundUp(pieces + 2, 64);  // as llava-hf pads 32002 → 32064
  const int patches = (s.image_size / s.patch_size) * (s.image_size / s.patch_size);
  nlohmann::json vision = {
      {"model_type", "clip_vision_model"},    {"hidden_size", s.vision_width},
      {"intermediate_size", s.vision_mlp},    {"num_attention_heads", s.vision_heads},
      {"num_hidden_layers", s.vision_layers}, {"patch_size", s.patch_size},
      {"image_size", s.image_size},           {"num_channels", 3},
      {"hidden_act", "quick_gelu"},           {"layer_norm_eps", 1e-5},
      {"projection_dim", s.vision_width}};
  nlohmann::json text = {{"model_type", "llama"},
                         {"hidden_size", s.text_width},
                         {"intermediate_size", s.text_mlp},
                         {"num_attention_heads", s.text_heads},
                         {"num_key_value_heads", s.text_kv_heads},
                         {"num_hidden_layers", s.text_layers},
                         {"head_dim", s.text_width / s.text_heads},
                         {"vocab_size", vocab},
                         {"max_position_embeddings", 512},
                         {"rms_norm_eps", 1e-5},
                         {"rope_theta", 10000.0},
                         {"hidden_act", "silu"},
                         {"attention_bias", false},
                         {"mlp_bias", false},
                         {"bos_token_id", 1},
                         {"eos_token_id", 2},
                         {"pad_token_id", pad_id},
                         {"tie_word_embeddings", false},
                         {"torch_dtype", "float32"}};
  return {{"architectures", {"LlavaForConditionalGeneration"}},
          {"model_type", "llava"},
          {"ignore_index", -100},
          {"image_token_index", image_id},
          {"image_seq_length", patches},
          {"pad_token_id", pad_id},
          {"projector_hidden_act", "gelu"},
          {"multimodal_projector_bias", true},
          {"vision_feature_layer", -2},
          {"vision_feature_select_strategy", "default"},
          {"tie_word_embeddings", false},
          {"torch_dtype", "float32"},
          {"vision_config", vision},
          {"text_config", text}};
}

nlohmann::json MakePreprocessorJson(const TinyLlavaSizes& s) {
  return {{"image_processor_type", "CLIPImageProcessor"},
          {"processor_class", "LlavaProcessor"},
          {"do_resize", true},
          {"size", {{"shortest_edge", s.image_size}}},
          {"resample", 3},
          {"do_center_crop", true},
          {"crop_size", {{"height", s.image_size}, {"width", s.image_size}}},
          {"do_rescale", true},
          {"rescale_factor", 1.0 / 255},
          {"do_normalize", true},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}},
          {"do_convert_rgb", true}};
}

nlohmann::json EvalResult::ToJson() const {
  nlohmann::json types = nlohmann::json::object();
  for (const auto& [name, t] : per_type) {
    types[name] = {{"accuracy", t.accuracy()}, {"correct", t.correct}, {"num_samples", t.total}};
  }
  return {{"num_samples", num_samples},
          {"accuracy", accuracy},
          {"mean_loss", mean_loss},
          {"per_type", types}};
}

// ---------------------------------------------------------------------------------------------
// Trainer

absl::StatusOr<std::unique_ptr<TinyLlavaTrainer>> TinyLlavaTrainer::Create(
    const TrainOptions& options, const std::string& tokenizer_dir) {
  if (options.batch <= 0 || options.vision_batch <= 0 || options.steps < 0 ||
      options.vision_steps < 0 || options.lr <= 0 || options.clip_norm <= 0) {
    return absl::InvalidArgumentError("train options: batch sizes and lr must be positive");
  }
  auto t = std::unique_ptr<TinyLlavaTrainer>(new TinyLlavaTrainer(options));
  RETURN_IF_ERROR(t->Init(tokenizer_dir));
  return t;
}

absl::Status TinyLlavaTrainer::Init(const std::string& tokenizer_dir) {
  const TinyLlavaSizes& s = options_.sizes;
  if (options_.threads > 0) at::set_num_threads(options_.threads);
  data::ShapesOptions so;
  so.image_size = s.image_size;
  so.split = data::Split::kTrain;
  ASSIGN_OR_RETURN(shapes_train_, data::ResolveOptions(so));
  so.split = data::Split::kEval;
  ASSIGN_OR_RETURN(shapes_eval_, data::ResolveOptions(so));
  so.split = options_.steer_split;
  ASSIGN_OR_RETURN(shapes_steer_, data::ResolveOptions(so));
  so.split = data::Split::kTrain;
  so.min_objects = 2;
  so.max_objects = 2;
  ASSIGN_OR_RETURN(shapes_two_, data::ResolveOptions(so));
  tokenizer_dir_ = tokenizer_dir;

  // Tokenizer: trained from the training stream's first `tokenizer_corpus` texts, or reused when
  // resuming (so ids never change under a checkpoint).
  const bool have_tokenizer = fs::exists(tokenizer_dir + "/tokenizer.model") &&
                              fs::exists(tokenizer_dir + "/added_tokens.json");
  if (!options_.init_from.empty() && !(options_.resume && have_tokenizer)) {
    // Fine-tuning keeps the ids the weights were trained with.
    std::error_code ec;
    fs::create_directories(tokenizer_dir, ec);
    if (absl::Status st = CopyTokenizerFiles(options_.init_from, tokenizer_dir); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--init_from: ", st.message()));
    }
  } else if (!(options_.resume && have_tokenizer)) {
    std::vector<std::string> corpus;
    for (int i = 0; i < options_.tokenizer_corpus; ++i) {
      ASSIGN_OR_RETURN(auto sample, data::GenerateSample(shapes_train_, options_.data_seed, i));
      corpus.push_back(model::MultipleChoicePrompt(sample.question, sample.options) +
                       model::AnswerText(std::string(1, model::OptionLetter(sample.answer_index))));
    }
    RETURN_IF_ERROR(TrainTokenizer(corpus, s.sp_vocab, tokenizer_dir));
  }
  ASSIGN_OR_RETURN(tokenizer_, model::Tokenizer::Load(tokenizer_dir));
  ASSIGN_OR_RETURN(letter_ids_, tokenizer_->LetterTokenIds(26));

  const nlohmann::json config_json = MakeConfigJson(s, tokenizer_->sentencepiece_size());
  ASSIGN_OR_RETURN(auto config, model::ParseLlavaConfig(config_json.dump(), "config.json"));
  ASSIGN_OR_RETURN(preprocess_, model::ParsePreprocessorConfig(MakePreprocessorJson(s).dump(),
                                                               "preprocessor_config.json"));

  return Guarded("init", [&]() -> absl::Status {
    at::manual_seed(options_.init_seed);
    std::map<std::string, at::Tensor> w;
    auto normal = [](std::vector<int64_t> shape, double std) {
      return at::randn(shape, at::kFloat) * std;
    };
    // Fan-in scaling (unit-scale outputs; residual branches × 1/√(2L)), or — for the text side
    // when text_init_std > 0 — HF LLaMA's plain N(0, initializer_range) for every matrix.
    bool text_side = false;
    const double text_std = options_.text_init_std;
    auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias,
                      double scale = 1.0) {
      w[name + ".weight"] =
          normal({out, in}, text_side && text_std > 0 ? text_std : scale / std::sqrt(double(in)));
      if (bias) w[name + ".bias"] = at::zeros({out}, at::kFloat);
    };
    const int64_t D = s.vision_width, Mv = s.vision_mlp, P = config.vision.num_patches();
    const std::string vp = kVision;
    w[vp + "embeddings.patch_embedding.weight"] = normal(
        {D, 3, s.patch_size, s.patch_size}, 1.0 / std::sqrt(3.0 * s.patch_size * s.patch_size));
    w[vp + "embeddings.class_embedding"] = normal({D}, 0.02);
    w[vp + "embeddings.position_embedding.weight"] = normal({P + 1, D}, 0.02);
    w[vp + "pre_layrnorm.weight"] = at::ones({D});
    w[vp + "pre_layrnorm.bias"] = at::zeros({D});
    const double vres = 1.0 / std::sqrt(2.0 * s.vision_layers);
    for (int l = 0; l < s.vision_layers; ++l) {
      const std::string p = absl::StrCat(vp, "encoder.layers.", l, ".");
      linear(p + "self_attn.q_proj", D, D, true);
      linear(p + "self_attn.k_proj", D, D, true);
      linear(p + "self_attn.v_proj", D, D, true);
      linear(p + "self_attn.out_proj", D, D, true, vres);
      linear(p + "mlp.fc1", Mv, D, true);
      linear(p + "mlp.fc2", D, Mv, true, vres);
      for (const char* n : {"layer_norm1", "layer_norm2"}) {
        w[p + n + ".weight"] = at::ones({D});
        w[p + n + ".bias"] = at::zeros({D});
      }
    }
    w[vp + "post_layernorm.weight"] = at::ones({D});
    w[vp + "post_layernorm.bias"] = at::zeros({D});
    const int64_t H = s.text_width, I = s.text_mlp, hd = H / s.text_heads;
    text_side = true;
    linear("multi_modal_projector.linear_1", H, D, true);
    linear("multi_modal_projector.linear_2", H, H, true);
    const int64_t V = config.text.vocab_size;
    const std::string tp = kText;
    // Unit-scale token embeddings, like the projected image rows and the sub-layer outputs (the
    // linears are initialised for unit-scale outputs): with LLaMA's 0.02 the first attention
    // output swamps token identity in the residual stream.
    w[tp + "embed_tokens.weight"] = normal({V, H}, text_std > 0 ? text_std : 1.0);
    const double tres = 1.0 / std::sqrt(2.0 * s.text_layers);
    for (int l = 0; l < s.text_layers; ++l) {
      const std::string p = absl::StrCat(tp, "layers.", l, ".");
      linear(p + "self_attn.q_proj", s.text_heads * hd, H, false);
      linear(p + "self_attn.k_proj", s.text_kv_heads * hd, H, false);
      linear(p + "self_attn.v_proj", s.text_kv_heads * hd, H, false);
      linear(p + "self_attn.o_proj", H, s.text_heads * hd, false, tres);
      linear(p + "mlp.gate_proj", I, H, false);
      linear(p + "mlp.up_proj", I, H, false);
      linear(p + "mlp.down_proj", H, I, false, tres);
      w[p + "input_layernorm.weight"] = at::ones({H});
      w[p + "post_attention_layernorm.weight"] = at::ones({H});
    }
    w[tp + "norm.weight"] = at::ones({H});
    w[kLmHead] = normal({V, H}, text_std > 0 ? text_std : 1.0 / std::sqrt(double(H)));
    // Aux head (phase 1), never written to the model directory.
    w[std::string(kAux) + "weight"] = normal({kAuxOutputs, D}, 1.0 / std::sqrt(double(D)));
    w[std::string(kAux) + "bias"] = at::zeros({kAuxOutputs});

    std::map<std::string, at::Tensor> model_tensors;
    for (auto& [name, t] : w) {
      if (name.rfind(kAux, 0) == 0) continue;
      model_tensors[name] = t;
    }
    ASSIGN_OR_RETURN(model_, model::LlavaModel::CreateFromTensors(config, model_tensors));
    params_ = model_->NamedTensors();
    for (auto& [name, t] : w) {
      if (name.rfind(kAux, 0) == 0) params_[name] = t;
      // Tensors the model accepted but does not keep: the layers after the feature layer.
      else if (!params_.count(name))
        unused_[name] = t;
    }
    for (auto& [name, t] : params_) {
      t.requires_grad_(true);
      exp_avg_[name] = at::zeros_like(t);
      exp_avg_sq_[name] = at::zeros_like(t);
      param_steps_[name] = 0;
    }
    if (!options_.init_from.empty()) RETURN_IF_ERROR(LoadInitWeights(options_.init_from));
    if (options_.resume && !options_.checkpoint_dir.empty() &&
        fs::exists(options_.checkpoint_dir + "/trainer_state.json")) {
      RETURN_IF_ERROR(LoadCheckpoint(options_.checkpoint_dir));
    }
    return absl::OkStatus();
  });
}

double TinyLlavaTrainer::LearningRate(int64_t step) const {
  auto schedule = [&](int64_t s, int64_t total, int64_t warmup, double peak) {
    if (s < warmup) return peak * double(s + 1) / double(warmup);
    const double progress =
        total > warmup ? std::min(1.0, double(s - warmup) / double(total - warmup)) : 1.0;
    const double floor = peak * options_.min_lr_fraction;
    return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
  };
  if (step < options_.vision_steps) {
    return schedule(step, options_.vision_steps, std::min(100, options_.vision_steps / 10),
                    options_.vision_lr);
  }
  return schedule(step - options_.vision_steps, options_.steps, options_.warmup, options_.lr);
}

absl::StatusOr<TrainExample> TinyLlavaTrainer::MakeExample(const data::ShapesSample& s,
                                                           bool open_answer) const {
  TrainExample ex;
  const std::string prompt = open_answer ? model::OpenAnswerPrompt(s.question)
                                         : model::MultipleChoicePrompt(s.question, s.options);
  const std::string answer =
      open_answer ? s.options[s.answer_index] : std::string(1, model::OptionLetter(s.answer_index));
  ASSIGN_OR_RETURN(auto enc, tokenizer_->EncodeForScoring(prompt, model::AnswerText(answer), s.id));
  ex.token_ids = std::move(enc.ids);
  ex.answer_begin = enc.answer_begin;
  ex.answer_end = enc.answer_end;
  ASSIGN_OR_RETURN(auto pixels, model::PreprocessImage(s.image, preprocess_));
  ex.pixels = std::move(pixels.data);
  ex.type = std::string(data::kQuestionTypeNames[int(s.type)]);
  ex.correct_option = s.answer_index;
  const int patch = options_.sizes.patch_size, grid = options_.sizes.image_size / patch;
  ex.patch_colour.assign(grid * grid, kNoColour);
  ex.patch_shape.assign(grid * grid, kNoShape);
  ex.patch_xy.assign(grid * grid * 2, 0.0f);
  const double span = options_.sizes.image_size - 1;
  for (const data::SceneObject& o : s.scene.objects) {
    const int idx = std::min(o.y / patch, grid - 1) * grid + std::min(o.x / patch, grid - 1);
    ex.patch_colour[idx] = o.colour;
    ex.patch_shape[idx] = int(o.shape);
    ex.patch_xy[idx * 2] = float(2.0 * o.x / span - 1.0);
    ex.patch_xy[idx * 2 + 1] = float(2.0 * o.y / span - 1.0);
  }
  return ex;
}

absl::StatusOr<std::vector<TrainExample>> TinyLlavaTrainer::Batch(int64_t step, int batch_size) {
  int64_t base;
  if (step < options_.vision_steps) {
    base = step * options_.vision_batch;
  } else {
    base = int64_t(options_.vision_steps) * options_.vision_batch +
           (step - options_.vision_steps) * options_.batch;
  }
  std::vector<TrainExample> out;
  out.reserve(batch_size);
  base += options_.data_offset;
  for (int i = 0; i < batch_size; ++i) {
    int64_t index = base + i;
    if (options_.train_pool > 0) index %= options_.train_pool;
    // Type boost: the generator assigns types round-robin by index (colour, shape, count,
    // position), so a boosted sample is taken from a disjoint index range (offset 2^40) at an
    // index of the wanted type.
    if (step >= options_.vision_steps && options_.train_pool == 0) {
      const double u =
          double(data::Mix64(uint64_t(index) ^ 0xd1b54a32d192ed03ull) % 100000) / 100000.0;
      const int64_t boosted = (int64_t(1) << 40) + index;
      if (u < options_.position_boost) {
        index = boosted * 4 + int(data::QuestionType::kPosition);
      } else if (u < options_.position_boost + options_.count_boost) {
        index = boosted * 4 + int(data::QuestionType::kCount);
      }
    }
    // Two-object scenes for some position questions: no third object to rule out, so the
    // relation can be learned before the conjunctive (colour and shape) lookup is.
    const bool two = index % 4 == int(data::QuestionType::kPosition) &&
                     step >= options_.vision_steps && options_.position_two_objects > 0 &&
                     double(data::Mix64(uint64_t(index) ^ 0x94d049bb133111ebull) % 100000) <
                         options_.position_two_objects * 100000;
    ASSIGN_OR_RETURN(auto sample, data::GenerateSample(two ? shapes_two_ : shapes_train_,
                                                       options_.data_seed, index));
    // Pointer curriculum: some early samples ask for the option holding a given answer text,
    // which teaches "find the matching option line, answer with its letter" without vision.
    const double pointer = PointerFraction(step);
    const bool is_pointer =
        pointer > 0 &&
        double(data::Mix64(uint64_t(index) ^ 0x9e3779b97f4a7c15ull) % 100000) < pointer * 100000;
    if (is_pointer) {
      sample.question = "Which option is " + sample.options[sample.answer_index] + "?";
    }
    // Open-answer auxiliary samples: the same question answered with the option text, which
    // supervises "image + question → attribute" directly, apart from the letter pointer.
    const bool is_open = !is_pointer && step >= options_.vision_steps &&
                         options_.open_fraction > 0 &&
                         double(data::Mix64(uint64_t(index) ^ 0x7f4a7c159e3779b9ull) % 100000) <
                             options_.open_fraction * 100000;
    if (is_open && options_.where_fraction > 0 &&
        double(data::Mix64(uint64_t(index) ^ 0x3c6ef372fe94f82bull) % 100000) <
            options_.where_fraction * 100000) {
      // "Where is the <colour> <shape>?" → "above|below left|right" (the object's centre
      // against the canvas centre): one object lookup plus reading its coordinates, the
      // stepping stone to relative-position questions. Only objects whose (colour, shape) pair
      // is unique in the scene are named.
      const auto& objects = sample.scene.objects;
      std::vector<int> unique;
      for (size_t a = 0; a < objects.size(); ++a) {
        int same = 0;
        for (const auto& b : objects) {
          same += b.colour == objects[a].colour && b.shape == objects[a].shape ? 1 : 0;
        }
        if (same == 1) unique.push_back(int(a));
      }
      if (!unique.empty()) {
        const auto& o = objects[unique[data::Mix64(uint64_t(index) + 17) % unique.size()]];
        const int half = sample.scene.size / 2;
        sample.question = "Where is the " + std::string(data::kPalette[o.colour].name) + " " +
                          std::string(data::kShapeNames[int(o.shape)]) + "?";
        sample.options = {
            absl::StrCat(o.y < half ? "above" : "below", " ", o.x < half ? "left" : "right")};
        sample.answer_index = 0;
      }
    }
    const double binding = options_.binding_fraction * CurriculumDecay(step);
    const bool is_binding =
        !is_open && binding > 0 &&
        double(data::Mix64(uint64_t(index) ^ 0x2545f4914f6cdd1dull) % 100000) < binding * 100000;
    if (is_binding) {
      for (size_t k = 0; k < sample.options.size(); ++k) {
        sample.options[k] += std::string(" ") + model::OptionLetter(int(k));
      }
    }
    ASSIGN_OR_RETURN(auto ex, MakeExample(sample, is_open));
    if (is_binding) {
      // The repeated letters are the only "▁A".."▁Z" tokens before the answer.
      const int n = int(sample.options.size());
      for (int p = 1; p < ex.answer_begin; ++p) {
        if (std::find(letter_ids_.begin(), letter_ids_.begin() + n, ex.token_ids[p]) !=
            letter_ids_.begin() + n) {
          ex.extra_targets.push_back(p);
        }
      }
      if (ex.extra_targets.size() != size_t(n)) {
        return absl::InternalError(absl::StrCat("binding sample ", sample.id, ": found ",
                                                ex.extra_targets.size(), " repeated letters, not ",
                                                n));
      }
      ex.type = "binding";
    }
    if (is_pointer) ex.type = "pointer";
    if (is_open) ex.type = "open";
    out.push_back(std::move(ex));
  }
  return out;
}

double TinyLlavaTrainer::CurriculumDecay(int64_t step) const {
  const int64_t s = step - options_.vision_steps;
  if (s < 0 || s >= options_.pointer_steps || options_.pointer_steps <= 0) return 0;
  return 1.0 - double(s) / double(options_.pointer_steps);
}

double TinyLlavaTrainer::PointerFraction(int64_t step) const {
  return options_.pointer_fraction * CurriculumDecay(step);
}

namespace {
at::Tensor StackExamplePixels(const std::vector<TrainExample>& batch, int size) {
  const int64_t n = batch.size(), per = 3 * int64_t(size) * size;
  at::Tensor px = at::empty({n, 3, size, size}, at::kFloat);
  float* dst = px.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) std::copy_n(batch[i].pixels.data(), per, dst + i * per);
  return px;
}
}  // namespace

at::Tensor TinyLlavaTrainer::TrainableVisionFeatures(const at::Tensor& pixels) const {
  const TinyLlavaSizes& s = options_.sizes;
  const int64_t D = s.vision_width, nh = s.vision_heads, hd = D / nh;
  const std::string vp = kVision;
  auto W = [&](const std::string& name) -> const at::Tensor& { return params_.at(vp + name); };
  auto lin = [&](const at::Tensor& x, const std::string& name) {
    return at::linear(x, W(name + ".weight"), W(name + ".bias"));
  };
  at::Tensor x = at::conv2d(pixels, W("embeddings.patch_embedding.weight"), {}, s.patch_size);
  x = x.flatten(2).transpose(1, 2);
  const int64_t N = x.size(0);
  x = at::cat({W("embeddings.class_embedding").view({1, 1, D}).expand({N, 1, D}), x}, 1);
  x = x + W("embeddings.position_embedding.weight").unsqueeze(0);
  x = at::layer_norm(x, {D}, W("pre_layrnorm.weight"), W("pre_layrnorm.bias"), 1e-5);
  const double scale = 1.0 / std::sqrt(double(hd));
  const int run = s.vision_layers - 1;  // feature layer −2
  for (int l = 0; l < run; ++l) {
    const std::string p = absl::StrCat("encoder.layers.", l, ".");
    at::Tensor h =
        at::layer_norm(x, {D}, W(p + "layer_norm1.weight"), W(p + "layer_norm1.bias"), 1e-5);
    const int64_t S = h.size(1);
    auto split = [&](const at::Tensor& t) { return t.view({N, S, nh, hd}).transpose(1, 2); };
    at::Tensor q = split(lin(h, p + "self_attn.q_proj"));
    at::Tensor k = split(lin(h, p + "self_attn.k_proj"));
    at::Tensor v = split(lin(h, p + "self_attn.v_proj"));
    at::Tensor probs = at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1);
    at::Tensor a = at::matmul(probs, v).transpose(1, 2).reshape({N, S, D});
    x = x + lin(a, p + "self_attn.out_proj");
    h = at::layer_norm(x, {D}, W(p + "layer_norm2.weight"), W(p + "layer_norm2.bias"), 1e-5);
    x = x + lin(QuickGelu(lin(h, p + "mlp.fc1")), p + "mlp.fc2");
  }
  return x.narrow(1, 1, x.size(1) - 1);
}

at::Tensor TinyLlavaTrainer::AuxLoss(const at::Tensor& features,
                                     const std::vector<TrainExample>& batch) const {
  const int64_t N = features.size(0), P = features.size(1);
  at::Tensor out =
      at::linear(features.reshape({N * P, -1}), params_.at("aux.weight"), params_.at("aux.bias"));
  std::vector<int64_t> colour, shape;
  std::vector<float> xy;
  for (const TrainExample& ex : batch) {
    colour.insert(colour.end(), ex.patch_colour.begin(), ex.patch_colour.end());
    shape.insert(shape.end(), ex.patch_shape.begin(), ex.patch_shape.end());
    xy.insert(xy.end(), ex.patch_xy.begin(), ex.patch_xy.end());
  }
  at::Tensor c = at::tensor(colour, at::kLong), sh = at::tensor(shape, at::kLong);
  at::Tensor t_xy = at::tensor(xy, at::kFloat).view({N * P, 2});
  auto ce = [](const at::Tensor& logits, const at::Tensor& target) {
    return -at::log_softmax(logits, -1).gather(1, target.unsqueeze(1)).mean();
  };
  at::Tensor loss =
      ce(out.narrow(1, 0, kNoColour + 1), c) + ce(out.narrow(1, kNoColour + 1, kNoShape + 1), sh);
  at::Tensor has = (c != kNoColour).to(at::kFloat).unsqueeze(1);
  at::Tensor diff = (out.narrow(1, kNoColour + kNoShape + 2, 2) - t_xy) * has;
  loss = loss + 4.0 * diff.pow(2).sum() / at::clamp_min(has.sum() * 2, 1.0);
  return loss;
}

at::Tensor TinyLlavaTrainer::AnswerLossTensor(const at::Tensor& image_features,
                                              const std::vector<TrainExample>& batch,
                                              bool grad) const {
  std::vector<model::SequenceInput> inputs(batch.size());
  std::vector<int64_t> targets;
  for (size_t i = 0; i < batch.size(); ++i) {
    inputs[i].token_ids = batch[i].token_ids;
    inputs[i].image_features = image_features.narrow(0, int64_t(i), 1);
    for (int p : batch[i].extra_targets) {
      inputs[i].logit_positions.push_back(p - 1);
      targets.push_back(batch[i].token_ids[p]);
    }
    for (int p = batch[i].answer_begin; p < batch[i].answer_end; ++p) {
      inputs[i].logit_positions.push_back(p - 1);
      targets.push_back(batch[i].token_ids[p]);
    }
  }
  model::ForwardOptions fo;
  fo.enable_grad = grad;
  auto logits = model_->Forward(inputs, fo);
  if (!logits.ok()) throw std::runtime_error(std::string(logits.status().message()));
  at::Tensor all = at::cat(*logits, 0);
  at::Tensor t = at::tensor(targets, at::kLong);
  return -at::log_softmax(all, -1).gather(1, t.unsqueeze(1)).mean();
}

void TinyLlavaTrainer::AdamWUpdate(double lr, bool vision_phase) {
  (void)vision_phase;
  constexpr double b1 = 0.9, b2 = 0.95, eps = 1e-8;
  at::NoGradGuard no_grad;
  for (auto& [name, p] : params_) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    const int64_t t = ++param_steps_[name];
    at::Tensor& m = exp_avg_[name];
    at::Tensor& v = exp_avg_sq_[name];
    m.mul_(b1).add_(g, 1 - b1);
    v.mul_(b2).addcmul_(g, g, 1 - b2);
    const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
    // Decoupled weight decay on matrices only (not norms, biases or the embedding tables).
    const bool decay = p.dim() >= 2 && name.find("embed") == std::string::npos &&
                       name.find("embedding") == std::string::npos;
    if (decay && options_.weight_decay > 0) p.mul_(1 - lr * options_.weight_decay);
    at::Tensor denom = (v / bc2).sqrt_().add_(eps);
    p.addcdiv_(m, denom, -lr / bc1);
  }
}

absl::StatusOr<double> TinyLlavaTrainer::Step() {
  const bool vision = step_ < options_.vision_steps;
  const int bs = vision ? options_.vision_batch : options_.batch;
  ASSIGN_OR_RETURN(auto batch, Batch(step_, bs));
  const double lr = LearningRate(step_);
  return Guarded("training step", [&]() -> absl::StatusOr<double> {
    for (auto& [name, p] : params_) {
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
    at::Tensor pixels = StackExamplePixels(batch, options_.sizes.image_size);
    at::Tensor feats = TrainableVisionFeatures(pixels);
    at::Tensor aux = AuxLoss(feats, batch);
    at::Tensor loss, reported;
    if (vision) {
      loss = aux;
      reported = aux;
    } else {
      ASSIGN_OR_RETURN(at::Tensor image_features, model_->Project(feats));
      at::Tensor answer = AnswerLossTensor(image_features, batch, /*grad=*/true);
      loss = options_.aux_weight > 0 ? answer + options_.aux_weight * aux : answer;
      reported = answer;
    }
    loss.backward();
    // Global gradient-norm clipping.
    double sq = 0;
    for (auto& [name, p] : params_) {
      if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
    }
    const double norm = std::sqrt(sq);
    if (!std::isfinite(norm)) {
      return absl::InternalError(absl::StrCat("non-finite gradient norm at step ", step_));
    }
    if (norm > options_.clip_norm) {
      const double scale = options_.clip_norm / (norm + 1e-6);
      for (auto& [name, p] : params_) {
        if (p.grad().defined()) p.mutable_grad().mul_(scale);
      }
    }
    AdamWUpdate(lr, vision);
    ++step_;
    return reported.item<double>();
  });
}

absl::StatusOr<double> TinyLlavaTrainer::AnswerLoss(const std::vector<TrainExample>& examples) {
  return Guarded("answer loss", [&]() -> absl::StatusOr<double> {
    at::NoGradGuard no_grad;
    at::Tensor pixels = StackExamplePixels(examples, options_.sizes.image_size);
    ASSIGN_OR_RETURN(at::Tensor feats, model_->ComputeImageFeatures(pixels));
    return AnswerLossTensor(feats, examples, false).item<double>();
  });
}

absl::StatusOr<EvalResult> TinyLlavaTrainer::Evaluate(int count) {
  if (int(eval_cache_.size()) < count) {
    eval_cache_.clear();
    eval_types_.clear();
    for (int i = 0; i < count; ++i) {
      ASSIGN_OR_RETURN(
          auto sample,
          data::GenerateSample(shapes_steer_,
                               options_.steer_seed ? options_.steer_seed : options_.eval_seed, i));
      ASSIGN_OR_RETURN(auto ex, MakeExample(sample));
      model::ScoringSample sc;
      sc.token_ids = ex.token_ids;
      sc.answer_begin = ex.answer_begin;
      sc.answer_end = ex.answer_end;
      sc.option_token_ids.assign(letter_ids_.begin(), letter_ids_.begin() + sample.options.size());
      sc.correct_option = ex.correct_option;
      // Keep the pixels in the (otherwise unused until scoring) features slot; replaced below.
      sc.image_features =
          at::from_blob(ex.pixels.data(),
                        {1, 3, options_.sizes.image_size, options_.sizes.image_size}, at::kFloat)
              .clone();
      eval_cache_.push_back(std::move(sc));
      eval_types_.push_back(ex.type);
    }
  }
  return Guarded("evaluation", [&]() -> absl::StatusOr<EvalResult> {
    at::NoGradGuard no_grad;
    std::vector<model::ScoringSample> samples(eval_cache_.begin(), eval_cache_.begin() + count);
    std::vector<at::Tensor> px;
    for (const auto& s : samples) px.push_back(s.image_features);
    ASSIGN_OR_RETURN(at::Tensor feats, model_->ComputeImageFeatures(at::cat(px, 0)));
    for (int i = 0; i < count; ++i) samples[i].image_features = feats.narrow(0, i, 1);
    model::ScoreOptions so;
    so.batch_size = 64;
    ASSIGN_OR_RETURN(auto scores, model::ScoreSamples(*model_, samples, so));
    const model::ScoreSummary sum = model::Summarize(scores);
    EvalResult r;
    r.num_samples = sum.num_samples;
    r.accuracy = sum.accuracy;
    r.mean_loss = sum.mean_loss;
    for (int i = 0; i < count; ++i) {
      TypeAccuracy& t = r.per_type[eval_types_[i]];
      ++t.total;
      t.correct += scores[i].correct ? 1 : 0;
    }
    return r;
  });
}

absl::StatusOr<std::pair<FlopsBreakdown, double>> TinyLlavaTrainer::DenseFlops(int count) {
  std::vector<model::ScoringSample> samples;
  for (int i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(auto sample, data::GenerateSample(shapes_eval_, options_.eval_seed, i));
    ASSIGN_OR_RETURN(auto ex, MakeExample(sample));
    model::ScoringSample sc;
    sc.token_ids = ex.token_ids;
    sc.answer_begin = ex.answer_begin;
    sc.answer_end = ex.answer_end;
    samples.push_back(std::move(sc));
  }
  const TokenStats stats = model::ComputeTokenStats(*model_, samples);
  ASSIGN_OR_RETURN(FlopsBreakdown dense, ComputeDenseFlops(model_->FlopsDims(), stats));
  return std::make_pair(dense, UnprunableFraction(dense, /*prune_vision=*/false));
}

absl::Status TinyLlavaTrainer::SaveModel(const std::string& dir,
                                         const nlohmann::json& training_info) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  RETURN_IF_ERROR(CopyTokenizerFiles(tokenizer_dir_, dir));
  RETURN_IF_ERROR(
      WriteText(dir + "/config.json",
                MakeConfigJson(options_.sizes, tokenizer_->sentencepiece_size()).dump(2) + "\n"));
  RETURN_IF_ERROR(WriteText(dir + "/preprocessor_config.json",
                            MakePreprocessorJson(options_.sizes).dump(2) + "\n"));
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, t] : params_) {
    if (name.rfind(kAux, 0) == 0) continue;
    tensors[name] = t.detach();
  }
  for (const auto& [name, t] : unused_) tensors[name] = t.detach();
  RETURN_IF_ERROR(
      model::SaveCheckpoint(dir, tensors, model::DType::kF32, 0, model::WeightLayout::kLegacy));
  return WriteText(dir + "/training.json", training_info.dump(2) + "\n");
}

absl::Status TinyLlavaTrainer::SaveCheckpoint(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::vector<at::Tensor> keep;
  std::vector<model::WriteTensor> out;
  auto add = [&](const std::string& name, const at::Tensor& t) {
    at::Tensor c = t.detach().contiguous().to(at::kFloat);
    keep.push_back(c);
    model::WriteTensor w;
    w.name = name;
    w.dtype = model::DType::kF32;
    w.shape = c.sizes().vec();
    w.data = absl::Span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()), c.nbytes());
    out.push_back(std::move(w));
  };
  for (const auto& [name, t] : params_) {
    add("param/" + name, t);
    add("exp_avg/" + name, exp_avg_.at(name));
    add("exp_avg_sq/" + name, exp_avg_sq_.at(name));
  }
  RETURN_IF_ERROR(model::WriteSafetensors(dir + "/state.safetensors", out, {}));
  nlohmann::json state = {
      {"step", step_},       {"param_steps", param_steps_},     {"train_seconds", train_seconds_},
      {"history", history_}, {"init_seed", options_.init_seed}, {"data_seed", options_.data_seed}};
  // Write-then-rename so a crash never leaves a state.json newer than its tensors.
  RETURN_IF_ERROR(WriteText(dir + "/trainer_state.json.tmp", state.dump(2)));
  fs::rename(dir + "/trainer_state.json.tmp", dir + "/trainer_state.json", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename state in ", dir));
  return absl::OkStatus();
}

absl::Status TinyLlavaTrainer::LoadCheckpoint(const std::string& dir) {
  ASSIGN_OR_RETURN(std::string text, ReadText(dir + "/trainer_state.json"));
  nlohmann::json state = nlohmann::json::parse(text, nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("step")) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/trainer_state.json: malformed"));
  }
  if (state.value("init_seed", uint64_t(0)) != options_.init_seed ||
      state.value("data_seed", uint64_t(0)) != options_.data_seed) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": checkpoint was made with other seeds; refusing to resume"));
  }
  ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open(dir + "/state.safetensors"));
  at::NoGradGuard no_grad;
  auto load = [&](const std::string& name, at::Tensor& dst) -> absl::Status {
    const model::TensorInfo* info = file->Find(name);
    if (info == nullptr || info->shape != dst.sizes().vec()) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, "/state.safetensors: tensor \"", name, "\" missing or wrong shape"));
    }
    std::vector<float> buf(info->num_elements());
    RETURN_IF_ERROR(file->ReadAsFloat32(*info, absl::MakeSpan(buf)));
    dst.copy_(at::from_blob(buf.data(), dst.sizes(), at::kFloat));
    return absl::OkStatus();
  };
  for (auto& [name, p] : params_) {
    RETURN_IF_ERROR(load("param/" + name, p));
    RETURN_IF_ERROR(load("exp_avg/" + name, exp_avg_[name]));
    RETURN_IF_ERROR(load("exp_avg_sq/" + name, exp_avg_sq_[name]));
  }
  step_ = state["step"].get<int64_t>();
  param_steps_ = state["param_steps"].get<std::map<std::string, int64_t>>();
  train_seconds_ = state.value("train_seconds", 0.0);
  if (state.contains("history")) history_ = state["history"].get<std::vector<nlohmann::json>>();
  spdlog::info("resumed from {} at step {}", dir, step_);
  return absl::OkStatus();
}

absl::Status TinyLlavaTrainer::LoadInitWeights(const std::string& dir) {
  ASSIGN_OR_RETURN(model::Checkpoint checkpoint, model::LoadCheckpoint(dir));
  at::NoGradGuard no_grad;
  int loaded = 0;
  auto load = [&](const std::string& name, at::Tensor& dst) -> absl::Status {
    auto it = checkpoint.tensors.find(name);
    if (it == checkpoint.tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": tensor \"", name, "\" is missing (--init_from)"));
    }
    const at::Tensor& t = it->second;
    if (t.sizes() != dst.sizes()) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": tensor \"", name, "\" has shape [", absl::StrJoin(t.sizes(), ","),
                       "], this trainer's sizes want [", absl::StrJoin(dst.sizes(), ","), "]"));
    }
    dst.copy_(t);
    ++loaded;
    return absl::OkStatus();
  };
  for (auto& [name, p] : params_) {
    if (name.rfind(kAux, 0) == 0) continue;  // the phase-1 head is not part of the model
    RETURN_IF_ERROR(load(name, p));
  }
  for (auto& [name, t] : unused_) RETURN_IF_ERROR(load(name, t));
  spdlog::info("initialised {} tensors from {}", loaded, dir);
  return absl::OkStatus();
}

absl::StatusOr<EvalResult> TinyLlavaTrainer::Run() {
  const int64_t total = total_steps();
  ASSIGN_OR_RETURN(auto flops, DenseFlops(256));
  const FlopsBreakdown& f = flops.first;
  spdlog::info(
      "dense FLOPs/sample {:.1f} M: vision {:.2f} M, projector {:.2f} M, decoder linears {:.1f} "
      "M, attention {:.2f} M, lm_head {:.2f} M; never-pruned share {:.1f} %",
      f.Total() / 1e6, f.VisionTotal() / 1e6, f.projector / 1e6, f.DecoderLinearTotal() / 1e6,
      f.DecoderAttentionTotal() / 1e6, f.lm_head / 1e6, 100 * flops.second);
  double running = 0;
  int running_n = 0;
  auto t_last = std::chrono::steady_clock::now();
  int64_t samples_since = 0;
  auto info_json = [&](const EvalResult* final_eval) {
    nlohmann::json j = {{"command", options_.command_line},
                        {"data_seed", options_.data_seed},
                        {"init_seed", options_.init_seed},
                        {"eval_seed", options_.eval_seed},
                        {"steps_done", step_},
                        {"vision_steps", options_.vision_steps},
                        {"vision_batch", options_.vision_batch},
                        {"vision_lr", options_.vision_lr},
                        {"steps", options_.steps},
                        {"batch", options_.batch},
                        {"lr", options_.lr},
                        {"warmup", options_.warmup},
                        {"weight_decay", options_.weight_decay},
                        {"clip_norm", options_.clip_norm},
                        {"aux_weight", options_.aux_weight},
                        {"threads", options_.threads},
                        {"train_seconds", train_seconds_},
                        {"flops_per_sample", f.Total()},
                        {"never_pruned_flops_share", flops.second},
                        {"history", history_}};
    if (final_eval) j["final_eval"] = final_eval->ToJson();
    return j;
  };
  while (step_ < total) {
    if (options_.stop_at > 0 && step_ >= options_.stop_at) {
      // A staged run (models/README.md): stop here with the state saved; a later --resume
      // with other options continues from exactly this step.
      if (!options_.checkpoint_dir.empty())
        RETURN_IF_ERROR(SaveCheckpoint(options_.checkpoint_dir));
      spdlog::info("stopped at step {} (--stop_at)", step_);
      return Evaluate(options_.eval_samples);
    }
    const auto t0 = std::chrono::steady_clock::now();
    const bool vision = step_ < options_.vision_steps;
    ASSIGN_OR_RETURN(double loss, Step());
    const auto t1 = std::chrono::steady_clock::now();
    train_seconds_ += std::chrono::duration<double>(t1 - t0).count();
    samples_since += vision ? options_.vision_batch : options_.batch;
    running += loss;
    ++running_n;
    const bool phase_end = step_ == options_.vision_steps;
    if (step_ % options_.log_every == 0 || step_ == total || phase_end) {
      const double dt = std::chrono::duration<double>(t1 - t_last).count();
      const double rate = samples_since / std::max(dt, 1e-9);
      // ETA at the current rate; during phase 1 it covers phase 1 only (phase 2's per-sample
      // cost is ~20x higher and not measured yet).
      const double step_time = dt / std::max(running_n, 1);
      const int64_t phase_end_step = vision ? options_.vision_steps : total;
      spdlog::info("step {}/{} [{}] loss {:.4f} lr {:.2e} {:.1f} samples/s {} ETA {:.0f} s", step_,
                   total, vision ? "vision" : "full", running / std::max(running_n, 1),
                   LearningRate(step_ - 1), rate, vision ? "phase-1" : "run",
                   step_time * double(phase_end_step - step_));
      running = 0;
      running_n = 0;
      samples_since = 0;
      t_last = t1;
    }
    const int64_t full_step = step_ - options_.vision_steps;
    const bool eval_now = !vision && options_.eval_every > 0 && full_step > 0 &&
                          (full_step % options_.eval_every == 0 || step_ == total);
    if (eval_now) {
      ASSIGN_OR_RETURN(EvalResult r, Evaluate(options_.eval_samples));
      std::string types;
      for (const auto& [name, t] : r.per_type) {
        absl::StrAppend(&types, " ", name, " ", int(std::round(100 * t.accuracy())), "%");
      }
      spdlog::info("eval step {}: accuracy {:.1f} % loss {:.4f} ({} samples;{})", step_,
                   100 * r.accuracy, r.mean_loss, r.num_samples, types);
      nlohmann::json h = r.ToJson();
      h["step"] = step_;
      h["train_seconds"] = train_seconds_;
      history_.push_back(h);
      if (!options_.out_dir.empty())
        RETURN_IF_ERROR(SaveModel(options_.out_dir, info_json(nullptr)));
    }
    if (!options_.checkpoint_dir.empty() && options_.checkpoint_every > 0 &&
        (step_ % options_.checkpoint_every == 0 || step_ == total || phase_end)) {
      RETURN_IF_ERROR(SaveCheckpoint(options_.checkpoint_dir));
    }
  }
  if (options_.out_dir.empty()) return Evaluate(options_.final_eval_samples);
  RETURN_IF_ERROR(SaveModel(options_.out_dir, info_json(nullptr)));
  // Final evaluation through the runtime's own loading path (what llava-eval does): reload the
  // written directory and score held-out samples prepared by PrepareSample from PNG bytes.
  ASSIGN_OR_RETURN(auto bundle, model::LoadLlavaBundle(options_.out_dir));
  std::vector<model::PreparedSample> prepared;
  for (int i = 0; i < options_.final_eval_samples; ++i) {
    ASSIGN_OR_RETURN(auto s, data::GenerateSample(shapes_eval_, options_.eval_seed, i));
    model::Sample sample;
    sample.id = s.id;
    sample.image_path = s.image_path;
    sample.question = s.question;
    sample.options = s.options;
    sample.answer = std::string(1, model::OptionLetter(s.answer_index));
    sample.type = std::string(data::kQuestionTypeNames[int(s.type)]);
    ASSIGN_OR_RETURN(sample.image_bytes, model::EncodePng(s.image));
    sample.line = i + 1;
    ASSIGN_OR_RETURN(auto p, model::PrepareSample(*bundle, sample));
    prepared.push_back(std::move(p));
  }
  RETURN_IF_ERROR(model::AttachImageFeatures(*bundle->model, absl::MakeSpan(prepared), 64));
  std::vector<model::ScoringSample> scoring;
  for (const auto& p : prepared) scoring.push_back(p.scoring);
  model::ScoreOptions so;
  so.batch_size = 64;
  ASSIGN_OR_RETURN(auto scores, model::ScoreSamples(*bundle->model, scoring, so));
  const model::ScoreSummary sum = model::Summarize(scores);
  EvalResult r;
  r.num_samples = sum.num_samples;
  r.accuracy = sum.accuracy;
  r.mean_loss = sum.mean_loss;
  for (size_t i = 0; i < prepared.size(); ++i) {
    TypeAccuracy& t = r.per_type[prepared[i].type];
    ++t.total;
    t.correct += scores[i].correct ? 1 : 0;
  }
  std::string types;
  for (const auto& [name, t] : r.per_type) {
    absl::StrAppend(&types, " ", name, " ", absl::StrFormat("%.1f", 100 * t.accuracy()), "%");
  }
  spdlog::info("final held-out eval (reloaded {}): accuracy {:.1f} % loss {:.4f} on {} samples;{}",
               options_.out_dir, 100 * r.accuracy, r.mean_loss, r.num_samples, types);
  RETURN_IF_ERROR(WriteText(options_.out_dir + "/training.json", info_json(&r).dump(2) + "\n"));
  return r;
}

}  // namespace prunesvc::train
