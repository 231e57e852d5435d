// Loading and saving HuggingFace LLaVA checkpoints (model.safetensors, or sharded
// model-0000k-of-0000n.safetensors + model.safetensors.index.json) as fp32 libtorch tensors.
//
// Weight names: transformers ≤ 4.51 and ≥ 4.52 save LLaVA under different prefixes (see
// docs/llava.md). Loaded tensors are keyed by ONE canonical set — the old ≤ 4.51 names
// (`language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.*`,
// `multi_modal_projector.*`) — and the checkpoint remembers which layout the files used, so
// artifacts can be written back in the user's layout.
//
// Dtypes: F16/BF16 are converted to fp32 at load (libtorch 1.13 has no CPU fp16 matmul).
// `source_dtype` is the float dtype holding the most parameters (elements) — a mixed checkpoint
// (e.g. fp16 matrices with fp32 norms) is represented by its dominant dtype; ties go to the wider
// type (F32 > BF16 > F16). Non-float tensors are an error, except `*.position_ids` buffers that
// old CLIP checkpoints carry (HF ignores them too), which are skipped.
//
// Thread-safety: the functions are thread-safe for distinct directories. Saving writes each file
// to a temporary name and renames it, and writes the index last.
#ifndef PRUNESVC_WORKER_MODEL_CHECKPOINT_H_
#define PRUNESVC_WORKER_MODEL_CHECKPOINT_H_

#include <ATen/ATen.h>

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/safetensors.h"

namespace prunesvc::model {

// Which weight-name prefix set a checkpoint uses.
enum class WeightLayout {
  kLegacy,  // transformers ≤ 4.51: language_model.model.*, language_model.lm_head.weight, ...
  kModern,  // transformers ≥ 4.52: model.language_model.*, lm_head.weight, model.vision_tower.*
};
std::string_view WeightLayoutName(WeightLayout layout);  // "legacy" / "modern"

// Maps either layout's name to the canonical (legacy) one; names outside the LLaVA prefixes are
// returned unchanged.
std::string CanonicalWeightName(std::string_view name);
// The inverse: a canonical name as `layout` spells it.
std::string LayoutWeightName(std::string_view canonical, WeightLayout layout);

struct Checkpoint {
  std::map<std::string, at::Tensor> tensors;  // canonical name → fp32, contiguous, CPU
  DType source_dtype = DType::kF32;           // dominant float dtype of the files
  WeightLayout layout = WeightLayout::kLegacy;
  std::map<std::string, std::string> metadata;  // union of the files' __metadata__
};

// Loads `model_dir`/model.safetensors if present (HF's order), else the shards named by
// `model_dir`/model.safetensors.index.json. Validates: every shard exists and stays inside
// model_dir, every mapped tensor is in its shard, every shard tensor is mapped, no name occurs
// twice (across shards, or after canonicalisation), the files do not mix the two layouts.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& model_dir);

// Writes `tensors` (canonical names; any float dtype, any device) converted to `dtype` (F32, F16
// or BF16) as HF's save_pretrained lays them out: a single model.safetensors when
// `max_shard_bytes` is 0 or everything fits one shard, else model-0000k-of-0000n.safetensors
// (tensors in name order, a new shard when the next tensor would exceed max_shard_bytes) plus
// model.safetensors.index.json {"metadata": {"total_size"}, "weight_map"}. Names are written in
// `layout`. `metadata` goes into every file's __metadata__ ("format": "pt" is added as HF does).
// Stale weight files of the other form (an old index / single file / surplus shards) are removed.
absl::Status SaveCheckpoint(const std::string& model_dir,
                            const std::map<std::string, at::Tensor>& tensors, DType dtype,
                            size_t max_shard_bytes, WeightLayout layout = WeightLayout::kLegacy,
                            const std::map<std::string, std::string>& metadata = {});

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_CHECKPOINT_H_
