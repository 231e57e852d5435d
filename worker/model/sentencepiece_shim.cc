// The only code that touches Debian's libsentencepiece: built as a MODULE
// (libprunesvc_spm.so) that sentencepiece_model.cc loads with dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why: libsentencepiece.so.0 embeds its own protobuf-lite 3.14 and exports those symbols, while
// libtorch pulls in libprotobuf.so.32 (3.21). Linked into one process, whichever comes first in
// the global symbol scope serves both: protobuf 3.21's static initialisers crash inside
// sentencepiece's copy, or sentencepiece aborts on protobuf's version check. Loaded locally with
// DEEPBIND, sentencepiece binds to its own protobuf and libtorch to the system one.
//
// The interface is a table of C functions (no symbols but prunesvc_spm_api are looked up);
// strings and vectors cross it by pointer, which is safe because both sides share the process's
// one libstdc++. Thread-safety: as sentencepiece's const methods (safe concurrently).
#include "worker/model/sentencepiece_shim.h"

#include <sentencepiece_processor.h>

#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Processor = sentencepiece::SentencePieceProcessor;
Processor* P(void* h) { return static_cast<Processor*>(h); }

void* Load(const char* data, size_t size, std::string* error) {
  try {
    auto sp = std::make_unique<Processor>();
    const auto status = sp->LoadFromSerializedProto(std::string_view(data, size));
    if (!status.ok()) {
      *error = status.ToString();
      return nullptr;
    }
    if (sp->GetPieceSize() <= 0) {
      *error = "the model has no pieces";
      return nullptr;
    }
    return sp.release();
  } catch (const std::exception& e) {  // protobuf may throw (e.g. bad_alloc) on hostile input
    *error = e.what();
    return nullptr;
  }
}

void Free(void* h) { delete P(h); }
int Size(void* h) { return P(h)->GetPieceSize(); }
int UnkId(void* h) { return P(h)->unk_id(); }
int BosId(void* h) { return P(h)->bos_id(); }
int EosId(void* h) { return P(h)->eos_id(); }
int PadId(void* h) { return P(h)->pad_id(); }
void IdToPiece(void* h, int id, std::string* out) { *out = P(h)->IdToPiece(id); }
bool IsControl(void* h, int id) { return P(h)->IsControl(id); }
bool IsUnknown(void* h, int id) { return P(h)->IsUnknown(id); }
int PieceToId(void* h, const char* piece, size_t size) {
  return P(h)->PieceToId(std::string_view(piece, size));
}

bool Encode(void* h, const char* text, size_t size, std::vector<int>* ids, std::string* error) {
  try {
    const auto status = P(h)->Encode(std::string_view(text, size), ids);
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

bool Decode(void* h, const std::vector<int>* ids, std::string* text, std::string* error) {
  try {
    const auto status = P(h)->Decode(*ids, text);
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

const PrunesvcSpmApi kApi = {
    kPrunesvcSpmApiVersion,
    Load,
    Free,
    Size,
    UnkId,
    BosId,
    EosId,
    PadId,
    IdToPiece,
    IsControl,
    IsUnknown,
    PieceToId,
    Encode,
    Decode,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const PrunesvcSpmApi* prunesvc_spm_api() {
  return &kApi;
}
