// train-tiny-llava: trains models/tiny-llava-shapes (docs/architecture.md §4) from scratch on
// shapes-vqa on the CPU. See worker/train/tiny_llava_trainer.h for the recipe and
// `train-tiny-llava --help`.
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "spdlog/spdlog.h"
#include "worker/train/tiny_llava_trainer.h"

ABSL_FLAG(std::string, out, "", "Output model directory (HF LLaVA layout). Required.");
ABSL_FLAG(std::string, checkpoint_dir, "", "Directory for model + optimizer state; empty = none.");
ABSL_FLAG(bool, resume, false, "Continue from --checkpoint_dir if it holds a state.");
ABSL_FLAG(int, checkpoint_every, 200, "Save the training state every N steps.");
ABSL_FLAG(uint64_t, seed, 1, "Initialisation seed.");
ABSL_FLAG(uint64_t, data_seed, prunesvc::data::kShapesTrainSeed, "shapes-vqa training seed.");
ABSL_FLAG(uint64_t, eval_seed, prunesvc::data::kShapesEvalSeed, "shapes-vqa held-out seed.");
ABSL_FLAG(uint64_t, steer_seed, 0,
          "shapes-vqa seed of the periodic evaluations that steer a run; 0 = --eval_seed.");
ABSL_FLAG(std::string, steer_split, "eval",
          "Split of the periodic evaluations: eval|search (search keeps the held-out set clean).");
ABSL_FLAG(std::string, init_from, "",
          "Fine-tune: start from this model directory's weights and tokenizer (fresh optimizer).");
ABSL_FLAG(int64_t, data_offset, 0, "Added to every training-stream sample index.");
ABSL_FLAG(int, threads, 2, "libtorch intra-op threads; 0 = libtorch's default.");
ABSL_FLAG(int, vision_steps, 800, "Phase 1 steps (vision tower on object slots).");
ABSL_FLAG(int, vision_batch, 128, "Phase 1 batch size.");
ABSL_FLAG(double, vision_lr, 2e-3, "Phase 1 peak learning rate.");
ABSL_FLAG(int, steps, 3000, "Phase 2 steps (the whole model on multiple-choice answers).");
ABSL_FLAG(int, batch, 64, "Phase 2 batch size.");
ABSL_FLAG(int, warmup, 200, "Phase 2 linear warm-up steps.");
ABSL_FLAG(double, lr, 1e-3, "Phase 2 peak learning rate (cosine decay after warm-up).");
ABSL_FLAG(double, weight_decay, 0.05, "AdamW decoupled weight decay on matrices.");
ABSL_FLAG(double, clip, 1.0, "Global gradient-norm clip.");
ABSL_FLAG(double, aux_weight, 0.5, "Weight of the object-slot loss during phase 2.");
ABSL_FLAG(double, pointer_fraction, 0.0,
          "Fraction of early phase-2 samples asking \"Which option is <answer>?\" (curriculum).");
ABSL_FLAG(int, pointer_steps, 0, "Phase-2 steps over which the pointer fraction decays to 0.");
ABSL_FLAG(
    double, open_fraction, 0.0,
    "Fraction of phase-2 samples asked with the open-answer template (answer = option text).");
ABSL_FLAG(double, text_init_std, 0.0,
          "> 0: N(0, std) init of projector/embeddings/decoder/lm_head (HF initializer_range); "
          "0: fan-in scaling.");
ABSL_FLAG(double, binding_fraction, 0.0,
          "Fraction of early phase-2 samples with each option's letter repeated after its text "
          "and predicted (decays like --pointer_fraction over --pointer_steps).");
ABSL_FLAG(double, position_boost, 0.0,
          "Fraction of phase-2 samples replaced by position questions.");
ABSL_FLAG(double, count_boost, 0.0, "Fraction of phase-2 samples replaced by count questions.");
ABSL_FLAG(int64_t, stop_at, 0,
          "> 0: save the state to --checkpoint_dir and stop at this global step (staged runs).");
ABSL_FLAG(double, where_fraction, 0.0,
          "Fraction of open-answer samples asking for one object's location on the canvas.");
ABSL_FLAG(double, position_two_objects, 0.0,
          "Fraction of phase-2 position questions drawn from two-object scenes.");
ABSL_FLAG(int, eval_every, 250, "Held-out evaluation every N phase-2 steps.");
ABSL_FLAG(int, eval_samples, 256, "Held-out samples per periodic evaluation.");
ABSL_FLAG(int, final_eval_samples, 1000, "Held-out samples of the final evaluation.");
ABSL_FLAG(int, vocab, 510, "sentencepiece vocabulary size (256 byte pieces included).");
ABSL_FLAG(int, log_every, 10, "Progress line every N steps.");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  std::string command = "train-tiny-llava";
  for (int i = 1; i < argc; ++i) absl::StrAppend(&command, " ", argv[i]);
  prunesvc::ParseFlags(argc, argv,
                       "train-tiny-llava: trains a tiny LLaVA-1.5-architecture model on "
                       "shapes-vqa.\nUsage: train-tiny-llava --out=DIR [--checkpoint_dir=DIR "
                       "--resume] [--steps=N ...]");
  prunesvc::InitLogging("train", absl::GetFlag(FLAGS_log_level));
  prunesvc::train::TrainOptions o;
  o.out_dir = absl::GetFlag(FLAGS_out);
  if (o.out_dir.empty()) {
    spdlog::critical("--out is required");
    return 2;
  }
  o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  o.resume = absl::GetFlag(FLAGS_resume);
  o.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  o.init_seed = absl::GetFlag(FLAGS_seed);
  o.data_seed = absl::GetFlag(FLAGS_data_seed);
  o.eval_seed = absl::GetFlag(FLAGS_eval_seed);
  o.steer_seed = absl::GetFlag(FLAGS_steer_seed);
  {
    auto split = prunesvc::data::ParseSplit(absl::GetFlag(FLAGS_steer_split));
    if (!split.ok()) {
      spdlog::critical("--steer_split: {}", split.status().ToString());
      return 2;
    }
    o.steer_split = *split;
  }
  o.init_from = absl::GetFlag(FLAGS_init_from);
  o.data_offset = absl::GetFlag(FLAGS_data_offset);
  if (o.data_offset < 0) {
    spdlog::critical("--data_offset must be ≥ 0");
    return 2;
  }
  o.threads = absl::GetFlag(FLAGS_threads);
  o.vision_steps = absl::GetFlag(FLAGS_vision_steps);
  o.vision_batch = absl::GetFlag(FLAGS_vision_batch);
  o.vision_lr = absl::GetFlag(FLAGS_vision_lr);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.clip_norm = absl::GetFlag(FLAGS_clip);
  o.aux_weight = absl::GetFlag(FLAGS_aux_weight);
  o.pointer_fraction = absl::GetFlag(FLAGS_pointer_fraction);
  o.pointer_steps = absl::GetFlag(FLAGS_pointer_steps);
  o.open_fraction = absl::GetFlag(FLAGS_open_fraction);
  o.text_init_std = absl::GetFlag(FLAGS_text_init_std);
  o.binding_fraction = absl::GetFlag(FLAGS_binding_fraction);
  o.position_boost = absl::GetFlag(FLAGS_position_boost);
  o.count_boost = absl::GetFlag(FLAGS_count_boost);
  o.stop_at = absl::GetFlag(FLAGS_stop_at);
  o.where_fraction = absl::GetFlag(FLAGS_where_fraction);
  o.position_two_objects = absl::GetFlag(FLAGS_position_two_objects);
  o.eval_every = absl::GetFlag(FLAGS_eval_every);
  o.eval_samples = absl::GetFlag(FLAGS_eval_samples);
  o.final_eval_samples = absl::GetFlag(FLAGS_final_eval_samples);
  o.sizes.sp_vocab = absl::GetFlag(FLAGS_vocab);
  o.log_every = absl::GetFlag(FLAGS_log_every);
  o.command_line = command;
  // The tokenizer lives with the training state when there is one, so a resumed run keeps ids.
  const std::string tok_dir =
      o.checkpoint_dir.empty() ? o.out_dir : o.checkpoint_dir + "/tokenizer";
  auto trainer = prunesvc::train::TinyLlavaTrainer::Create(o, tok_dir);
  if (!trainer.ok()) {
    spdlog::critical("{}", trainer.status().ToString());
    return 1;
  }
  auto result = (*trainer)->Run();
  if (!result.ok()) {
    spdlog::critical("{}", result.status().ToString());
    return 1;
  }
  return 0;
}
