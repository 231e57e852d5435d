// Search-time candidate evaluation (docs/architecture.md §5 "Masks"): apply a per-linear
// UNSTRUCTURED ratio vector by swapping weights, run one batched forward over the search samples,
// return the mean answer loss L̂, the accuracy and the capacity term Ω(π).
//
// How it stays cheap:
//  - The dense weights are copied once; the model's own Linear::weight tensors are then edited in
//    place (no allocation per evaluation on the CPU path), and only linears whose pruned count k
//    changed since the previous evaluation are touched. Because bank masks are nested, moving a
//    linear from k₀ to k₁ writes only the |k₁ − k₀| columns per row between them (zeroes when
//    k grows, dense values copied back when it shrinks).
//  - The vision tower output is computed once at Create; the projected image features (what the
//    decoder sees) are cached per projector version, as are the calibration statistics and the
//    mask bank (rebuilt by SetProjector, which needs the dense weights and restores them first).
//  - Ω(π) needs no pass over the weights: the bank keeps per-linear prefix sums of the pruned
//    squared weights, so Ω is O(#linears).
//
// Ω(π) = Σ_u P_u·ω_u / Σ_u P_u, ω_u = sqrt(Σ_{i∈u} kept ‖Ŵ_i‖²_F / Σ_{i∈u} ‖W_i‖²_F), P_u = the
// unit's weight count (ω_u = 1 for an all-zero unit). Units: by default one per decoder layer.
//
// Memory beyond the model: one dense copy of every decoder linear (fp32), the mask bank
// (mask_bank.h), the vision features of the samples and one version of projected features.
//
// Non-CPU devices use a generic torch path (index slices copied to the device, scatter/gather)
// that allocates temporaries per changed linear; the CPU path writes through raw pointers with
// at::parallel_for.
//
// STRUCTURED (EvaluatorOptions::granularity): instead of the mask bank, a StructuredBank
// (structured.h) of per-layer channel / KV-group orders is built per projector version, and a
// layer's ratio zeroes its removed channels' gate/up rows and down_proj columns and its removed
// groups' q/k/v rows and o_proj columns — the same function as the physically shrunk model, at
// the dense model's cost (search-time only). Per-linear ratios must then agree within a layer's
// attention (q, k, v, o) and within its MLP (gate, up, down); Ω counts the removed rows and
// columns' squared mass (prefix sums over the orders, again no pass over the weights).
//
// Thread-safety: not thread-safe; the evaluator owns the model's decoder weights and projector
// while it lives (nothing else may run the model concurrently). The destructor restores the dense
// decoder weights (the projector stays at the current version).
#ifndef PRUNESVC_WORKER_PRUNE_EVALUATOR_H_
#define PRUNESVC_WORKER_PRUNE_EVALUATOR_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/evolution.h"
#include "common/policy.h"
#include "common/racing.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/llava_model.h"
#include "worker/model/scoring.h"
#include "worker/prune/activation_cache.h"
#include "worker/prune/calibration.h"
#include "worker/prune/mask_bank.h"
#include "worker/prune/preparation_cache.h"
#include "worker/prune/structured.h"

namespace prunesvc::prune {

// A search sample: what the scorer needs plus its preprocessed image(s).
struct EvalSample {
  model::ScoringSample scoring;  // image_features are ignored (computed per projector version)
  at::Tensor pixels;             // [num_images, C, S, S] float, undefined when no image
};

// PreparedSample (llava_bundle.h) → EvalSample (pixels stacked as [1, C, S, S]).
absl::StatusOr<std::vector<EvalSample>> ToEvalSamples(
    absl::Span<const model::PreparedSample> samples);

// The projector's parameters. Biases are undefined when the projector has none.
struct ProjectorWeights {
  at::Tensor linear_1_weight, linear_1_bias, linear_2_weight, linear_2_bias;
};
// Deep copies of the model's current projector.
absl::StatusOr<ProjectorWeights> CopyProjector(model::LlavaModel& model);
// Copies `weights` into the model's projector tensors in place (shapes must match).
absl::Status LoadProjector(const ProjectorWeights& weights, model::LlavaModel& model);

struct EvaluatorOptions {
  MaskMethod method = MaskMethod::kWanda;
  // UNSTRUCTURED: the mask bank. STRUCTURED: channel / KV-group orders scored with `method`.
  search::Granularity granularity = search::Granularity::kUnstructured;
  int batch_size = 16;             // samples per scoring forward
  int calibration_batch_size = 8;  // samples per calibration / vision / projector forward
  bool collect_gram = false;       // keep XᵀX in the calibration stats (SPARSEGPT, later)
  // Unit of each decoder linear for Ω (DecoderLinears() order); empty = one unit per layer.
  std::vector<int> unit_of_linear;
  // Use the device-generic torch path on the CPU too (tests compare both paths).
  bool generic_mask_path = false;
  // N:M granularity: the mask bank holds N:M orders (mask_bank.h), so the ratio 1 − N/M applies
  // an N:M mask; unset = UNSTRUCTURED.
  std::optional<NmPattern> nm;
  // Version 0's vision features, calibration and bank prepared by another job with the same
  // inputs (preparation_cache.h): used instead of computing them. Must come from an evaluator
  // of the same model content, samples and options (the caller's key says so).
  std::shared_ptr<const Preparation> prepared;
  // EvaluateMany's activations kept across calls (activation_cache.h), in bytes of tensors:
  // 256 MiB keeps ~490 batch activations of the bundled model (batch 16); LLaVA-1.5-7B's are
  // ~80 MB each in bf16 at batch 16 and ~600 tokens, so a GPU worker wants several GiB for the
  // same effect. 0 = keep none. Per evaluator (one per prepared job).
  int64_t activation_cache_bytes = int64_t(256) << 20;
};

// Search samples [begin, end); end < 0 means through the last one.
struct SampleRange {
  int begin = 0;
  int end = -1;
};

struct CandidateResult {
  double loss = 0;      // L̂: mean over samples of the mean answer-token CE (nats)
  double accuracy = 0;  // over the multiple-choice samples (0 when none)
  double omega = 0;     // Ω(π)
  int num_samples = 0;
  int num_multiple_choice = 0;
  int num_correct = 0;  // multiple-choice samples answered correctly
  std::vector<double> sample_losses;
  // Racing (common/racing.h): scoring stopped after samples_scored samples; loss is then the
  // bound Σ scored / n, accuracy and the multiple-choice counts are 0 (not measured),
  // sample_losses holds the scored ones, num_samples is n.
  bool raced_out = false;
  int samples_scored = 0;
};

// The search's view of a candidate result.
search::EvalResult ToEvalResult(CandidateResult r);

// What EvaluateMany did: decoder layers run (a whole-set evaluation of one candidate runs
// num_layers per batch) and candidates raced out.
struct ManyTiming {
  int64_t layer_runs = 0;
  int64_t layers_from_cache = 0;      // skipped because an earlier call's activations were kept
  int64_t layer_runs_exhaustive = 0;  // candidates × batches × layers
  int raced_out = 0;
  double seconds = 0;
  double layer_seconds = 0;    // in RunLayer
  double scoring_seconds = 0;  // final norm, lm_head and the per-sample losses
};

// Where the time of the last ApplyRatios / Evaluate went.
struct EvalTiming {
  double apply_seconds = 0;
  double forward_seconds = 0;
  int linears_changed = 0;
  int64_t weights_written = 0;
};

class CandidateEvaluator {
 public:
  // Takes over `model` (not owned; must outlive the evaluator), whose current weights are the
  // dense model and whose current projector becomes version 0. Computes the vision features of
  // `samples`, then the version-0 image features, calibration and mask bank.
  // Errors: null model, no samples, invalid options/samples, forward failures.
  static absl::StatusOr<std::unique_ptr<CandidateEvaluator>> Create(
      model::LlavaModel* model, std::vector<EvalSample> samples, const EvaluatorOptions& options);
  ~CandidateEvaluator();

  CandidateEvaluator(const CandidateEvaluator&) = delete;
  CandidateEvaluator& operator=(const CandidateEvaluator&) = delete;

  // Installs projector `version` with `weights`: restores the dense decoder weights, loads the
  // projector, recomputes the image features, recalibrates and rebuilds the mask bank.
  absl::Status SetProjector(int version, const ProjectorWeights& weights);
  int projector_version() const { return projector_version_; }
  // The projector of the current version (deep copy held by the evaluator).
  const ProjectorWeights& projector() const { return projector_; }

  // Writes W ⊙ mask(ratio_i) into every decoder linear i whose pruned count changed.
  // `linear_ratios` has one entry per decoder linear, each in [0, 1].
  absl::Status ApplyRatios(absl::Span<const double> linear_ratios);
  // ApplyRatios + batched forwards over the samples in `range` (batches of batch_size from
  // range.begin, so a range that starts on a batch boundary scores each sample exactly as the
  // whole set does) + Ω. Errors: a range outside the samples or empty.
  absl::StatusOr<CandidateResult> Evaluate(absl::Span<const double> linear_ratios,
                                           SampleRange range = {});
  // Evaluate for several candidates at once on all samples, cheaper than one Evaluate each:
  //  - prefix sharing: per scoring batch, the candidates are visited in lexicographic order of
  //    their ratios (layer-major), and the decoder activations after each layer are kept, so a
  //    candidate whose leading layers' ratios equal the previous one's starts where they differ
  //    (a depth-first walk of the candidates' prefix tree, one stack of activations per batch);
  //  - across calls (activation_cache.h): the walk's activations are kept, up to
  //    EvaluatorOptions::activation_cache_bytes, under their batch and policy prefix, so a
  //    candidate that agrees on its leading layers with one an earlier call ran (its parents,
  //    often) starts after them too; cleared when the projector or the sample order changes;
  //  - racing (common/racing.h): batch by batch, after every batch but the last, a candidate
  //    with RacedOut(Σ scored losses, k, n, race.BoundTerm(i, Ω_i, scored losses),
  //    race.threshold) stops.
  // Results are in `candidates` order; a whole-set result is bitwise Evaluate's (same batches,
  // same ops), a raced-out one is as CandidateResult describes. Errors as Evaluate's.
  // `poll` (may be empty) runs before each batch; its error stops the call (cancellation).
  absl::StatusOr<std::vector<CandidateResult>> EvaluateMany(
      const std::vector<std::vector<double>>& candidates, const search::RaceLimit& race = {},
      const std::function<absl::Status()>& poll = nullptr);
  const ManyTiming& last_many_timing() const { return many_timing_; }
  // Summed over every EvaluateMany call so far.
  const ManyTiming& total_many_timing() const { return total_many_timing_; }
  // Off: EvaluateMany runs every candidate through every layer, and keeps no activations across
  // calls (benchmarks compare).
  void set_prefix_sharing(bool on) { prefix_sharing_ = on; }
  // The activations kept across EvaluateMany calls; Clear lets a benchmark start cold.
  const ActivationCache& activation_cache() const { return activations_; }
  void ClearActivationCache() { activations_.Clear(); }

  // Back to the dense weights (all k = 0).
  absl::Status RestoreDense();

  // Ω(π) of a per-linear ratio vector (no weights touched).
  absl::StatusOr<double> Omega(absl::Span<const double> linear_ratios) const;

  model::LlavaModel& model() { return *model_; }
  bool structured() const { return options_.granularity == search::Granularity::kStructured; }
  // UNSTRUCTURED only.
  const MaskBank& bank() const { return *bank_; }
  // STRUCTURED only.
  const StructuredBank& structured_bank() const { return *sbank_; }
  // STRUCTURED: the cut now applied to layer l.
  const StructuredCut& applied_cut(int l) const { return applied_cut_[l]; }
  const CalibrationStats& calibration() const { return calibration_; }
  const std::vector<model::NamedLinear>& linears() const { return linears_; }
  int num_linears() const { return int(linears_.size()); }
  int num_units() const { return num_units_; }
  const std::vector<int>& unit_of_linear() const { return unit_of_linear_; }
  // The samples with the current version's image features, in their set's order (calibration,
  // projector training and the shared preparation use this order).
  const std::vector<model::ScoringSample>& scoring_samples() const { return samples_; }
  // The order in which Evaluate and EvaluateMany score the samples: position j is the set's
  // sample order[j], and ranges, per-sample losses and racing's checkpoints count positions.
  // Racing cuts a candidate sooner when the samples that carry most of the loss come first
  // (docs/PERFORMANCE.md §2). Identity until SetSampleOrder; the bits of a sample's loss depend
  // on the batch it is scored in, so every evaluator of a job must score in the same order.
  const std::vector<int>& sample_order() const { return order_; }
  // INVALID_ARGUMENT unless `order` is a permutation of [0, n).
  absl::Status SetSampleOrder(std::vector<int> order);
  // Per sample, the vision tower output [num_images, S, vision hidden] (undefined: no image).
  const std::vector<at::Tensor>& vision_features() const { return vision_features_; }
  // Version 0's shareable state (preparation_cache.h) with `dense_search` beside it, and the
  // sample order the probe at `probe_ratio` gave; only while the projector is version 0
  // (FAILED_PRECONDITION otherwise).
  absl::StatusOr<std::shared_ptr<const Preparation>> SharedPreparation(
      const ModelMetrics& dense_search, std::vector<int> sample_order = {},
      double probe_ratio = -1) const;
  const at::Tensor& dense_weight(int i) const { return dense_[i]; }
  // Pruned weights per row currently applied to linear i.
  int64_t applied_pruned_per_row(int i) const { return applied_k_[i]; }
  const EvaluatorOptions& options() const { return options_; }
  const EvalTiming& last_timing() const { return timing_; }

 private:
  CandidateEvaluator(model::LlavaModel* model, const EvaluatorOptions& options)
      : model_(model),
        options_(options),
        activations_(options.activation_cache_bytes, kNumDecoderLinears) {}
  absl::Status Init(std::vector<EvalSample> samples);
  absl::Status RebuildForProjector();
  void RebuildScoringOrder();
  absl::Status ValidateRatios(absl::Span<const double> ratios) const;
  // Moves linear i's mask from k = applied_k_[i] to `k`.
  void MoveMask(int i, int64_t k);
  // STRUCTURED counterparts of ApplyRatios / Omega, and the moves of one layer's cut.
  absl::Status ApplyStructured(absl::Span<const double> linear_ratios);
  absl::StatusOr<double> StructuredOmega(absl::Span<const double> linear_ratios) const;
  absl::StatusOr<std::vector<StructuredCut>> StructuredCuts(
      absl::Span<const double> linear_ratios) const;
  void MoveChannels(int layer, int64_t to);
  void MoveGroups(int layer, int to);

  model::LlavaModel* const model_;
  const EvaluatorOptions options_;
  std::vector<model::NamedLinear> linears_;
  std::vector<at::Tensor> dense_;   // per linear, the dense weight (own copy)
  std::vector<int64_t> applied_k_;  // per linear, pruned weights per row now in the model
  std::vector<int> unit_of_linear_;
  int num_units_ = 0;
  std::vector<double> unit_params_;  // P_u
  std::vector<at::Tensor> vision_features_;
  std::vector<model::ScoringSample> samples_;
  std::vector<int> order_;                     // position → index in samples_
  std::vector<model::ScoringSample> scoring_;  // samples_ in order_ (shares their tensors)
  int projector_version_ = 0;
  ProjectorWeights projector_;
  CalibrationStats calibration_;
  std::shared_ptr<const MaskBank> bank_;  // shared with other jobs at version 0
  // STRUCTURED.
  std::vector<DecoderLayerHeads> heads_;
  std::shared_ptr<const StructuredBank> sbank_;
  std::vector<StructuredCut> applied_cut_;  // per layer
  EvalTiming timing_;
  ManyTiming many_timing_;
  ManyTiming total_many_timing_;
  bool prefix_sharing_ = true;
  ActivationCache activations_;
};

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_EVALUATOR_H_
