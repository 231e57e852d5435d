#include "server/event_hub.h"

#include <utility>

namespace prunesvc::server {

int64_t EventHub::Subscribe(const std::string& job_id, Callback callback) {
  absl::MutexLock lock(&mu_);
  const int64_t handle = next_handle_++;
  subscribers_[handle] = {job_id, std::move(callback)};
  return handle;
}

void EventHub::Unsubscribe(int64_t handle) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(handle);
}

void EventHub::Publish(const std::vector<prune::v1::JobEvent>& events) {
  absl::MutexLock lock(&mu_);
  for (const prune::v1::JobEvent& e : events) {
    for (auto& [handle, s] : subscribers_) {
      if (s.job_id == e.job_id()) s.callback(e);
    }
  }
}

}  // namespace prunesvc::server
