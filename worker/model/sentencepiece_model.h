// Narrow wrapper around Debian's libsentencepiece (0.1.97). Its public header declares
// `namespace absl { using std::string_view; }`, which clashes with abseil's own
// absl::string_view class (Debian builds abseil with ABSL_OPTION_USE_STD_STRING_VIEW 0), so the
// sentencepiece header is included only in sentencepiece_model.cc and this interface uses std
// types alone. Internal to prunesvc_model_tokenizer; use Tokenizer instead.
// libsentencepiece itself is reached only through the libprunesvc_spm.so module (dlopen with
// RTLD_DEEPBIND), because its embedded protobuf clashes with libtorch's (sentencepiece_shim.cc);
// a missing module makes FromSerialized fail with an error naming where it looked.
// Thread-safety: const methods are safe to call concurrently (sentencepiece's are).
#ifndef PRUNESVC_WORKER_MODEL_SENTENCEPIECE_MODEL_H_
#define PRUNESVC_WORKER_MODEL_SENTENCEPIECE_MODEL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace prunesvc::model {

class SentencePieceModel {
 public:
  // Parses a serialized ModelProto. On failure returns null and sets *error.
  static std::unique_ptr<SentencePieceModel> FromSerialized(std::string_view bytes,
                                                            std::string* error);
  ~SentencePieceModel();

  int size() const;
  int unk_id() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;  // -1 when the model has none
  int pad_id() const;  // -1 when the model has none
  // Precondition for the id accessors: 0 <= id < size().
  std::string IdToPiece(int id) const;
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;
  // unk_id() when the piece is not in the vocabulary.
  int PieceToId(std::string_view piece) const;

  // Plain sentencepiece encoding (normalizer and dummy prefix as the model specifies).
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  // Precondition: every id in [0, size()).
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const;

 private:
  struct Impl;
  explicit SentencePieceModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_SENTENCEPIECE_MODEL_H_
