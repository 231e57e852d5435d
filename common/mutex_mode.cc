#include "common/mutex_mode.h"

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace prunesvc {

absl::Status ConfigureMutexDeadlockDetection() {
  const char* v = std::getenv(kMutexDeadlockDetectionEnv);
  const std::string value = v == nullptr ? "" : v;
  absl::OnDeadlockCycle mode;
  if (value.empty() || value == "off") {
    mode = absl::OnDeadlockCycle::kIgnore;
  } else if (value == "report") {
    mode = absl::OnDeadlockCycle::kReport;
  } else if (value == "abort") {
    mode = absl::OnDeadlockCycle::kAbort;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(kMutexDeadlockDetectionEnv, "=", value, ": expected off, report or abort"));
  }
  absl::SetMutexDeadlockDetectionMode(mode);
  return absl::OkStatus();
}

}  // namespace prunesvc
