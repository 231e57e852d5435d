// SHA-256 (FIPS 180-4), used to content-address sample sets, artifacts and uploads. A small
// self-contained implementation so torch-free and client code need no crypto library.
// Thread-compatible: one Sha256 object per thread; the free function is thread-safe.
#ifndef PRUNESVC_COMMON_SHA256_H_
#define PRUNESVC_COMMON_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/types/span.h"

namespace prunesvc {

// Incremental hasher. Invariant: after Final() the object is reset to the empty-message state,
// so it can be reused.
class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256();

  void Update(absl::Span<const uint8_t> data);
  void Update(std::string_view data);
  Digest Final();

 private:
  void Reset();
  void Compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;     // bytes in buffer_, < 64
  uint64_t total_len_ = 0;  // message length in bytes so far
};

// Lower-case hex of a digest (64 characters).
std::string DigestHex(const Sha256::Digest& digest);

// One-shot helpers: lower-case hex digest of `data`.
std::string Sha256Hex(absl::Span<const uint8_t> data);
std::string Sha256Hex(std::string_view data);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_SHA256_H_
