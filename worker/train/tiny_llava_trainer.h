// train-tiny-llava's library: trains a LLaVA-1.5-architecture model from scratch on shapes-vqa on
// the CPU and writes a HuggingFace LLaVA directory the runtime (LoadLlavaBundle, llava-eval) loads
// (docs/architecture.md §4 "Tiny model").
//
// Recipe (why not a plain end-to-end run: in a PyTorch prototype one sat at chance ~600 steps):
//   phase 1 (`vision_steps`): the vision tower alone learns "object slots": a throwaway linear
//     head on each patch's feature (the feature layer the projector reads) predicts the colour
//     and shape of the object whose centre lies in that patch (or "none") and the centre's
//     coordinates. Cheap (17 tokens of width 64) and it makes counting (how many patches hold a
//     centre) and positions (coordinates) linearly readable.
//   phase 2 (`steps`): the whole model on the multiple-choice task, loss = cross-entropy of the
//     answer token(s) over the full vocabulary, plus `aux_weight` × the phase-1 loss so the slots
//     stay readable. AdamW (own implementation, so its state is plain tensors we checkpoint), lr
//     warm-up then cosine decay, global gradient-norm clipping.
// Data: sample i of step s is shapes-vqa sample (s·batch + i) of the training seed and split
// (optionally modulo `train_pool` for overfitting tests), generated in-process — so a resumed run
// sees exactly the data an uninterrupted one does.
//
// The tokenizer is a sentencepiece BPE model trained on prompts + answers of the training
// distribution (identity normalisation, no whitespace folding, byte fallback), followed by
// `<image>` and `<pad>` as llava-hf's added tokens. " A" … " Z" must be single tokens: the corpus
// carries each letter as its own sentence, and the result is checked (Tokenizer::LetterTokenIds).
//
// The vision tower is trained through this file's own CLIP forward (LlavaModel::VisionFeatures
// runs under NoGradGuard), which reads the model's own weight tensors; a test checks it equals
// VisionFeatures. HF's feature layer −2 means the last CLIP layer never runs: its weights (and
// post_layernorm) are initialised, never trained, and written so the checkpoint is complete.
//
// Thread-safety: a TinyLlavaTrainer is single-threaded (libtorch's intra-op pool does the
// parallel work); distinct trainers may run concurrently except TrainTokenizer (sentencepiece's
// trainer has global state).
#ifndef PRUNESVC_WORKER_TRAIN_TINY_LLAVA_TRAINER_H_
#define PRUNESVC_WORKER_TRAIN_TINY_LLAVA_TRAINER_H_

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/flops.h"
#include "nlohmann/json.hpp"
#include "worker/data/shapes.h"
#include "worker/data/shapes_seeds.h"
#include "worker/model/llava_model.h"
#include "worker/model/preprocess.h"
#include "worker/model/scoring.h"
#include "worker/model/tokenizer.h"

namespace prunesvc::train {

struct TinyLlavaSizes {
  int image_size = 32;  // = shapes-vqa canvas; the preprocessor neither resizes nor crops
  int patch_size = 8;
  int vision_width = 64;
  int vision_mlp = 256;
  int vision_heads = 4;
  int vision_layers = 4;  // feature layer −2: the last one never runs
  int text_width = 128;
  int text_mlp = 512;
  int text_heads = 4;
  int text_kv_heads = 2;  // GQA, so pruning code paths see it
  int text_layers = 6;
  int sp_vocab = 510;  // sentencepiece pieces (256 of them byte-fallback); + <image>, <pad> = 512
};

// Trains the tokenizer on `corpus` (prompt + answer texts; '\n' allowed) plus one sentence per
// letter A–Z, and writes tokenizer.model, added_tokens.json ({"<image>": V, "<pad>": V+1} with V
// = pieces), tokenizer_config.json and special_tokens_map.json into `dir`. Fails unless " A" …
// " Z" are single tokens after "ASSISTANT:" and every corpus text round-trips through
// EncodeForScoring's prefix rule.
absl::Status TrainTokenizer(const std::vector<std::string>& corpus, int vocab_size,
                            const std::string& dir);

// config.json for `sizes` (llava, CLIP + LLaMA, image_token_index = sp pieces, vocab padded to a
// multiple of 64, float32).
nlohmann::json MakeConfigJson(const TinyLlavaSizes& sizes, int sentencepiece_pieces);
// preprocessor_config.json: CLIPImageProcessor with shortest_edge = crop = image_size.
nlohmann::json MakePreprocessorJson(const TinyLlavaSizes& sizes);

struct TrainOptions {
  TinyLlavaSizes sizes;
  uint64_t data_seed = data::kShapesTrainSeed;
  uint64_t init_seed = 1;
  // > 0: projector, embeddings, decoder and lm_head drawn from N(0, text_init_std) as HF's
  // LLaMA initializer_range does; 0: fan-in scaling with unit-scale embeddings.
  double text_init_std = 0;
  int tokenizer_corpus = 4000;  // training samples whose texts train the tokenizer

  // Phase 1: vision slots.
  int vision_steps = 800;
  int vision_batch = 128;
  double vision_lr = 2e-3;

  // Phase 2: full model.
  int steps = 3000;
  int batch = 64;
  int warmup = 200;
  double lr = 1e-3;
  double min_lr_fraction = 0.05;  // cosine decays to lr × this
  double weight_decay = 0.05;     // on matrices only (not norms, biases, embeddings' rows alike)
  double clip_norm = 1.0;
  double aux_weight = 0.5;
  int train_pool = 0;  // > 0: reuse samples 0..train_pool-1 (tests)
  // Pointer curriculum: this fraction of phase-2 samples (decaying linearly to 0 over
  // `pointer_steps`) replace their question by "Which option is <correct option text>?".
  double pointer_fraction = 0;
  int pointer_steps = 0;
  // This fraction of phase-2 samples use the open-answer template with the option text as the
  // answer (loss over all its tokens).
  double open_fraction = 0;
  // This fraction of the open-answer samples ask "Where is the <colour> <shape>?" instead,
  // answered "above|below left|right" (centre against the canvas centre).
  double where_fraction = 0;
  // Binding curriculum: this fraction of phase-2 samples (decaying like the pointer fraction over
  // `pointer_steps`) repeat each option's letter after its text ("B. red B") and are also trained
  // to predict those letters, a dense signal for the head that binds an option's text to its
  // letter (the multiple-choice answer reads the letter from the matching option's text).
  double binding_fraction = 0;
  // These fractions of phase-2 samples are replaced by position / count questions (the slow
  // types), on top of their round-robin quarter.
  double position_boost = 0;
  double count_boost = 0;
  // This fraction of phase-2 position questions come from two-object scenes.
  double position_two_objects = 0;

  // Fine-tuning: an HF directory this trainer wrote (models/tiny-llava-shapes). Its weights
  // replace the random initialisation and its tokenizer is reused (never retrained); the AdamW
  // moments start at zero and the phase-1 head at its random init (run with aux_weight 0 and
  // vision_steps 0). A --resume checkpoint, when present, still wins.
  std::string init_from;
  // Added to every training-stream index, so a fine-tuning stage sees samples the earlier
  // stages never drew.
  int64_t data_offset = 0;

  // Evaluation: the final one on `final_eval_samples` of the held-out split of `eval_seed`; the
  // periodic ones that steer a run on `steer_seed` (0 = eval_seed) of `steer_split` — the
  // search split keeps the held-out set untouched by steering decisions.
  uint64_t eval_seed = data::kShapesEvalSeed;
  uint64_t steer_seed = 0;
  data::Split steer_split = data::Split::kEval;
  int eval_every = 250;
  int eval_samples = 256;
  int final_eval_samples = 1000;

  std::string out_dir;         // the HF directory written at the end (and at each eval)
  std::string checkpoint_dir;  // model + optimizer state; empty = none
  int checkpoint_every = 200;
  bool resume = false;
  int64_t stop_at = 0;  // > 0: save the state and stop at this global step (staged runs)
  int threads = 2;
  int log_every = 10;
  std::string command_line;  // recorded in training.json
};

struct TypeAccuracy {
  int total = 0;
  int correct = 0;
  double accuracy() const { return total ? double(correct) / total : 0; }
};
struct EvalResult {
  int num_samples = 0;
  double accuracy = 0;
  double mean_loss = 0;
  std::map<std::string, TypeAccuracy> per_type;
  nlohmann::json ToJson() const;
};

// One training example as the trainer consumes it.
struct TrainExample {
  std::vector<int> token_ids;
  int answer_begin = 0, answer_end = 0;
  // Further positions (< answer_begin) whose tokens are also predicted (binding curriculum).
  std::vector<int> extra_targets;
  std::vector<float> pixels;  // CHW
  std::string type;
  int correct_option = 0;
  // Phase-1 targets per patch: colour (kPalette index, or 6 = none), shape (0..3, 4 = none),
  // centre coordinates in [-1, 1] (0 where no centre).
  std::vector<int64_t> patch_colour, patch_shape;
  std::vector<float> patch_xy;  // [patches × 2]
};

class TinyLlavaTrainer {
 public:
  // Trains (or, with resume, loads from `checkpoint_dir`) the tokenizer into `tokenizer_dir`
  // (created), initialises the model from init_seed, and restores the checkpoint when resuming.
  static absl::StatusOr<std::unique_ptr<TinyLlavaTrainer>> Create(const TrainOptions& options,
                                                                  const std::string& tokenizer_dir);

  // Runs one optimisation step (phase 1 while step() < vision_steps) and returns the step's
  // training loss (phase 2: answer CE without the auxiliary term).
  absl::StatusOr<double> Step();
  // Runs until vision_steps + steps, logging, evaluating and checkpointing as configured, then
  // writes out_dir and evaluates final_eval_samples held-out samples.
  absl::StatusOr<EvalResult> Run();

  // Held-out accuracy of the in-memory model on `count` eval samples (the scorer of llava-eval).
  absl::StatusOr<EvalResult> Evaluate(int count);
  // The answer CE of the current model on `examples` (no gradient).
  absl::StatusOr<double> AnswerLoss(const std::vector<TrainExample>& examples);

  // Writes the HF directory (config, weights, tokenizer, preprocessor, training.json).
  absl::Status SaveModel(const std::string& dir, const nlohmann::json& training_info);
  absl::Status SaveCheckpoint(const std::string& dir);

  // Sample `index` of the training stream as an example.
  // `open_answer`: the open-answer template with the correct option's text as the answer.
  absl::StatusOr<TrainExample> MakeExample(const data::ShapesSample& sample,
                                           bool open_answer = false) const;
  // The vision features [N, patches, D] through the trainer's differentiable CLIP forward.
  at::Tensor TrainableVisionFeatures(const at::Tensor& pixels) const;

  int64_t step() const { return step_; }
  int total_steps() const { return options_.vision_steps + options_.steps; }
  double LearningRate(int64_t step) const;
  // 1 → 0 linearly over the first `pointer_steps` phase-2 steps; 0 outside.
  double CurriculumDecay(int64_t step) const;
  double PointerFraction(int64_t step) const;
  model::LlavaModel& model() { return *model_; }
  const model::Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::vector<int>& letter_ids() const { return letter_ids_; }
  // The FLOPs breakdown of the dense model over `count` held-out samples, and its unprunable
  // share (vision, projector, attention scores, lm_head).
  absl::StatusOr<std::pair<FlopsBreakdown, double>> DenseFlops(int count);

 private:
  TinyLlavaTrainer(const TrainOptions& options) : options_(options) {}
  absl::Status Init(const std::string& tokenizer_dir);
  absl::Status LoadCheckpoint(const std::string& dir);
  absl::Status LoadInitWeights(const std::string& dir);
  absl::StatusOr<std::vector<TrainExample>> Batch(int64_t step, int batch_size);
  at::Tensor AuxLoss(const at::Tensor& features, const std::vector<TrainExample>& batch) const;
  at::Tensor AnswerLossTensor(const at::Tensor& image_features,
                              const std::vector<TrainExample>& batch, bool grad) const;
  void AdamWUpdate(double lr, bool vision_phase);

  const TrainOptions options_;
  data::ShapesOptions shapes_train_, shapes_eval_, shapes_steer_, shapes_two_;
  model::ClipPreprocessConfig preprocess_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  std::string tokenizer_dir_;
  std::vector<int> letter_ids_;
  std::unique_ptr<model::LlavaModel> model_;
  // Trainable parameters by canonical name (the model's own tensors) plus "aux.*" (the phase-1
  // head), and AdamW moments for each.
  std::map<std::string, at::Tensor> params_, exp_avg_, exp_avg_sq_;
  std::map<std::string, int64_t> param_steps_;  // AdamW bias-correction counters per parameter
  // Tensors written to the checkpoint but never run (last CLIP layer, post_layernorm).
  std::map<std::string, at::Tensor> unused_;
  std::vector<model::ScoringSample> eval_cache_;
  std::vector<std::string> eval_types_;
  int64_t step_ = 0;
  double train_seconds_ = 0;
  std::vector<nlohmann::json> history_;
};

}  // namespace prunesvc::train

#endif  // PRUNESVC_WORKER_TRAIN_TINY_LLAVA_TRAINER_H_
