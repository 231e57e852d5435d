// Calibration seconds per sample from its operations, each timed on this machine at its real
// shape (issue 20, figure 7): what worker/prune/calibration.h runs per decoder layer for one
// sample of T token rows — the seven linears in float32 (q/k/v from `hidden` to q/kv widths, o
// back, gate/up to `mlp`, down back), the float64 ‖X_j‖² of the four distinct inputs, and, for
// SPARSEGPT, their float64 XᵀX accumulation. The attention's products (2·T²·q_width per layer,
// causal: the FLOPs model's term) are charged at the linears' measured rate; norms, RoPE and
// softmax (O(T·d)) are left out, as the FLOPs model leaves them out. sparsegpt-bench applies it
// to LLaVA-1.5-7B's shapes; search-bench applies it to the bundled model and prints it beside
// the bundled model's measured Calibrate, which says how far the method can be trusted.
//
// Header-only, for the bench binaries; single-threaded use (ATen's own threads run the ops).
#ifndef PRUNESVC_BENCH_CALIBRATION_ESTIMATE_H_
#define PRUNESVC_BENCH_CALIBRATION_ESTIMATE_H_

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>

namespace prunesvc::bench {

struct CalibrationShape {
  int64_t rows = 0;  // token rows per sample
  int64_t hidden = 0, q_width = 0, kv_width = 0, mlp = 0;
  int64_t layers = 0;
};

struct CalibrationEstimate {
  double linears = 0, attention = 0, norms = 0, gram = 0;  // seconds per layer and sample
  double linear_gflops = 0;                                // the linears' measured rate
  double PerSample(bool with_gram, int64_t layers) const {
    return double(layers) * (linears + attention + norms + (with_gram ? gram : 0));
  }
};

inline double BestSeconds(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int k = 0; k < reps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Times one layer's operations for one sample, best of `reps` (≥ 1).
inline CalibrationEstimate EstimateCalibration(const CalibrationShape& s, int reps) {
  at::manual_seed(21);
  const at::Tensor x = at::randn({s.rows, s.hidden});
  const at::Tensor xo = at::randn({s.rows, s.q_width});
  const at::Tensor xm = at::randn({s.rows, s.mlp});
  const at::Tensor wq = at::randn({s.q_width, s.hidden}), wkv = at::randn({s.kv_width, s.hidden});
  const at::Tensor wo = at::randn({s.hidden, s.q_width});
  const at::Tensor wup = at::randn({s.mlp, s.hidden}), wdown = at::randn({s.hidden, s.mlp});
  CalibrationEstimate e;
  e.linears = BestSeconds(reps, [&] {
    (void)at::matmul(x, wq.t());
    for (int i = 0; i < 2; ++i) (void)at::matmul(x, wkv.t());
    (void)at::matmul(xo, wo.t());
    for (int i = 0; i < 2; ++i) (void)at::matmul(x, wup.t());
    (void)at::matmul(xm, wdown.t());
  });
  const double linear_flops =
      2.0 * double(s.rows) *
      double(s.hidden * (s.q_width + 2 * s.kv_width) + s.q_width * s.hidden + 3 * s.hidden * s.mlp);
  e.linear_gflops = linear_flops / e.linears / 1e9;
  e.attention =
      2.0 * double(s.rows) * double(s.rows) * double(s.q_width) / (linear_flops / e.linears);
  const at::Tensor xd = x.to(at::kDouble), xod = xo.to(at::kDouble), xmd = xm.to(at::kDouble);
  e.norms = BestSeconds(reps, [&] {
    for (int i = 0; i < 2; ++i) (void)xd.square().sum(0);  // attention input, MLP input
    (void)xod.square().sum(0);
    (void)xmd.square().sum(0);
  });
  // The sums live across the samples (allocated once per calibration): only the accumulation is
  // a per-sample cost.
  at::Tensor gh = at::zeros({s.hidden, s.hidden}, at::kDouble);
  at::Tensor go = at::zeros({s.q_width, s.q_width}, at::kDouble);
  at::Tensor gm = at::zeros({s.mlp, s.mlp}, at::kDouble);
  e.gram = BestSeconds(reps, [&] {
    for (int i = 0; i < 2; ++i) gh.addmm_(xd.t(), xd);
    go.addmm_(xod.t(), xod);
    gm.addmm_(xmd.t(), xmd);
  });
  return e;
}

}  // namespace prunesvc::bench

#endif  // PRUNESVC_BENCH_CALIBRATION_ESTIMATE_H_
