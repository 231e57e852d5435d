// Scoring and greedy generation on top of LlavaModel (docs/architecture.md §4, §5; docs/llava.md).
//
//  - Multiple choice: every option letter is one token, so all letters are scored from the logits
//    at the last prompt position (one forward per batch); a letter's score is its log-probability
//    there (= the summed log-prob of its one answer token), accuracy = argmax == answer.
//  - Answer loss (L̂ in the pruning fitness): teacher-forced mean cross-entropy over the full
//    vocabulary of the answer tokens ids[answer_begin, answer_end) — for a multiple-choice sample
//    that is the correct letter's tokens.
//  - Batches are left-padded by the model; results do not depend on the batch size (up to float
//    rounding, ≤ 1e-5) and come back in input order.
//  - GreedyGenerate decodes with a KV cache (or, for testing, re-runs the full forward each step).
//
// Thread-safety: the functions only call LlavaModel's const methods.
#ifndef PRUNESVC_WORKER_MODEL_SCORING_H_
#define PRUNESVC_WORKER_MODEL_SCORING_H_

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/model/llava_model.h"

namespace prunesvc::model {

struct ScoringSample {
  std::vector<int> token_ids;  // prompt + answer as one text (Tokenizer::EncodeForScoring)
  int answer_begin = 0;        // the answer is token_ids[answer_begin, answer_end)
  int answer_end = 0;          // 0 < answer_begin < answer_end <= token_ids.size()
  // [num_images, image_seq_length, text hidden] (LlavaModel::ComputeImageFeatures), undefined
  // when the prompt has no image.
  at::Tensor image_features;
  // Multiple choice: the token of each option letter (" A", " B", ...). Empty = open answer.
  std::vector<int> option_token_ids;
  int correct_option = -1;  // index into option_token_ids (multiple choice only)
};

struct SampleScore {
  double loss = 0;  // mean CE of the answer tokens (nats)
  bool multiple_choice = false;
  std::vector<double> option_log_probs;  // per option, at the last prompt position
  int predicted_option = -1;             // argmax (first on ties)
  bool correct = false;
  at::Tensor answer_logits;  // [vocab] at the last prompt position, when keep_logits is set
};

struct ScoreOptions {
  int batch_size = 8;
  bool keep_logits = false;  // fill SampleScore::answer_logits (for --dump-logits)
};

// Scores `samples` in batches of `options.batch_size`. Invalid ranges / options → InvalidArgument
// naming the sample.
absl::StatusOr<std::vector<SampleScore>> ScoreSamples(const LlavaModel& model,
                                                      absl::Span<const ScoringSample> samples,
                                                      const ScoreOptions& options = {});

// ScoreSamples in pieces, for callers that run the forward themselves (the evaluator's prefix
// tree runs LlavaModel::StartPass / RunLayer / FinishPass): the checks ScoreSamples makes, the
// model inputs of a batch of samples, and the scores from that batch's logits (out[i] for
// samples[i]; `logits` as Forward returns them; errors name sample first_index + i). Bitwise
// what ScoreSamples computes.
absl::Status CheckScoringSamples(absl::Span<const ScoringSample> samples, int vocab);
std::vector<SequenceInput> ScoringInputs(absl::Span<const ScoringSample> samples);
absl::Status ScoresFromLogits(absl::Span<const ScoringSample> samples,
                              absl::Span<const at::Tensor> logits, int vocab, bool keep_logits,
                              absl::Span<SampleScore> out, size_t first_index = 0);

struct ScoreSummary {
  int num_samples = 0;
  int num_multiple_choice = 0;
  double mean_loss = 0;  // over all samples
  double accuracy = 0;   // over multiple-choice samples (0 when there are none)
};
ScoreSummary Summarize(absl::Span<const SampleScore> scores);

// FLOPs-model statistics of a sample set (docs/architecture.md §5): T = expanded image tokens +
// prompt + answer tokens of each sample, averaged (and T² averaged); answer tokens averaged.
TokenStats ComputeTokenStats(const LlavaModel& model, absl::Span<const ScoringSample> samples);

struct GenerateOptions {
  int max_new_tokens = 32;
  std::optional<int> eos_token_id;  // stop after emitting it (it is included in the output)
  bool use_kv_cache = true;         // false: re-run the whole sequence each step (reference)
  // Called with each new id as soon as it is chosen (streaming); may be empty.
  std::function<void(int)> on_token;
};

// Greedy decoding of one prompt (ids with `<image>` tokens) → the new token ids. The image token
// is never generated (its logit is masked).
absl::StatusOr<std::vector<int>> GreedyGenerate(const LlavaModel& model,
                                                const std::vector<int>& prompt_ids,
                                                const at::Tensor& image_features,
                                                const GenerateOptions& options = {});

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_SCORING_H_
