// The shapes-vqa seeds prunesvc uses (docs/architecture.md §4): one place so the trainer, the demo
// and the disjointness test agree. models/README.md records the ones a committed model was trained
// with.
//
// Seeds alone do not make sets disjoint (a small scene space repeats across seeds); each use also
// has its own --split partition (see shapes.h), which does.
#ifndef PRUNESVC_WORKER_DATA_SHAPES_SEEDS_H_
#define PRUNESVC_WORKER_DATA_SHAPES_SEEDS_H_

#include <cstdint>

namespace prunesvc::data {

// Training data for tiny-llava-shapes (`--split train`).
inline constexpr uint64_t kShapesTrainSeed = 1;
// The 64 samples a pruning search scores candidates on (`--split search`).
inline constexpr uint64_t kShapesSearchSeed = 1000;
// Held-out evaluation, never used in training or search (`--split eval`).
inline constexpr uint64_t kShapesEvalSeed = 2000;

}  // namespace prunesvc::data

#endif  // PRUNESVC_WORKER_DATA_SHAPES_SEEDS_H_
