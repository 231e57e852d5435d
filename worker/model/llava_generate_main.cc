// llava-generate: greedy decoding (KV cache) of one image + prompt with a LLaVA model directory.
// Prints the generated text on stdout; logs go to stderr. Exit codes: 0 ok, 2 bad input, 1 other.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "common/cli_exit.h"
#include "common/flags.h"
#include "common/logging.h"
#include "worker/model/llava_eval.h"

ABSL_FLAG(std::string, model, "", "LLaVA model directory");
ABSL_FLAG(std::string, image, "", "image file (PNG or JPEG)");
ABSL_FLAG(std::string, prompt, "",
          "question; wrapped as 'USER: <image>\\n{prompt} ASSISTANT:' unless --raw");
ABSL_FLAG(int, max_new_tokens, 32, "maximum number of generated tokens");
ABSL_FLAG(bool, raw, false, "use --prompt as the full prompt (must contain one <image>)");
ABSL_FLAG(int, threads, 0, "torch intra-op threads (0 = number of cores)");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, cuda or cuda:N (a CUDA build of libtorch; docs/gpu.md)");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

int main(int argc, char** argv) {
  prunesvc::ParseFlags(argc, argv,
                       "llava-generate --model DIR --image FILE --prompt TEXT "
                       "[--max-new-tokens 32] [--raw]");
  prunesvc::InitLogging("llava-generate", absl::GetFlag(FLAGS_log_level));
  prunesvc::model::GenerateCliOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.image_path = absl::GetFlag(FLAGS_image);
  options.prompt = absl::GetFlag(FLAGS_prompt);
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  options.raw = absl::GetFlag(FLAGS_raw);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.device = absl::GetFlag(FLAGS_device);
  if (options.model_dir.empty() || options.image_path.empty()) {
    std::fprintf(stderr, "llava-generate: error: --model and --image are required\n");
    return 2;
  }
  auto text = prunesvc::model::RunGenerate(options);
  if (!text.ok()) {
    std::fprintf(stderr, "llava-generate: error: %s\n",
                 prunesvc::model::OneLineError(text.status()).c_str());
    return prunesvc::ExitCodeForStatus(text.status());
  }
  std::printf("%s\n", text->c_str());
  return std::fflush(stdout) == 0 ? 0 : 1;
}
