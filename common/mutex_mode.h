// Abseil's Mutex deadlock detection, per process (issue 20).
//
// Debian's libabsl is built without NDEBUG, so by default every absl::Mutex acquisition is
// checked against a process-wide lock-order graph — a global spin lock and a hash lookup per
// Lock(), and the graph's bookkeeping per Mutex destroyed — and a potential cycle aborts the
// process. gRPC's own locks are absl::Mutex too (libgpr's gpr_mu), so the check runs on every
// lock of every call: measured on this machine, a nested pair of locks costs 111 ns with it and
// 30 ns without, and the scheduler's profile under dispatch-bench spent ~3 % of its CPU in the
// graph alone.
//
// ConfigureMutexDeadlockDetection() sets the mode from $PRUNESVC_MUTEX_DEADLOCK_DETECTION:
//   unset, "" or "off"  no detection (production binaries: what abseil does in an NDEBUG build);
//   "report"            log a potential deadlock and go on;
//   "abort"             log it and abort (abseil's debug default; the end-to-end tests' harness
//                       sets it for every process it starts, so CI still catches lock-order
//                       cycles).
// Anything else is an error naming the variable and its values. ParseFlags (common/flags.h) calls
// it, so every prunesvc binary follows the variable; in-process tests (gtest binaries, which do
// not call it) keep abseil's default, abort.
//
// Thread contract: call from main before other threads take locks (the mode is global).
#ifndef PRUNESVC_COMMON_MUTEX_MODE_H_
#define PRUNESVC_COMMON_MUTEX_MODE_H_

#include "absl/status/status.h"

namespace prunesvc {

inline constexpr char kMutexDeadlockDetectionEnv[] = "PRUNESVC_MUTEX_DEADLOCK_DETECTION";

// INVALID_ARGUMENT (the mode unchanged) when the variable holds none of the values above.
absl::Status ConfigureMutexDeadlockDetection();

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_MUTEX_MODE_H_
