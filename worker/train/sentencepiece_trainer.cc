// Loads libprunesvc_spm_train.so (sentencepiece_train_shim.cc) and forwards to it.
#include "worker/train/sentencepiece_trainer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace prunesvc::train {
namespace {

constexpr char kModuleName[] = "libprunesvc_spm_train.so";
using TrainFn = bool (*)(const std::vector<std::string>&, const std::map<std::string, std::string>&,
                         std::string*, int*, std::string*);

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* p = std::getenv("PRUNESVC_SPM_TRAIN_MODULE"); p != nullptr && *p) {
    out.push_back(p);
  }
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) out.push_back((exe.parent_path() / kModuleName).string());
  if (const char* p = std::getenv("PRUNESVC_BIN"); p != nullptr && *p) {
    out.push_back(std::string(p) + "/" + kModuleName);
  }
#ifdef PRUNESVC_SPM_TRAIN_MODULE_PATH
  out.push_back(PRUNESVC_SPM_TRAIN_MODULE_PATH);
#endif
  return out;
}

}  // namespace

bool TrainSentencePiece(const std::vector<std::string>& sentences,
                        const std::map<std::string, std::string>& flags,
                        std::string* serialized_model, int* num_pieces, std::string* error) {
  static TrainFn fn = nullptr;
  static std::string load_error;
  static bool tried = false;
  if (!tried) {
    tried = true;
    std::string attempts;
    for (const std::string& path : Candidates()) {
      if (access(path.c_str(), R_OK) != 0) {
        attempts += " " + path + " (missing)";
        continue;
      }
      void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h == nullptr) {
        const char* e = dlerror();
        attempts += " " + path + " (" + (e ? e : "dlopen failed") + ")";
        continue;
      }
      fn = reinterpret_cast<TrainFn>(dlsym(h, "prunesvc_spm_train"));
      if (fn != nullptr) break;
      attempts += " " + path + " (no prunesvc_spm_train symbol)";
    }
    if (fn == nullptr) {
      load_error = "cannot load the sentencepiece trainer module " + std::string(kModuleName) +
                   "; tried:" + attempts + " (set PRUNESVC_SPM_TRAIN_MODULE to its path)";
    }
  }
  if (fn == nullptr) {
    *error = load_error;
    return false;
  }
  return fn(sentences, flags, serialized_model, num_pieces, error);
}

}  // namespace prunesvc::train
