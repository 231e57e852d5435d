// Loads Debian's libsentencepiece through the libprunesvc_spm.so module (sentencepiece_shim.cc)
// so it never shares a symbol scope with libtorch's protobuf; see sentencepiece_shim.cc.
#include "worker/model/sentencepiece_model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "worker/model/sentencepiece_shim.h"

namespace prunesvc::model {
namespace {

constexpr char kModuleName[] = "libprunesvc_spm.so";

std::string ExeDir() {
  std::string buf(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  buf.resize(n);
  const size_t slash = buf.rfind('/');
  return slash == std::string::npos ? "" : buf.substr(0, slash);
}

// Candidate locations, most specific first: an explicit override, next to the executable (build/
// bin and installed binaries), $PRUNESVC_BIN (tests run from build/tests), the build tree.
std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* p = std::getenv("PRUNESVC_SPM_MODULE"); p != nullptr && *p) out.push_back(p);
  if (std::string dir = ExeDir(); !dir.empty()) out.push_back(dir + "/" + kModuleName);
  if (const char* p = std::getenv("PRUNESVC_BIN"); p != nullptr && *p) {
    out.push_back(std::string(p) + "/" + kModuleName);
  }
#ifdef PRUNESVC_SPM_MODULE_PATH
  out.push_back(PRUNESVC_SPM_MODULE_PATH);
#endif
  return out;
}

struct LoadedApi {
  const PrunesvcSpmApi* api = nullptr;
  std::string error;
};

const LoadedApi& Api() {
  static const LoadedApi* loaded = [] {
    auto* l = new LoadedApi();
    std::string tried;
    for (const std::string& path : Candidates()) {
      if (access(path.c_str(), R_OK) != 0) {
        tried += " " + path + " (missing)";
        continue;
      }
      // RTLD_LOCAL keeps sentencepiece's protobuf out of the global scope; RTLD_DEEPBIND makes
      // the module and libsentencepiece resolve to their own definitions first.
      void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h == nullptr) {
        const char* e = dlerror();
        tried += " " + path + " (" + (e ? e : "dlopen failed") + ")";
        continue;
      }
      auto fn = reinterpret_cast<PrunesvcSpmApiFn>(dlsym(h, "prunesvc_spm_api"));
      const PrunesvcSpmApi* api = fn ? fn() : nullptr;
      if (api == nullptr || api->version != kPrunesvcSpmApiVersion) {
        tried += " " + path + " (not a compatible prunesvc sentencepiece module)";
        continue;
      }
      l->api = api;
      return l;
    }
    l->error = "cannot load the sentencepiece module " + std::string(kModuleName) +
               "; tried:" + tried + " (set PRUNESVC_SPM_MODULE to its path)";
    return l;
  }();
  return *loaded;
}

}  // namespace

struct SentencePieceModel::Impl {
  const PrunesvcSpmApi* api = nullptr;
  void* handle = nullptr;
  ~Impl() {
    if (handle != nullptr) api->free(handle);
  }
};

SentencePieceModel::SentencePieceModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::FromSerialized(std::string_view bytes,
                                                                       std::string* error) {
  const LoadedApi& loaded = Api();
  if (loaded.api == nullptr) {
    *error = loaded.error;
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->api = loaded.api;
  impl->handle = loaded.api->load(bytes.data(), bytes.size(), error);
  if (impl->handle == nullptr) return nullptr;
  return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(std::move(impl)));
}

int SentencePieceModel::size() const { return impl_->api->size(impl_->handle); }
int SentencePieceModel::unk_id() const { return impl_->api->unk_id(impl_->handle); }
int SentencePieceModel::bos_id() const { return impl_->api->bos_id(impl_->handle); }
int SentencePieceModel::eos_id() const { return impl_->api->eos_id(impl_->handle); }
int SentencePieceModel::pad_id() const { return impl_->api->pad_id(impl_->handle); }
std::string SentencePieceModel::IdToPiece(int id) const {
  std::string out;
  impl_->api->id_to_piece(impl_->handle, id, &out);
  return out;
}
bool SentencePieceModel::IsControl(int id) const {
  return impl_->api->is_control(impl_->handle, id);
}
bool SentencePieceModel::IsUnknown(int id) const {
  return impl_->api->is_unknown(impl_->handle, id);
}
int SentencePieceModel::PieceToId(std::string_view piece) const {
  return impl_->api->piece_to_id(impl_->handle, piece.data(), piece.size());
}

bool SentencePieceModel::Encode(std::string_view text, std::vector<int>* ids,
                                std::string* error) const {
  ids->clear();
  return impl_->api->encode(impl_->handle, text.data(), text.size(), ids, error);
}

bool SentencePieceModel::Decode(const std::vector<int>& ids, std::string* text,
                                std::string* error) const {
  return impl_->api->decode(impl_->handle, &ids, text, error);
}

}  // namespace prunesvc::model
