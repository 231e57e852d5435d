// The function table libprunesvc_spm.so (sentencepiece_shim.cc) exports to
// sentencepiece_model.cc; see sentencepiece_shim.cc for why sentencepiece lives in a module.
// Only std types: this header is shared by both sides of the dlopen boundary.
#ifndef PRUNESVC_WORKER_MODEL_SENTENCEPIECE_SHIM_H_
#define PRUNESVC_WORKER_MODEL_SENTENCEPIECE_SHIM_H_

#include <cstddef>
#include <string>
#include <vector>

// Bumped whenever the table changes, so a stale module is refused instead of misused.
inline constexpr int kPrunesvcSpmApiVersion = 1;

struct PrunesvcSpmApi {
  int version;
  // Returns a handle, or null with *error set.
  void* (*load)(const char* data, size_t size, std::string* error);
  void (*free)(void* handle);
  int (*size)(void* handle);
  int (*unk_id)(void* handle);
  int (*bos_id)(void* handle);
  int (*eos_id)(void* handle);
  int (*pad_id)(void* handle);
  void (*id_to_piece)(void* handle, int id, std::string* out);
  bool (*is_control)(void* handle, int id);
  bool (*is_unknown)(void* handle, int id);
  int (*piece_to_id)(void* handle, const char* piece, size_t size);
  bool (*encode)(void* handle, const char* text, size_t size, std::vector<int>* ids,
                 std::string* error);
  bool (*decode)(void* handle, const std::vector<int>* ids, std::string* text, std::string* error);
};

extern "C" {
using PrunesvcSpmApiFn = const PrunesvcSpmApi* (*)();
}

#endif  // PRUNESVC_WORKER_MODEL_SENTENCEPIECE_SHIM_H_
