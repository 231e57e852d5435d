// Only std and sentencepiece headers here: see sentencepiece_model.h for why.
#include "worker/model/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include <exception>

namespace prunesvc::model {

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceModel::SentencePieceModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::FromSerialized(std::string_view bytes,
                                                                       std::string* error) {
  try {
    auto impl = std::make_unique<Impl>();
    const auto status = impl->sp.LoadFromSerializedProto(bytes);
    if (!status.ok()) {
      *error = status.ToString();
      return nullptr;
    }
    if (impl->sp.GetPieceSize() <= 0) {
      *error = "the model has no pieces";
      return nullptr;
    }
    return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(std::move(impl)));
  } catch (const std::exception& e) {  // protobuf may throw (e.g. bad_alloc) on hostile input
    *error = e.what();
    return nullptr;
  }
}

int SentencePieceModel::size() const { return impl_->sp.GetPieceSize(); }
int SentencePieceModel::unk_id() const { return impl_->sp.unk_id(); }
int SentencePieceModel::bos_id() const { return impl_->sp.bos_id(); }
int SentencePieceModel::eos_id() const { return impl_->sp.eos_id(); }
int SentencePieceModel::pad_id() const { return impl_->sp.pad_id(); }
std::string SentencePieceModel::IdToPiece(int id) const { return impl_->sp.IdToPiece(id); }
bool SentencePieceModel::IsControl(int id) const { return impl_->sp.IsControl(id); }
bool SentencePieceModel::IsUnknown(int id) const { return impl_->sp.IsUnknown(id); }
int SentencePieceModel::PieceToId(std::string_view piece) const {
  return impl_->sp.PieceToId(piece);
}

bool SentencePieceModel::Encode(std::string_view text, std::vector<int>* ids,
                                std::string* error) const {
  try {
    const auto status = impl_->sp.Encode(text, ids);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    *error = e.what();
    return false;
  }
}

bool SentencePieceModel::Decode(const std::vector<int>& ids, std::string* text,
                                std::string* error) const {
  try {
    const auto status = impl_->sp.Decode(ids, text);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    *error = e.what();
    return false;
  }
}

}  // namespace prunesvc::model
