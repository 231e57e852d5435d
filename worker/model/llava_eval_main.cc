// llava-eval: scores a sample set with a LLaVA model directory (docs/architecture.md §4 "CLI
// outputs"). stdout carries only the result (a table, or exactly one JSON object with --json); logs
// and the progress bar go to stderr. Exit codes: 0 ok, 2 bad input (one-line error naming the
// problem), 1 other failures.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "common/cli_exit.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "worker/model/llava_eval.h"

ABSL_FLAG(std::string, model, "",
          "LLaVA model directory (config.json, weights, tokenizer), or a prunesvc artifact "
          "directory (its model/)");
ABSL_FLAG(std::string, samples, "", "sample set: directory or tar with samples.jsonl + images");
ABSL_FLAG(int, batch, 8, "samples per forward pass (results do not depend on it)");
ABSL_FLAG(int, threads, 0, "torch intra-op threads (0 = number of cores)");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, cuda or cuda:N (a CUDA build of libtorch; docs/gpu.md)");
ABSL_FLAG(std::string, dump_logits, "",
          "write float32 little-endian logits [N, vocab] at each last prompt position here");
ABSL_FLAG(bool, json, false, "print exactly one JSON object on stdout instead of a table");
ABSL_FLAG(int, limit, 0, "evaluate only the first N samples (0 = all)");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

namespace {

// "\r[#####.....] 40/100  12.5 samples/s  ETA 5s" on a terminal; otherwise a plain line at most
// every ~10% so redirected stderr stays readable.
class ProgressBar {
 public:
  ProgressBar() : tty_(isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()) {}

  void Update(int done, int total) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = secs > 0 ? done / secs : 0;
    const double eta = rate > 0 ? (total - done) / rate : 0;
    constexpr int kWidth = 30;
    const int filled = total > 0 ? kWidth * done / total : kWidth;
    const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
    if (tty_) {
      std::fprintf(stderr, "\r[%s] %d/%d  %.2f samples/s  ETA %.0fs ", bar.c_str(), done, total,
                   rate, eta);
      if (done == total) std::fputc('\n', stderr);
    } else if (done == total || done * 10 / std::max(total, 1) > last_decile_) {
      last_decile_ = done * 10 / std::max(total, 1);
      std::fprintf(stderr, "progress [%s] %d/%d  %.2f samples/s  ETA %.0fs\n", bar.c_str(), done,
                   total, rate, eta);
    }
    std::fflush(stderr);
  }

 private:
  const bool tty_;
  const std::chrono::steady_clock::time_point start_;
  int last_decile_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  prunesvc::ParseFlags(
      argc, argv,
      "llava-eval --model DIR --samples DIR|TAR [--batch N] [--threads N] [--device cpu|cuda:N] "
      "[--dump-logits FILE] [--json] [--limit N]");
  prunesvc::InitLogging("llava-eval", absl::GetFlag(FLAGS_log_level));
  prunesvc::model::EvalOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.samples_path = absl::GetFlag(FLAGS_samples);
  options.batch_size = absl::GetFlag(FLAGS_batch);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.device = absl::GetFlag(FLAGS_device);
  options.dump_logits = absl::GetFlag(FLAGS_dump_logits);
  options.limit = absl::GetFlag(FLAGS_limit);
  if (options.model_dir.empty() || options.samples_path.empty()) {
    std::fprintf(stderr, "llava-eval: error: --model and --samples are required\n");
    return prunesvc::kExitUsage;
  }
  ProgressBar progress;
  options.on_progress = [&progress](int done, int total) { progress.Update(done, total); };

  auto report = prunesvc::model::RunEval(options);
  if (!report.ok()) {
    std::fprintf(stderr, "llava-eval: error: %s\n",
                 prunesvc::model::OneLineError(report.status()).c_str());
    return prunesvc::ExitCodeForStatus(report.status());
  }
  const std::string out = absl::GetFlag(FLAGS_json) ? prunesvc::model::EvalReportJson(*report)
                                                    : prunesvc::model::EvalReportTable(*report);
  std::fputs(out.c_str(), stdout);
  if (out.empty() || out.back() != '\n') std::fputc('\n', stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}
