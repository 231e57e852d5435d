// The logic behind the `llava-eval` and `llava-generate` command-line tools (docs/architecture.md
// §4 "CLI outputs"), as library functions so tests and the worker can call them without a process.
//
// llava-eval scores a sample set with a LLaVA model directory: multiple-choice accuracy (argmax
// of the option letters' log-probabilities at the last prompt position), mean teacher-forced
// answer loss, a per-`type` breakdown, throughput and GFLOPs/sample from the common FLOPs model.
// Every sample is validated (tokenized, image decoded and preprocessed) before the first forward
// pass, so bad input fails fast; the evaluation then re-decodes each batch's images, so memory
// stays at one batch of pixels whatever the set size.
// `--dump-logits` writes the logits at each sample's last prompt position as float32
// little-endian rows [N, V] (V = text_config.vocab_size) in file order, independent of the batch
// size, to a temporary file renamed into place at the end (a failed run leaves no partial file).
//
// Thread-safety: RunEval/RunGenerate set libtorch's global intra-op thread count and must not run
// concurrently with other torch work that depends on it. Otherwise they share no state.
#ifndef PRUNESVC_WORKER_MODEL_LLAVA_EVAL_H_
#define PRUNESVC_WORKER_MODEL_LLAVA_EVAL_H_

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc::model {

struct EvalOptions {
  std::string model_dir;     // a model directory, or an artifact directory (its model/)
  std::string samples_path;  // directory or tar
  int batch_size = 8;
  int threads = 0;             // torch intra-op threads; 0 → hardware concurrency
  std::string device = "cpu";  // cpu, cuda or cuda:N (model/device.h)
  std::string dump_logits;     // "" → none
  int limit = 0;               // evaluate only the first `limit` samples; 0 → all
  // Called after each batch with (samples done, total); e.g. a progress bar.
  std::function<void(int done, int total)> on_progress;
};

struct EvalGroup {
  int num_samples = 0;
  int num_multiple_choice = 0;
  std::optional<double> accuracy;  // over multiple-choice samples; nullopt when there are none
  double mean_loss = 0;
};

struct EvalReport {
  std::string model_dir;
  std::string samples_path;
  std::string samples_sha256;
  std::string device;       // as opened, e.g. "cpu" or "cuda:0"
  std::string device_name;  // CPU model or GPU name
  int threads = 0;
  int batch_size = 0;
  EvalGroup overall;
  std::map<std::string, EvalGroup> per_type;  // samples with a non-empty `type` only
  // Samples per second of the evaluation proper (image decode + preprocessing, vision tower,
  // decoder), excluding model loading, sample-set loading and validation.
  double samples_per_second = 0;
  double eval_seconds = 0;
  // FLOPs model (common/flops.h), mean over the set: kept multiply-adds (each decoder linear
  // scaled by its weights' non-zero fraction, as report.json counts them) and the dense count.
  double gflops_per_sample = 0;
  double dense_gflops_per_sample = 0;
};

// Runs an evaluation. Errors: InvalidArgument / NotFound / ResourceExhausted / DataLoss for bad
// input (naming the file, line and field), Internal for failures of the computation itself.
absl::StatusOr<EvalReport> RunEval(const EvalOptions& options);

// The one JSON object llava-eval --json prints: accuracy (null when there are no
// multiple-choice samples), mean_loss, num_samples, num_multiple_choice, samples_per_second,
// gflops_per_sample, dense_gflops_per_sample, per_type (only when some sample has a type), model,
// samples, samples_sha256, device, device_name, threads, batch.
std::string EvalReportJson(const EvalReport& report);
// A human-readable table of the same numbers.
std::string EvalReportTable(const EvalReport& report);

struct GenerateCliOptions {
  std::string model_dir;  // a model directory, or an artifact directory (its model/)
  std::string image_path;
  std::string prompt;
  int max_new_tokens = 32;
  // false: the prompt is wrapped as "USER: <image>\n{prompt} ASSISTANT:"; true: used as is and
  // must contain exactly one "<image>".
  bool raw = false;
  int threads = 0;
  std::string device = "cpu";
  // Called as the text grows, with the new part (streaming); may be empty. The concatenation
  // of the calls is a prefix of RunGenerate's result.
  std::function<void(absl::string_view)> on_text;
};

// Greedy decoding (KV cache) of one image + prompt; returns the decoded new text. Generated ids
// the tokenizer cannot decode (embedding rows past its vocabulary) are skipped. The answer is
// capped at the model's context (max_position_embeddings minus the prompt's tokens, the image's
// expanded ones included) with a warning; a prompt that fills the context is InvalidArgument.
absl::StatusOr<std::string> RunGenerate(const GenerateCliOptions& options);

// The status as one line (newlines replaced), for "llava-eval: error: ..." messages.
std::string OneLineError(const absl::Status& status);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_LLAVA_EVAL_H_
