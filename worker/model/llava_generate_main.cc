// llava-generate: greedy decoding (KV cache) of one image + prompt with a LLaVA model directory.
// Streams the generated text to stdout as it is decoded; logs go to stderr. Exit codes:
// common/cli_exit.h (0 ok, 2 bad input, 1 other).
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/string_view.h"
#include "common/cli_exit.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/malloc_tuning.h"
#include "worker/model/llava_eval.h"

ABSL_FLAG(std::string, model, "", "LLaVA model directory, or a prunesvc artifact directory");
ABSL_FLAG(std::string, image, "", "image file (PNG or JPEG)");
ABSL_FLAG(std::string, prompt, "",
          "question; wrapped as 'USER: <image>\\n{prompt} ASSISTANT:' unless --raw");
ABSL_FLAG(int, max_new_tokens, 32,
          "maximum number of generated tokens (capped at the model's context: "
          "max_position_embeddings minus the prompt's tokens)");
ABSL_FLAG(bool, raw, false, "use --prompt as the full prompt (must contain one <image>)");
ABSL_FLAG(int, threads, 0, "torch intra-op threads (0 = number of cores)");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, cuda or cuda:N (a CUDA build of libtorch; docs/gpu.md)");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  prunesvc::ParseFlags(
      argc, argv,
      "llava-generate --model DIR --image FILE --prompt TEXT [--max-new-tokens 32] [--raw]\n\n"
      "Prompt template (LLaVA-1.5, llava-hf model-card format, no system prompt):\n"
      "  USER: <image>\\n{prompt} ASSISTANT:\n"
      "--prompt is the question only; --raw passes the whole prompt (exactly one <image>).\n"
      "The bundled tiny model (models/tiny-llava-shapes) was trained on shapes-vqa's questions,\n"
      "e.g. --prompt $'What color is the circle?\\nA. red\\nB. blue\\nC. green\\nD. yellow\\n"
      "Answer with the option\\'s letter from the given choices directly.'");
  prunesvc::InitLogging("llava-generate", absl::GetFlag(FLAGS_log_level));
  prunesvc::model::GenerateCliOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.image_path = absl::GetFlag(FLAGS_image);
  options.prompt = absl::GetFlag(FLAGS_prompt);
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  options.raw = absl::GetFlag(FLAGS_raw);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.device = absl::GetFlag(FLAGS_device);
  if (options.model_dir.empty() || options.image_path.empty() || options.prompt.empty()) {
    std::fprintf(stderr,
                 "llava-generate: error: --model, --image and --prompt are required "
                 "(see llava-generate --help for the prompt template)\n");
    return prunesvc::kExitUsage;
  }
  options.on_text = [](absl::string_view delta) {
    std::fwrite(delta.data(), 1, delta.size(), stdout);
    std::fflush(stdout);
  };
  auto text = prunesvc::model::RunGenerate(options);
  if (!text.ok()) {
    std::fprintf(stderr, "llava-generate: error: %s\n",
                 prunesvc::model::OneLineError(text.status()).c_str());
    return prunesvc::ExitCodeForStatus(text.status());
  }
  std::fputc('\n', stdout);
  return std::fflush(stdout) == 0 ? prunesvc::kExitOk : prunesvc::kExitFailure;
}
