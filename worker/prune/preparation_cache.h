// Work done once across jobs on one worker (issue 20): what preparing a job computes from the
// model, the search samples and the worker's settings alone — the dense model's scores on the
// search samples, the vision features, the calibration statistics and the mask bank (or the
// STRUCTURED orders) under the model's own projector (version 0) — shared by every job whose
// inputs are the same, so a seed sweep, a budget grid or a re-submitted job prepares once per
// worker instead of once per job (and, with the scheduler spreading a job's chunks over every
// worker, once per job and worker).
//
// Key: PreparedJob's PreparationKey — SHA-256 over the model's weights and side files, the
// search samples' content hash, the mask method, granularity and N:M pattern, whether XᵀX is
// kept (a SPARSEGPT finalize), the scoring and calibration batch sizes, the thread count in
// effect, the device and the build: everything that changes a bit of the shared values. Not in
// it: the seed, the budget, the unit and every search option (they read the shared values; they
// do not change them). A job's later projector versions are its own and never shared. The sample
// order is shared with the probe ratio it came from (it depends on the budget): a job of another
// budget orders the samples itself, one evaluation.
//
// Lifetime: an entry lives while a job holds it (the jobs' evaluators keep shared pointers) and,
// beyond that, the `keep` most recently published or found entries are held by the cache itself
// (for a re-submission after the first job was finalized and evicted). Each entry is the size of
// the model's mask bank plus its calibration statistics (LLaVA-1.5-7B: ~13 GB of int16 orders,
// and ~44 GB more with XᵀX): `keep` is small on purpose.
//
// Determinism: a shared value is bitwise what the job would have computed itself (same inputs,
// same code, same thread count): results do not depend on which job prepared first.
//
// Thread-safety: all methods may be called concurrently; the entries are immutable.
#ifndef PRUNESVC_WORKER_PRUNE_PREPARATION_CACHE_H_
#define PRUNESVC_WORKER_PRUNE_PREPARATION_CACHE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "worker/prune/calibration.h"
#include "worker/prune/mask_bank.h"
#include "worker/prune/measure.h"
#include "worker/prune/structured.h"

namespace prunesvc::prune {

// A job's preparation under projector version 0 (see the header comment). Immutable once shared.
struct Preparation {
  ModelMetrics dense_search;                    // the dense model on the search samples
  std::vector<at::Tensor> vision_features;      // per search sample (undefined: no image)
  CalibrationStats calibration;                 // under projector version 0
  std::shared_ptr<const MaskBank> bank;         // UNSTRUCTURED / N:M, else null
  std::shared_ptr<const StructuredBank> sbank;  // STRUCTURED, else null
  // The probe's order (PreparedJob::OrderSamples) and the probe's ratio: a job whose probe is
  // another (another budget) orders the samples itself.
  std::vector<int> sample_order;
  double sample_order_probe = -1;
};

class PreparationCache {
 public:
  explicit PreparationCache(int keep = 1) : keep_(keep < 0 ? 0 : keep) {}

  // The entry under `key` while one exists (held by a job or kept), else null.
  std::shared_ptr<const Preparation> Find(const std::string& key);
  // Shares `p` under `key` and returns what the cache holds for it afterwards: `p`, or the entry
  // another job published first (the caller should use that one).
  std::shared_ptr<const Preparation> Publish(const std::string& key,
                                             std::shared_ptr<const Preparation> p);

  struct Counts {
    int64_t hits = 0, misses = 0;
  };
  Counts counts();

 private:
  // Moves `key` to the front of the kept list, holding `p`, and drops what exceeds keep_.
  void KeepLocked(const std::string& key, std::shared_ptr<const Preparation> p)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int keep_;  // constant after construction

  absl::Mutex mu_;
  std::map<std::string, std::weak_ptr<const Preparation>> entries_ ABSL_GUARDED_BY(mu_);
  // Most recently used first; at most keep_ entries.
  std::list<std::pair<std::string, std::shared_ptr<const Preparation>>> kept_ ABSL_GUARDED_BY(mu_);
  Counts counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace prunesvc::prune

#endif  // PRUNESVC_WORKER_PRUNE_PREPARATION_CACHE_H_
