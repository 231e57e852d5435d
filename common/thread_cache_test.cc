#include "common/thread_cache.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

// Closures that block until all of them run at once: the cache may not bound its concurrency
// (the scheduler's steps each block on a worker for as long as the step takes).
TEST(ThreadCacheTest, RunsEveryClosureAtOnceThenReusesTheThreads) {
  constexpr int kClosures = 16;
  ThreadCache cache;
  std::atomic<int> started{0};
  std::atomic<int> done{0};
  for (int round = 0; round < 3; ++round) {
    started = 0;
    absl::Notification round_started, round_release;
    for (int i = 0; i < kClosures; ++i) {
      cache.Run([&] {
        if (++started == kClosures) round_started.Notify();
        round_release.WaitForNotification();
        ++done;
      });
    }
    ASSERT_TRUE(round_started.WaitForNotificationWithTimeout(absl::Seconds(60)))
        << "only " << started.load() << " of " << kClosures << " closures ran at once";
    round_release.Notify();
    while (done.load() < kClosures * (round + 1)) absl::SleepFor(absl::Milliseconds(1));
    // Threads are made for the peak concurrency, then reused: a finished closure's thread is
    // counted idle only once it waits again, so a later round may start a few more.
    EXPECT_GE(cache.threads(), size_t{kClosures});
  }
  EXPECT_LT(cache.threads(), size_t{3 * kClosures});
}

// One closure at a time: each goes to the one idle thread (no thread is started after the
// first), and the closure runs on that same thread every time.
TEST(ThreadCacheTest, SequentialClosuresReuseTheIdleThread) {
  ThreadCache cache;
  std::thread::id first;
  for (int i = 0; i < 50; ++i) {
    absl::Notification ran;
    std::thread::id id;
    cache.Run([&] {
      id = std::this_thread::get_id();
      ran.Notify();
    });
    ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(60)));
    if (i == 0) first = id;
    EXPECT_EQ(id, first) << i;
    // Wait until the thread is idle again (a hang guard, not a timing assertion).
    for (int k = 0; k < 60000 && cache.idle() == 0; ++k) absl::SleepFor(absl::Milliseconds(1));
    ASSERT_EQ(cache.idle(), 1u);
  }
  EXPECT_EQ(cache.threads(), 1u);
}

TEST(ThreadCacheTest, DestructorRunsWhatIsQueuedAndClosuresMayRunMore) {
  std::atomic<int> ran{0};
  {
    ThreadCache cache;
    for (int i = 0; i < 8; ++i) {
      cache.Run([&] {
        ++ran;
        cache.Run([&] { ++ran; });
      });
    }
  }
  EXPECT_EQ(ran.load(), 16);
}

}  // namespace
}  // namespace prunesvc
