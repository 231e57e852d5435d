// Threads for closures that may block for as long as they like (a step's RPC to a worker, a
// worker's step), reused instead of created per closure.
//
// Run() hands the closure to an idle thread of the cache, or starts a new one when none is idle:
// concurrency is unbounded, as with a std::thread per closure, but a thread that finished its
// closure waits for the next instead of exiting. Creating a thread (its stack mapped, then
// unmapped with a TLB flush) was a tenth of the scheduler's CPU at thousands of steps per second
// (issue 20, docs/PERFORMANCE.md). The cache keeps as many threads as were ever busy at once (the
// peak: a scheduler's concurrent steps, about its worker count); the destructor joins them.
//
// Thread-safety: Run may be called from any thread, including from a closure. The destructor
// runs every queued closure (and what they Run), waits for the running ones, then joins the
// threads; nothing else may Run after destruction has begun.
#ifndef PRUNESVC_COMMON_THREAD_CACHE_H_
#define PRUNESVC_COMMON_THREAD_CACHE_H_

#include <deque>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace prunesvc {

class ThreadCache {
 public:
  ThreadCache() = default;
  ~ThreadCache() {
    for (;;) {  // a draining closure may Run more (and start a thread)
      std::vector<std::thread> threads;
      {
        absl::MutexLock lock(&mu_);
        stopping_ = true;
        threads.swap(threads_);
      }
      if (threads.empty()) return;
      for (std::thread& t : threads) t.join();
    }
  }
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;

  void Run(std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
    // Every queued closure needs a thread of its own that is idle now.
    if (idle_ < queue_.size()) threads_.emplace_back([this] { Loop(); });
  }

  // Threads started so far (tests).
  size_t threads() const {
    absl::MutexLock lock(&mu_);
    return threads_.size();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        ++idle_;
        mu_.Await(absl::Condition(
            +[](ThreadCache* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
              return c->stopping_ || !c->queue_.empty();
            },
            this));
        --idle_;
        if (queue_.empty()) return;  // stopping and drained
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;  // threads waiting in Loop for a closure
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_THREAD_CACHE_H_
