#include "common/mutex_mode.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include "absl/synchronization/mutex.h"

namespace prunesvc {
namespace {

// Sets $PRUNESVC_MUTEX_DEADLOCK_DETECTION for one scope, then configures abort again (what
// ctest gives every test binary).
class ScopedMode {
 public:
  explicit ScopedMode(const char* value) { setenv(kMutexDeadlockDetectionEnv, value, 1); }
  ~ScopedMode() {
    setenv(kMutexDeadlockDetectionEnv, "abort", 1);
    EXPECT_TRUE(ConfigureMutexDeadlockDetection().ok());
  }
};

TEST(MutexModeTest, AcceptsTheDocumentedValuesAndNamesTheVariableOtherwise) {
  for (const char* v : {"", "off", "report", "abort"}) {
    ScopedMode mode(v);
    EXPECT_TRUE(ConfigureMutexDeadlockDetection().ok()) << v;
  }
  ScopedMode mode("yes");
  const absl::Status s = ConfigureMutexDeadlockDetection();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "PRUNESVC_MUTEX_DEADLOCK_DETECTION=yes: expected off, report or abort");
}

// With detection off, two locks taken in both orders go unremarked. (Debian's abseil aborts
// here by default: were the setting ignored, this test would die.)
TEST(MutexModeTest, OffLetsAnInvertedLockOrderPass) {
  ScopedMode mode("off");
  ASSERT_TRUE(ConfigureMutexDeadlockDetection().ok());
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  {
    absl::MutexLock lb(&b);
    absl::MutexLock la(&a);
  }
  SUCCEED();
}

}  // namespace
}  // namespace prunesvc
