// sparsegpt-bench (issue 20, figure 7): SparseGPT seconds per linear on this machine at a few
// shapes, a least-squares fit of t = a·in³ + b·out·in² (the Hessian's Cholesky inverse and the
// column sweep), and its extrapolation to LLaVA-1.5-7B's decoder linears (q/k/v/o 4096×4096,
// gate/up 11008×4096, down 4096×11008; 32 layers) at 50 % UNSTRUCTURED. An estimate, labelled
// as one: the fit's worst relative error on the measured shapes is printed beside it. Then
// calibration seconds per sample at 7B's shapes (CalibrationAt7B), from its operations timed at
// their real shapes; search-bench prints the bundled model's measured calibration beside it.
//
// Usage: sparsegpt-bench [--threads=N]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench/calibration_estimate.h"
#include "common/malloc_tuning.h"
#include "worker/prune/sparsegpt.h"

namespace {

// Calibration seconds per sample at LLaVA-1.5-7B's shapes (bench/calibration_estimate.h), T = 640
// rows per sample: 576 image tokens + 64 text tokens. An estimate built from measured parts,
// labelled as one.
void CalibrationAt7B(int threads) {
  const prunesvc::bench::CalibrationShape shape{
      .rows = 640, .hidden = 4096, .q_width = 4096, .kv_width = 4096, .mlp = 11008, .layers = 32};
  const prunesvc::bench::CalibrationEstimate e = prunesvc::bench::EstimateCalibration(shape, 2);
  std::printf(
      "calibration at LLaVA-1.5-7B's shapes (T = %lld rows per sample), per decoder layer: "
      "linears %.2f s (%.0f GFLOP/s), attention %.3f s (charged at that rate), ‖X‖² %.3f s, "
      "XᵀX %.2f s\n",
      (long long)shape.rows, e.linears, e.linear_gflops, e.attention, e.norms, e.gram);
  const double stats = e.PerSample(false, shape.layers), gram = e.PerSample(true, shape.layers);
  std::printf(
      "LLaVA-1.5-7B calibration, extrapolated: %.0f s per sample with ‖X‖² only (WANDA), %.0f s "
      "with XᵀX (SPARSEGPT); 64 samples: %.0f / %.0f min (CPU, %d threads)\n",
      stats, gram, 64 * stats / 60, 64 * gram / 60, threads);
}

}  // namespace

int main(int argc, char** argv) {
  prunesvc::TuneMallocForTensors();  // before any thread (common/malloc_tuning.h)
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) threads = std::atoi(argv[i] + 10);
  }
  at::set_num_threads(threads);
  struct Shape {
    int64_t out, in;
    double seconds = 0;
  };
  std::vector<Shape> shapes = {
      {1024, 1024}, {2048, 1024}, {1024, 2048}, {2048, 2048}, {4096, 2048}};
  at::manual_seed(20);
  for (Shape& s : shapes) {
    at::Tensor w = at::randn({s.out, s.in});
    at::Tensor x = at::randn({4 * s.in, s.in}, at::kDouble);
    at::Tensor gram = at::matmul(x.t(), x);
    double best = 1e30;
    for (int k = 0; k < 3; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = prunesvc::prune::SparseGptPrune(w, gram, 4 * s.in, {.ratio = 0.5});
      if (!r.ok()) {
        std::fprintf(stderr, "sparsegpt-bench: %s\n", r.status().ToString().c_str());
        return 1;
      }
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    s.seconds = best;
  }
  // Least squares in relative error for t = a·x1 + b·x2, x1 = in³, x2 = out·in² (each row
  // divided by its t, target 1; normal equations, 2×2), so the small shapes count as much.
  double s11 = 0, s12 = 0, s22 = 0, y1 = 0, y2 = 0;
  for (const Shape& s : shapes) {
    const double x1 = std::pow(double(s.in), 3) / s.seconds;
    const double x2 = double(s.out) * double(s.in) * s.in / s.seconds;
    s11 += x1 * x1;
    s12 += x1 * x2;
    s22 += x2 * x2;
    y1 += x1;
    y2 += x2;
  }
  const double det = s11 * s22 - s12 * s12;
  const double a = (y1 * s22 - y2 * s12) / det, b = (s11 * y2 - s12 * y1) / det;
  auto model = [&](double out, double in) { return a * in * in * in + b * out * in * in; };
  double worst = 0;
  std::printf("threads %d\n", threads);
  for (const Shape& s : shapes) {
    const double fit = model(double(s.out), double(s.in));
    worst = std::max(worst, std::fabs(fit - s.seconds) / s.seconds);
    std::printf("SparseGPT %5lld x %-5lld  %.3f s (fit %.3f s)\n", (long long)s.out,
                (long long)s.in, s.seconds, fit);
  }
  const double qkvo = model(4096, 4096), gate_up = model(11008, 4096), down = model(4096, 11008);
  const double layer = 4 * qkvo + 2 * gate_up + down;
  std::printf("fit worst relative error on the measured shapes: %.0f %%\n", 100 * worst);
  std::printf(
      "LLaVA-1.5-7B, extrapolated: q/k/v/o %.1f s, gate/up %.1f s, down %.1f s each; "
      "%.1f s per layer, %.1f min for 32 layers (CPU, %d threads)\n",
      qkvo, gate_up, down, layer, 32 * layer / 60, threads);
  CalibrationAt7B(threads);
  return 0;
}
