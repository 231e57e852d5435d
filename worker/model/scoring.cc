#include "worker/model/scoring.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace prunesvc::model {
namespace {

absl::Status CheckSample(const ScoringSample& s, int vocab, size_t index) {
  const int n = s.token_ids.size();
  if (!(0 < s.answer_begin && s.answer_begin < s.answer_end && s.answer_end <= n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample ", index, ": answer range [", s.answer_begin, ", ", s.answer_end,
        ") must be non-empty, after at least one prompt token, inside ", n, " tokens"));
  }
  for (int id : s.option_token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample ", index, ": option token id ", id, " outside the vocabulary"));
    }
  }
  if (!s.option_token_ids.empty() &&
      (s.correct_option < 0 || s.correct_option >= int(s.option_token_ids.size()))) {
    return absl::InvalidArgumentError(absl::StrCat("sample ", index, ": correct option ",
                                                   s.correct_option, " is not one of the ",
                                                   s.option_token_ids.size(), " options"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<SequenceInput> ScoringInputs(absl::Span<const ScoringSample> samples) {
  std::vector<SequenceInput> batch;
  for (const ScoringSample& s : samples) {
    SequenceInput in;
    // The last answer token predicts nothing we score, so it is not fed.
    in.token_ids.assign(s.token_ids.begin(), s.token_ids.begin() + s.answer_end - 1);
    in.image_features = s.image_features;
    for (int p = s.answer_begin - 1; p < s.answer_end - 1; ++p) in.logit_positions.push_back(p);
    batch.push_back(std::move(in));
  }
  return batch;
}

absl::Status ScoresFromLogits(absl::Span<const ScoringSample> samples,
                              absl::Span<const at::Tensor> logits, int vocab, bool keep_logits,
                              absl::Span<SampleScore> out, size_t first_index) {
  try {
    for (size_t i = 0; i < samples.size(); ++i) {
      const ScoringSample& s = samples[i];
      SampleScore& r = out[i];
      at::Tensor logp = at::log_softmax(logits[i].to(at::kCPU), -1);  // [n, V]
      at::Tensor targets = at::tensor(std::vector<int64_t>(s.token_ids.begin() + s.answer_begin,
                                                           s.token_ids.begin() + s.answer_end),
                                      at::kLong);
      for (int64_t t : std::vector<int64_t>(targets.data_ptr<int64_t>(),
                                            targets.data_ptr<int64_t>() + targets.numel())) {
        if (t < 0 || t >= vocab) {
          return absl::InvalidArgumentError(absl::StrCat(
              "sample ", first_index + i, ": answer token id ", t, " outside the vocabulary"));
        }
      }
      at::Tensor picked = logp.gather(1, targets.view({-1, 1}));
      r.loss = -picked.mean().item<double>();
      if (keep_logits) r.answer_logits = logits[i][0].to(at::kCPU).clone();
      if (!s.option_token_ids.empty()) {
        r.multiple_choice = true;
        at::Tensor first = logp[0];
        const float* lp = first.data_ptr<float>();
        for (int id : s.option_token_ids) r.option_log_probs.push_back(lp[id]);
        r.predicted_option =
            int(std::max_element(r.option_log_probs.begin(), r.option_log_probs.end()) -
                r.option_log_probs.begin());
        r.correct = r.predicted_option == s.correct_option;
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("scoring: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status CheckScoringSamples(absl::Span<const ScoringSample> samples, int vocab) {
  for (size_t i = 0; i < samples.size(); ++i) RETURN_IF_ERROR(CheckSample(samples[i], vocab, i));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SampleScore>> ScoreSamples(const LlavaModel& model,
                                                      absl::Span<const ScoringSample> samples,
                                                      const ScoreOptions& options) {
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size must be at least 1, got ", options.batch_size));
  }
  const int vocab = model.config().text.vocab_size;
  RETURN_IF_ERROR(CheckScoringSamples(samples, vocab));
  std::vector<SampleScore> out(samples.size());
  for (size_t start = 0; start < samples.size(); start += options.batch_size) {
    const size_t end = std::min(samples.size(), start + size_t(options.batch_size));
    const auto part = samples.subspan(start, end - start);
    ASSIGN_OR_RETURN(std::vector<at::Tensor> logits, model.Forward(ScoringInputs(part)));
    RETURN_IF_ERROR(ScoresFromLogits(part, logits, vocab, options.keep_logits,
                                     absl::MakeSpan(out).subspan(start, end - start), start));
  }
  return out;
}

ScoreSummary Summarize(absl::Span<const SampleScore> scores) {
  ScoreSummary s;
  s.num_samples = scores.size();
  int correct = 0;
  double loss = 0;
  for (const SampleScore& r : scores) {
    loss += r.loss;
    if (r.multiple_choice) {
      ++s.num_multiple_choice;
      correct += r.correct;
    }
  }
  if (s.num_samples > 0) s.mean_loss = loss / s.num_samples;
  if (s.num_multiple_choice > 0) s.accuracy = double(correct) / s.num_multiple_choice;
  return s;
}

TokenStats ComputeTokenStats(const LlavaModel& model, absl::Span<const ScoringSample> samples) {
  TokenStats st;
  if (samples.empty()) return st;
  for (const ScoringSample& s : samples) {
    const double t = double(model.ExpandedLength(s.token_ids));
    st.mean_tokens += t;
    st.mean_tokens_sq += t * t;
    st.mean_answer_tokens += s.answer_end - s.answer_begin;
  }
  const double n = samples.size();
  st.mean_tokens /= n;
  st.mean_tokens_sq /= n;
  st.mean_answer_tokens /= n;
  return st;
}

absl::StatusOr<std::vector<int>> GreedyGenerate(const LlavaModel& model,
                                                const std::vector<int>& prompt_ids,
                                                const at::Tensor& image_features,
                                                const GenerateOptions& options) {
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be non-negative");
  }
  if (prompt_ids.empty()) return absl::InvalidArgumentError("empty prompt");
  std::vector<int> out;
  // The image token stands for an image the model cannot produce, and feeding it back would
  // ask for image features that do not exist: it is never generated.
  const int image_id = model.config().image_token_index;
  auto argmax = [image_id](const at::Tensor& logits) -> absl::StatusOr<int> {
    try {
      at::Tensor l = logits.to(at::kCPU).clone();
      if (image_id >= 0 && image_id < l.size(0)) l[image_id] = -INFINITY;
      return int(l.argmax().item<int64_t>());
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("generation: ", e.what_without_backtrace()));
    }
  };
  if (options.use_kv_cache) {
    KvCache cache;
    SequenceInput in{prompt_ids, image_features, {}};
    for (int step = 0; step < options.max_new_tokens; ++step) {
      ASSIGN_OR_RETURN(at::Tensor logits, model.ForwardWithCache(in, &cache));
      ASSIGN_OR_RETURN(int next, argmax(logits));
      out.push_back(next);
      if (options.on_token) options.on_token(next);
      if (options.eos_token_id && next == *options.eos_token_id) break;
      in = SequenceInput{{next}, at::Tensor(), {}};
    }
    return out;
  }
  std::vector<int> ids = prompt_ids;
  for (int step = 0; step < options.max_new_tokens; ++step) {
    SequenceInput in{ids, image_features, {int(ids.size()) - 1}};
    ASSIGN_OR_RETURN(std::vector<at::Tensor> logits, model.Forward({&in, 1}));
    ASSIGN_OR_RETURN(int next, argmax(logits[0][0]));
    out.push_back(next);
    if (options.on_token) options.on_token(next);
    ids.push_back(next);
    if (options.eos_token_id && next == *options.eos_token_id) break;
  }
  return out;
}

}  // namespace prunesvc::model
