#include "common/nm_sparsity.h"

#include <array>

#include "absl/strings/str_cat.h"

namespace prunesvc {
namespace {

// HF module paths of the decoder linears in DecoderLinear order (as common/policy.cc names them).
constexpr std::array<const char*, kNumDecoderLinears> kLinearPaths = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

}  // namespace

absl::StatusOr<NmPattern> ParseNmPattern(absl::string_view text) {
  if (text == "2:4") return NmPattern{2, 4};
  if (text == "4:8") return NmPattern{4, 8};
  return absl::InvalidArgumentError(absl::StrCat("--nm must be 2:4 or 4:8, got \"", text, "\""));
}

std::string NmPatternName(const NmPattern& p) { return absl::StrCat(p.n, ":", p.m); }

double NmPrunedRatio(const NmPattern& p) {
  return 1.0 - static_cast<double>(p.n) / static_cast<double>(p.m);
}

std::vector<double> NmRatioChoices(const NmPattern& p) { return {0.0, NmPrunedRatio(p)}; }

absl::Status CheckNmDivisible(const FlopsBreakdown& dense, const NmPattern& p) {
  if (p.m <= 0 || p.n < 0 || p.n > p.m) {
    return absl::InvalidArgumentError(absl::StrCat("invalid N:M pattern ", NmPatternName(p)));
  }
  for (size_t l = 0; l < dense.decoder_linear_in.size(); ++l) {
    for (int i = 0; i < kNumDecoderLinears; ++i) {
      const int64_t in = dense.decoder_linear_in[l][i];
      if (in % p.m != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--nm ", NmPatternName(p), ": layers.", l, ".", kLinearPaths[i], " (in_features ", in,
            ") is not a multiple of M = ", p.m, "; N:M groups M consecutive input columns"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace prunesvc
