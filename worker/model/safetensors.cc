#include "worker/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace prunesvc::model {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // HF's reader uses the same 100 MB cap.
// top object (0) → tensor entry (1) → shape / data_offsets array (2) → numbers (3).
constexpr int kMaxJsonDepth = 3;

struct DTypeEntry {
  absl::string_view name;
  size_t size;
  DType dtype;
};
// Every dtype of the safetensors spec (sub-byte F4/F6 types are omitted: their byte size is not
// an integer per element, and no LLaVA checkpoint uses them).
constexpr DTypeEntry kDTypes[] = {
    {"F32", 4, DType::kF32},      {"F16", 2, DType::kF16},       {"BF16", 2, DType::kBF16},
    {"F64", 8, DType::kOther},    {"I64", 8, DType::kOther},     {"U64", 8, DType::kOther},
    {"I32", 4, DType::kOther},    {"U32", 4, DType::kOther},     {"I16", 2, DType::kOther},
    {"U16", 2, DType::kOther},    {"I8", 1, DType::kOther},      {"U8", 1, DType::kOther},
    {"BOOL", 1, DType::kOther},   {"F8_E4M3", 1, DType::kOther}, {"F8_E5M2", 1, DType::kOther},
    {"F8_E8M0", 1, DType::kOther}};

const DTypeEntry* FindDType(absl::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

// Debian's abseil is built with its own absl::string_view; the public API uses std's.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;  // little-endian host (static_assert in the header)
}

std::string Quote(absl::string_view s) {
  // Tensor names come from untrusted files; keep messages printable and bounded.
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < 200; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += absl::StrCat("\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (s.size() > 200) out += "...";
  return out + "'";
}

// Reads a JSON non-negative integer. nlohmann stores non-negative literals as unsigned.
bool AsUint64(const nlohmann::json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

absl::Status ParseEntry(absl::string_view source, const std::string& name, const nlohmann::json& v,
                        uint64_t data_size, TensorInfo* info) {
  auto err = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", Quote(name), ": ", what));
  };
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": empty tensor name in header"));
  }
  if (!v.is_object()) return err("header entry is not a JSON object");
  auto dt = v.find("dtype");
  auto sh = v.find("shape");
  auto off = v.find("data_offsets");
  if (dt == v.end()) return err("missing \"dtype\"");
  if (sh == v.end()) return err("missing \"shape\"");
  if (off == v.end()) return err("missing \"data_offsets\"");
  if (!dt->is_string()) return err("\"dtype\" is not a string");
  info->name = name;
  info->dtype_name = dt->get<std::string>();
  const DTypeEntry* entry = FindDType(info->dtype_name);
  if (entry == nullptr) return err(absl::StrCat("unknown dtype ", Quote(info->dtype_name)));
  info->dtype = entry->dtype;

  if (!sh->is_array()) return err("\"shape\" is not an array");
  uint64_t elements = 1;
  bool overflow = false, has_zero_dim = false;
  for (const nlohmann::json& d : *sh) {
    uint64_t dim;
    if (!AsUint64(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
      return err("\"shape\" must hold non-negative integers");
    }
    info->shape.push_back(static_cast<int64_t>(dim));
    if (dim == 0) has_zero_dim = true;
    if (__builtin_mul_overflow(elements, dim, &elements)) overflow = true;
  }
  // A zero dim makes the product 0 even if an earlier partial product overflowed.
  if (has_zero_dim) {
    overflow = false;
    elements = 0;
  }
  uint64_t bytes = 0;
  if (!overflow && __builtin_mul_overflow(elements, entry->size, &bytes)) overflow = true;

  if (!off->is_array() || off->size() != 2 || !AsUint64((*off)[0], &info->begin) ||
      !AsUint64((*off)[1], &info->end)) {
    return err("\"data_offsets\" must be [begin, end] with non-negative integers");
  }
  if (info->begin > info->end) {
    return err(absl::StrCat("data_offsets begin ", info->begin, " > end ", info->end));
  }
  if (info->end > data_size) {
    return err(absl::StrCat("data_offsets [", info->begin, ", ", info->end,
                            "] run past the end of the data section (", data_size, " bytes)"));
  }
  if (overflow || bytes != info->end - info->begin) {
    std::string shape_str;
    for (size_t i = 0; i < info->shape.size(); ++i) {
      absl::StrAppend(&shape_str, i ? ", " : "", info->shape[i]);
    }
    return err(absl::StrCat("shape [", shape_str, "] x ", info->dtype_name, " (", entry->size,
                            " bytes) = ", overflow ? "overflow" : absl::StrCat(bytes),
                            " bytes but data_offsets span ", info->end - info->begin, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kOther:
      break;
  }
  return "other";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kOther:
      break;
  }
  return 0;
}

absl::StatusOr<DType> DTypeFromName(std::string_view name_std) {
  absl::string_view name = Sv(name_std);
  const DTypeEntry* e = FindDType(name);
  if (e == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown dtype ", Quote(name)));
  return e->dtype;
}

size_t DTypeNameSize(std::string_view name_std) {
  absl::string_view name = Sv(name_std);
  const DTypeEntry* e = FindDType(name);
  return e == nullptr ? 0 : e->size;
}

uint64_t TensorInfo::num_elements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensors(absl::Span<const uint8_t> file,
                                                   std::string_view source_name) {
  const absl::string_view source = Sv(source_name);
  if (file.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": truncated: ", file.size(),
                                                   " bytes, too short for the 8-byte header "
                                                   "length"));
  }
  const uint64_t n = ReadLe64(file.data());
  if (n < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header length ", n, " is too small for a JSON object"));
  }
  if (n > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", n,
                                                   " exceeds the limit of ", kMaxHeaderBytes,
                                                   " bytes (corrupt or not a safetensors file)"));
  }
  if (n > file.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", n,
                                                   " runs past the end of the file (", file.size(),
                                                   " bytes): truncated?"));
  }
  const char* text = reinterpret_cast<const char*>(file.data() + 8);

  // The callback rejects duplicate keys (nlohmann would silently keep the last) and deep nesting
  // (no valid header is deeper than 3), so a hostile header cannot build a huge DOM.
  std::string json_error;
  std::vector<std::set<std::string>> key_stack;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (!json_error.empty()) return false;
    if ((event == E::object_start || event == E::array_start) && depth >= kMaxJsonDepth) {
      json_error = "JSON header nested too deeply";
      return false;
    }
    if (event == E::object_start) key_stack.emplace_back();
    if (event == E::object_end && !key_stack.empty()) key_stack.pop_back();
    if (event == E::key && !key_stack.empty() && parsed.is_string()) {
      if (!key_stack.back().insert(parsed.get<std::string>()).second) {
        json_error =
            absl::StrCat("duplicate key ", Quote(parsed.get<std::string>()), " in JSON header");
        return false;
      }
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, text + n, callback, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header is not valid JSON: ", e.what()));
  }
  if (!json_error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", json_error));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header is not a JSON object"));
  }

  SafetensorsHeader out;
  out.data_offset = 8 + n;
  out.data_size = file.size() - out.data_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {  // std::map: sorted by name
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": __metadata__ is not a JSON object"));
      }
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(source, ": __metadata__ value for ",
                                                         Quote(m.key()), " is not a string"));
        }
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TensorInfo info;
    RETURN_IF_ERROR(ParseEntry(source, it.key(), it.value(), out.data_size, &info));
    out.tensors.push_back(std::move(info));
  }

  // Overlap check on non-empty spans, in offset order.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : out.tensors) {
    if (t.begin != t.end) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    if (b.begin < a.end) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor ", Quote(b.name), " data [", b.begin, ", ", b.end,
                       ") overlaps tensor ", Quote(a.name), " data [", a.begin, ", ", a.end, ")"));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(std::string path, const uint8_t* data, size_t size,
                                 SafetensorsHeader header)
    : path_(std::move(path)), data_(data), size_(size), header_(std::move(header)) {}

SafetensorsFile::~SafetensorsFile() {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(e));
    return e == ENOENT ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(e)));
    }
    // Loading reads each tensor once, front to back.
    madvise(p, size, MADV_SEQUENTIAL);
    data = static_cast<const uint8_t*>(p);
  }
  close(fd);  // the mapping stays valid
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensors(absl::Span<const uint8_t>(data, size), path);
  if (!header.ok()) {
    if (data != nullptr) munmap(const_cast<uint8_t*>(data), size);
    return header.status();
  }
  return std::unique_ptr<SafetensorsFile>(
      new SafetensorsFile(path, data, size, *std::move(header)));
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(header_.tensors.begin(), header_.tensors.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == header_.tensors.end() || it->name != name) return nullptr;
  return &*it;
}

absl::Span<const uint8_t> SafetensorsFile::Bytes(const TensorInfo& info) const {
  // Defensive: a TensorInfo from another file must not read outside this mapping.
  if (info.begin > info.end || info.end > header_.data_size) return {};
  return absl::Span<const uint8_t>(data_ + header_.data_offset + info.begin, info.end - info.begin);
}

absl::Status SafetensorsFile::ReadAsFloat32(const TensorInfo& info, absl::Span<float> out) const {
  if (info.dtype == DType::kOther) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor ", Quote(info.name), " has dtype ", info.dtype_name,
                     ", which is not supported for weights (expected F32, F16 or BF16)"));
  }
  absl::Status s = ConvertToFloat32(info.dtype, Bytes(info), out);
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor ", Quote(info.name), ": ", s.message()));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Conversion

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant × 2^-24, exactly representable in float
      float f = std::ldexp(static_cast<float>(mant), -24);
      return sign ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN (payload kept)
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

float BFloat16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

absl::Status ConvertToFloat32(DType dtype, absl::Span<const uint8_t> bytes, absl::Span<float> out) {
  const size_t esize = DTypeSize(dtype);
  if (esize == 0) return absl::InvalidArgumentError("not a float dtype (F32, F16, BF16)");
  if (bytes.size() != out.size() * esize) {
    return absl::InvalidArgumentError(absl::StrCat("size mismatch: ", bytes.size(), " bytes for ",
                                                   out.size(), " elements of ",
                                                   Sv(DTypeName(dtype))));
  }
  const uint8_t* p = bytes.data();
  switch (dtype) {
    case DType::kF32:
      if (!out.empty()) std::memcpy(out.data(), p, bytes.size());
      break;
    case DType::kF16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);  // unaligned in general
        out[i] = HalfToFloat(h);
      }
      break;
    case DType::kBF16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        out[i] = BFloat16ToFloat(b);
      }
      break;
    case DType::kOther:
      break;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t w = write(fd, p, std::min<size_t>(size, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat(path, ": write failed: ", std::strerror(errno)));
    }
    p += w;
    size -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<WriteTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const WriteTensor*> sorted;
  for (const WriteTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const WriteTensor* a, const WriteTensor* b) { return a->name < b->name; });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const WriteTensor& t = *sorted[i];
    auto err = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": cannot write tensor ", Quote(t.name), ": ", what));
    };
    if (t.name.empty()) return err("empty name");
    if (t.name == "__metadata__") return err("reserved name");
    if (i > 0 && sorted[i - 1]->name == t.name) return err("duplicate name");
    std::string dtype_name =
        t.dtype == DType::kOther ? t.dtype_name : std::string(DTypeName(t.dtype));
    const size_t esize = DTypeNameSize(dtype_name);
    if (esize == 0) return err(absl::StrCat("unknown dtype ", Quote(dtype_name)));
    uint64_t bytes = esize;
    nlohmann::ordered_json shape = nlohmann::ordered_json::array();
    for (int64_t d : t.shape) {
      if (d < 0) return err("negative dimension");
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
        return err("size overflows");
      }
      shape.push_back(d);
    }
    if (bytes != t.data.size()) {
      return err(absl::StrCat("shape needs ", bytes, " bytes but ", t.data.size(), " given"));
    }
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name;
    entry["shape"] = std::move(shape);
    entry["data_offsets"] = nlohmann::ordered_json::array({offset, offset + bytes});
    header[t.name] = std::move(entry);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // HF pads so the data section is 8-aligned
  uint8_t len[8];
  const uint64_t n = text.size();
  std::memcpy(len, &n, 8);

  const std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  absl::Status s = WriteAll(fd, len, 8, tmp);
  if (s.ok()) s = WriteAll(fd, text.data(), text.size(), tmp);
  for (size_t i = 0; s.ok() && i < sorted.size(); ++i) {
    s = WriteAll(fd, sorted[i]->data.data(), sorted[i]->data.size(), tmp);
  }
  if (s.ok() && fsync(fd) != 0) {
    s = absl::InternalError(absl::StrCat(tmp, ": fsync failed: ", std::strerror(errno)));
  }
  if (close(fd) != 0 && s.ok()) {
    s = absl::InternalError(absl::StrCat(tmp, ": close failed: ", std::strerror(errno)));
  }
  if (s.ok() && rename(tmp.c_str(), path.c_str()) != 0) {
    s = absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  if (!s.ok()) unlink(tmp.c_str());
  return s;
}

}  // namespace prunesvc::model
