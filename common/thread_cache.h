// Threads for closures that may block for as long as they like (a step's RPC to a worker, a
// worker's step), reused instead of created per closure.
//
// Run() hands the closure to an idle thread of the cache, or starts a new one when none is idle:
// concurrency is unbounded, as with a std::thread per closure, but a thread that finished its
// closure waits for the next instead of exiting. Creating a thread costs its stack's mmap, the
// static TLS block's initialisation (large in a binary that links libtorch: page faults on every
// new thread), and on exit an munmap with a TLB flush: a tenth of the scheduler's CPU at
// thousands of steps per second, and on a worker the serial delay that staggered a generation's
// dispatches (issue 20, docs/PERFORMANCE.md). The cache keeps as many threads as were ever busy at
// once (the peak: a scheduler's concurrent steps, about its worker count).
//
// Hand-off: each idle thread waits on its own condition variable, and Run gives the closure to
// the most recently idle one (its stack and caches are warm) and wakes that thread only — one
// wake-up per closure, however many threads are idle.
//
// Thread-safety: Run may be called from any thread, including from a closure. The destructor
// waits for the running closures (and what they Run), then joins the threads; nothing else may
// Run after destruction has begun.
#ifndef PRUNESVC_COMMON_THREAD_CACHE_H_
#define PRUNESVC_COMMON_THREAD_CACHE_H_

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
    for (;;) {  // a running closure may Run more (and start a thread)
      std::vector<std::thread> threads;
      {
        absl::MutexLock lock(&mu_);
        stopping_ = true;
        for (Slot* s : idle_) s->cv.Signal();
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
    if (!idle_.empty()) {
      Slot* s = idle_.back();
      idle_.pop_back();
      s->fn = std::move(fn);
      s->cv.Signal();
      return;
    }
    threads_.emplace_back([this, fn = std::move(fn)]() mutable { Loop(std::move(fn)); });
  }

  // Starts threads until `n` are idle, so that the next n closures do not pay a thread's start.
  void Reserve(size_t n) {
    absl::MutexLock lock(&mu_);
    for (size_t i = idle_.size() + starting_; i < n; ++i) {
      ++starting_;
      threads_.emplace_back([this] { Loop(nullptr); });
    }
  }

  // Threads started so far, and those waiting for a closure now (tests).
  size_t threads() const {
    absl::MutexLock lock(&mu_);
    return threads_.size();
  }
  size_t idle() const {
    absl::MutexLock lock(&mu_);
    return idle_.size();
  }

 private:
  // An idle thread's mailbox, on its own stack; in idle_ exactly while fn is empty.
  struct Slot {
    absl::CondVar cv;
    std::function<void()> fn;
  };

  void Loop(std::function<void()> fn) {
    Slot slot;
    for (bool reserved = fn == nullptr;; reserved = false) {
      if (fn) fn();
      fn = nullptr;  // its captures are released outside the lock
      absl::MutexLock lock(&mu_);
      if (reserved) --starting_;
      if (stopping_) return;
      idle_.push_back(&slot);
      while (!slot.fn && !stopping_) slot.cv.Wait(&mu_);
      if (!slot.fn) {  // stopping, and nobody handed it a closure: leave idle_
        std::erase(idle_, &slot);
        return;
      }
      fn = std::move(slot.fn);
      slot.fn = nullptr;
    }
  }

  mutable absl::Mutex mu_;
  std::vector<Slot*> idle_ ABSL_GUARDED_BY(mu_);  // a stack: the most recently idle last
  size_t starting_ ABSL_GUARDED_BY(mu_) = 0;      // Reserve's threads not yet idle
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_THREAD_CACHE_H_
