// The project's pseudo-random number generator: xoshiro256** (Blackman & Vigna) seeded through
// splitmix64, with every derived draw (bounded integers, doubles, Bernoulli, shuffles, weighted
// choices) defined by this file's code alone. std:: distributions are implementation-defined, so
// a search seeded with them could pick different policies under another standard library; with
// these the pruning search replays bit for bit on every platform, across processes and after a
// checkpoint restore (docs/architecture.md §5, "Determinism").
//
// Thread-compatible: one Prng per thread or guarded by the caller. Copying a Prng copies its
// stream (both copies then produce the same values); use Fork() for independent sub-streams.
#ifndef PRUNESVC_COMMON_PRNG_H_
#define PRUNESVC_COMMON_PRNG_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace prunesvc {

// splitmix64's output function (a bijection on 64-bit values): z ^= z >> 30; z *= 0xbf58…;
// z ^= z >> 27; z *= 0x94d0…; z ^= z >> 31.
uint64_t Mix64(uint64_t x);

class Prng {
 public:
  // The four state words are successive splitmix64 outputs: x += 0x9e3779b97f4a7c15, Mix64(x).
  explicit Prng(uint64_t seed);
  // A raw state (checkpoint restore, known-answer tests). An all-zero state is the one state
  // xoshiro can never leave, so it is rejected.
  static absl::StatusOr<Prng> FromState(const std::array<uint64_t, 4>& state);
  const std::array<uint64_t, 4>& state() const { return s_; }
  // The state as 64 lowercase hex digits (four words, most significant nibble first) — JSON
  // numbers cannot carry 64-bit integers safely through every reader.
  std::string StateHex() const;
  static absl::StatusOr<Prng> FromStateHex(absl::string_view hex);

  // The next raw 64-bit output of xoshiro256**.
  uint64_t Next();

  // Uniform in [0, n), n > 0 (n == 0 returns 0 without drawing). Lemire's multiply-shift with
  // rejection: m = x·n (128-bit); if low64(m) < n, redraw while low64(m) < (2⁶⁴ − n) mod n;
  // return high64(m). Unbiased.
  uint64_t UniformInt(uint64_t n);

  // Uniform in [0, 1) on the 2⁻⁵³ grid: (Next() >> 11) · 2⁻⁵³.
  double UniformDouble();

  // UniformDouble() < p. Always draws exactly once, whatever p, so the stream position does not
  // depend on the probability.
  bool Bernoulli(double p);

  // Fisher–Yates from the back: for i = n−1 … 1, swap(v[i], v[UniformInt(i + 1)]).
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>(UniformInt(i));
      using std::swap;
      swap(v[i - 1], v[j]);
    }
  }

  // Index i with probability w[i] / Σw. Negative and non-finite weights count as 0. Draws once:
  // u = UniformDouble() · Σw (Σ accumulated left to right in double); returns the first i with
  // w[i] > 0 and u < w[0] + … + w[i] (same left-to-right accumulation); if rounding lets u pass
  // every prefix, the last index with w[i] > 0. If no weight is positive, falls back to
  // UniformInt(size) (still one draw). An empty span returns 0 without drawing.
  size_t WeightedIndex(std::span<const double> weights);

  // An independent stream derived from this one's current state and `stream_id`, without
  // advancing this one: h = Mix64(stream_id + 0x9e3779b97f4a7c15); for each state word w (in
  // order) h = Mix64(h ^ w); the child is Prng(h). Different ids give unrelated streams.
  Prng Fork(uint64_t stream_id) const;

  friend bool operator==(const Prng& a, const Prng& b) { return a.s_ == b.s_; }

 private:
  Prng() = default;
  std::array<uint64_t, 4> s_{};
};

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_PRNG_H_
