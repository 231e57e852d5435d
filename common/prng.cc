#include "common/prng.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace prunesvc {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

Prng::Prng(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& w : s_) {
    x += kGolden;
    w = Mix64(x);
  }
}

absl::StatusOr<Prng> Prng::FromState(const std::array<uint64_t, 4>& state) {
  if (state[0] == 0 && state[1] == 0 && state[2] == 0 && state[3] == 0) {
    return absl::InvalidArgumentError("PRNG state must not be all zero");
  }
  Prng p;
  p.s_ = state;
  return p;
}

std::string Prng::StateHex() const {
  return absl::StrFormat("%016x%016x%016x%016x", s_[0], s_[1], s_[2], s_[3]);
}

absl::StatusOr<Prng> Prng::FromStateHex(absl::string_view hex) {
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("PRNG state must be 64 hex digits, got ", hex.size(), " characters"));
  }
  std::array<uint64_t, 4> state{};
  for (size_t i = 0; i < 64; ++i) {
    const char c = hex[i];
    uint64_t d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("PRNG state: character ", i, " is not a lowercase hex digit"));
    }
    state[i / 16] = (state[i / 16] << 4) | d;
  }
  return FromState(state);
}

uint64_t Prng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

uint64_t Prng::UniformInt(uint64_t n) {
  if (n == 0) return 0;
  unsigned __int128 m = static_cast<unsigned __int128>(Next()) * n;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < n) {
    // (2⁶⁴ − n) mod n: the number of low values that would over-represent some outputs.
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(Next()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

double Prng::UniformDouble() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

bool Prng::Bernoulli(double p) { return UniformDouble() < p; }

size_t Prng::WeightedIndex(std::span<const double> weights) {
  if (weights.empty()) return 0;
  auto usable = [](double w) { return std::isfinite(w) && w > 0 ? w : 0.0; };
  double total = 0;
  for (double w : weights) total += usable(w);
  if (!(total > 0)) return static_cast<size_t>(UniformInt(weights.size()));
  const double u = UniformDouble() * total;
  double cumulative = 0;
  size_t last_positive = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double w = usable(weights[i]);
    if (w <= 0) continue;
    cumulative += w;
    last_positive = i;
    if (u < cumulative) return i;
  }
  return last_positive;
}

Prng Prng::Fork(uint64_t stream_id) const {
  uint64_t h = Mix64(stream_id + kGolden);
  for (uint64_t w : s_) h = Mix64(h ^ w);
  return Prng(h);
}

}  // namespace prunesvc
