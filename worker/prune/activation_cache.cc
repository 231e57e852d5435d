#include "worker/prune/activation_cache.h"

#include <algorithm>

namespace prunesvc::prune {

ActivationCache::Key ActivationCache::KeyOf(int batch, absl::Span<const double> ratios,
                                            int layer) const {
  const size_t n = std::min(ratios.size(), size_t(layer) * size_t(per_layer_));
  return {batch, std::vector<double>(ratios.begin(), ratios.begin() + n)};
}

std::pair<int, at::Tensor> ActivationCache::Deepest(int batch, absl::Span<const double> ratios,
                                                    int max_layer) {
  if (lru_.empty()) return {0, at::Tensor()};
  for (int l = max_layer; l >= 1; --l) {
    auto it = index_.find(KeyOf(batch, ratios, l));
    if (it == index_.end()) continue;
    lru_.splice(lru_.begin(), lru_, it->second);
    return {l, it->second->tensor};
  }
  return {0, at::Tensor()};
}

void ActivationCache::Insert(int batch, absl::Span<const double> ratios, int layer,
                             at::Tensor input_of_layer) {
  const int64_t bytes = int64_t(input_of_layer.nbytes());
  // Larger than the whole budget: it would evict everything, then itself.
  if (max_bytes_ <= 0 || bytes > max_bytes_ || layer < 1) return;
  Key key = KeyOf(batch, ratios, layer);
  if (auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }
  lru_.push_front(Entry{.key = key, .tensor = std::move(input_of_layer), .bytes = bytes});
  index_.emplace(std::move(key), lru_.begin());
  bytes_ += bytes;
  Evict();
}

void ActivationCache::Clear() {
  index_.clear();
  lru_.clear();
  bytes_ = 0;
}

void ActivationCache::Evict() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    bytes_ -= lru_.back().bytes;
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
}

}  // namespace prunesvc::prune
