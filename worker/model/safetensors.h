// safetensors reader and writer (https://github.com/huggingface/safetensors format), torch-free so
// it can be fuzzed and linked anywhere.
//
// File layout: 8-byte little-endian header length N, N bytes of a JSON object mapping tensor names
// to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section that
// follows the header) plus an optional "__metadata__" string→string map, then the data.
//
// Validation is strict so that a hostile or damaged file yields a clear error naming the file and
// the tensor instead of a crash or an out-of-bounds read: N in [2, 100 MiB] and inside the file, a
// JSON object without duplicate keys, known dtypes, non-negative integer shapes, shape product ×
// dtype size == end − begin (overflow-checked), begin ≤ end ≤ data size, and no two non-empty
// spans overlap. Gaps between spans and trailing bytes are tolerated (they cannot cause an
// out-of-bounds read); the writer never produces them.
//
// Thread-safety: a SafetensorsFile is immutable after Open and may be read from any number of
// threads. The free functions are thread-safe. Byte order: little-endian hosts only (checked at
// compile time), as the format stores little-endian values.
#ifndef PRUNESVC_WORKER_MODEL_SAFETENSORS_H_
#define PRUNESVC_WORKER_MODEL_SAFETENSORS_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace prunesvc::model {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; big-endian hosts are not supported");

// Float dtypes the model runtime accepts for weights. Every other safetensors dtype (I64, BOOL,
// F64, ...) parses as kOther; its exact name is kept in TensorInfo::dtype_name.
enum class DType { kF32, kF16, kBF16, kOther };

// "F32", "F16", "BF16" or "other".
std::string_view DTypeName(DType dtype);
// Bytes per element: 4, 2, 2; 0 for kOther.
size_t DTypeSize(DType dtype);
// Maps a safetensors dtype string to DType ("I64" → kOther). Unknown strings → InvalidArgument.
absl::StatusOr<DType> DTypeFromName(std::string_view name);
// Bytes per element of any dtype the safetensors format defines ("BOOL" → 1, "F64" → 8, ...);
// 0 if the name is unknown.
size_t DTypeNameSize(std::string_view name);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kOther;
  std::string dtype_name;  // as written in the file, e.g. "BF16" or "I64"
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section (after the header)
  uint64_t end = 0;

  uint64_t num_elements() const;  // product of shape (1 for a scalar); fits: validated at parse
  uint64_t num_bytes() const { return end - begin; }
};

// The parsed header of a safetensors file.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + N: where the data section starts in the file
  uint64_t data_size = 0;    // file size − data_offset
};

// Parses and validates a whole safetensors file held in memory (`file` = every byte of the file).
// `source_name` (usually the path) prefixes every error message. Never reads outside `file`.
absl::StatusOr<SafetensorsHeader> ParseSafetensors(absl::Span<const uint8_t> file,
                                                   std::string_view source_name);

// A read-only memory-mapped safetensors file. Tensor bytes are served straight from the mapping,
// so loading a multi-GB shard does not copy it into the heap first.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }  // sorted by name
  const TensorInfo* Find(std::string_view name) const;                        // nullptr if absent
  // The tensor's raw little-endian bytes; `info` must come from this file. Not aligned in general.
  absl::Span<const uint8_t> Bytes(const TensorInfo& info) const;
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  // Converts a F32/F16/BF16 tensor to float32 into `out` (exactly num_elements() floats). Other
  // dtypes → InvalidArgument naming the file, tensor and dtype.
  absl::Status ReadAsFloat32(const TensorInfo& info, absl::Span<float> out) const;

 private:
  SafetensorsFile(std::string path, const uint8_t* data, size_t size, SafetensorsHeader header);

  const std::string path_;
  const uint8_t* const data_;  // the mapping (nullptr when size_ == 0)
  const size_t size_;
  const SafetensorsHeader header_;
};

// Converts `bytes` holding `out.size()` little-endian elements of `dtype` to float32. F16
// subnormals, infinities and NaNs are converted exactly. kOther or a size mismatch → error.
absl::Status ConvertToFloat32(DType dtype, absl::Span<const uint8_t> bytes, absl::Span<float> out);

// IEEE half / bfloat16 bit patterns → float (exact).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);

// A tensor to write. `data` must stay valid until WriteSafetensors returns.
struct WriteTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::string dtype_name;  // only read when dtype == kOther (e.g. "I64"); must be a known name
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> data;  // exactly product(shape) × element size bytes
};

// Writes a safetensors file as HuggingFace's writer lays it out: header padded with spaces to a
// multiple of 8 bytes, "__metadata__" first (omitted when empty), tensor data contiguous in name
// order. Writes `path + ".tmp"`, fsyncs, then renames over `path`, so readers never see a partial
// file. Duplicate or empty names, "__metadata__" as a tensor name, negative dims and size
// mismatches are errors (nothing is written then).
absl::Status WriteSafetensors(const std::string& path, const std::vector<WriteTensor>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_SAFETENSORS_H_
