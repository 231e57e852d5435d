// The only code that touches libsentencepiece_train: built as a MODULE (libprunesvc_spm_train.so)
// that sentencepiece_trainer.cc loads with dlopen(RTLD_LOCAL | RTLD_DEEPBIND), for the reason
// worker/model/sentencepiece_shim.cc gives (libsentencepiece's embedded protobuf-lite 3.14
// against libtorch's libprotobuf 3.21 in one process crashes at static initialisation). Only std
// and sentencepiece headers here; the one exported symbol is the C function below, and std types
// cross it by pointer (both sides share the process's libstdc++).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <exception>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

// Exported by libsentencepiece (not declared in its public headers).
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}  // namespace sentencepiece::logging

namespace {

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& sentences) : sentences_(sentences) {}
  bool done() const override { return index_ >= sentences_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return sentences_[index_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  const std::vector<std::string>& sentences_;
  size_t index_ = 0;
};

}  // namespace

extern "C" __attribute__((visibility("default"))) bool prunesvc_spm_train(
    const std::vector<std::string>& sentences, const std::map<std::string, std::string>& flags,
    std::string* serialized_model, int* num_pieces, std::string* error) {
  try {
    // Silence the trainer's progress logging (std::cerr): under RTLD_DEEPBIND the module binds
    // to libstdc++'s own std::cerr, which is not the constructed one when the executable holds a
    // copy-relocated std::cerr (gtest binaries do), so any write would crash. 3 = FATAL only.
    sentencepiece::logging::SetMinLogLevel(3);
    std::unordered_map<std::string, std::string> kwargs(flags.begin(), flags.end());
    VectorIterator it(sentences);
    const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &it, serialized_model);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    sentencepiece::SentencePieceProcessor sp;
    const auto loaded = sp.LoadFromSerializedProto(*serialized_model);
    if (!loaded.ok()) {
      *error = loaded.ToString();
      return false;
    }
    *num_pieces = sp.GetPieceSize();
    return true;
  } catch (const std::exception& e) {
    *error = e.what();
    return false;
  }
}
