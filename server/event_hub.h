// Live job events for WatchJob (docs/architecture.md §6): whoever commits events to the JobStore
// (the service for submit/cancel, the search driver for everything else) publishes them here right
// after the commit returned; WatchJob subscribes. Durability and numbering are the store's: the
// hub only fans out what was stored, so a watcher that subscribes, then reads the stored events
// after its from_sequence, then skips live events at or below the last one it replayed, sees
// every event exactly once and in order.
//
// Thread-safe. Callbacks run on the publisher's thread, in publication order, and must not block
// (queue and return); a callback may not call back into the hub.
#ifndef PRUNESVC_SERVER_EVENT_HUB_H_
#define PRUNESVC_SERVER_EVENT_HUB_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prune/v1/job.pb.h"

namespace prunesvc::server {

class EventHub {
 public:
  using Callback = std::function<void(const prune::v1::JobEvent&)>;

  // `callback` gets every event of `job_id` published after Subscribe returns. Returns a handle
  // for Unsubscribe.
  int64_t Subscribe(const std::string& job_id, Callback callback);
  // After it returns, the callback is not running and will not run again.
  void Unsubscribe(int64_t handle);
  // Events as the store returned them (job_id and sequence set), in sequence order.
  void Publish(const std::vector<prune::v1::JobEvent>& events);

 private:
  struct Subscriber {
    std::string job_id;
    Callback callback;
  };
  absl::Mutex mu_;  // held while callbacks run, so Unsubscribe waits for a running one
  int64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, Subscriber> subscribers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_EVENT_HUB_H_
