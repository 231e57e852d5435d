#include "worker/prune/preparation_cache.h"

#include <utility>

namespace prunesvc::prune {

std::shared_ptr<const Preparation> PreparationCache::Find(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  std::shared_ptr<const Preparation> p = it == entries_.end() ? nullptr : it->second.lock();
  if (p == nullptr) {
    if (it != entries_.end()) entries_.erase(it);
    ++counts_.misses;
    return nullptr;
  }
  ++counts_.hits;
  KeepLocked(key, p);
  return p;
}

std::shared_ptr<const Preparation> PreparationCache::Publish(const std::string& key,
                                                             std::shared_ptr<const Preparation> p) {
  absl::MutexLock lock(&mu_);
  std::weak_ptr<const Preparation>& slot = entries_[key];
  if (std::shared_ptr<const Preparation> first = slot.lock()) p = std::move(first);
  slot = p;
  KeepLocked(key, p);
  return p;
}

PreparationCache::Counts PreparationCache::counts() {
  absl::MutexLock lock(&mu_);
  return counts_;
}

void PreparationCache::KeepLocked(const std::string& key, std::shared_ptr<const Preparation> p) {
  for (auto it = kept_.begin(); it != kept_.end(); ++it) {
    if (it->first == key) {
      kept_.erase(it);
      break;
    }
  }
  if (keep_ == 0) return;
  kept_.emplace_front(key, std::move(p));
  while (kept_.size() > size_t(keep_)) kept_.pop_back();
  // Forget keys nobody holds any more.
  for (auto it = entries_.begin(); it != entries_.end();) {
    it = it->second.expired() ? entries_.erase(it) : std::next(it);
  }
}

}  // namespace prunesvc::prune
