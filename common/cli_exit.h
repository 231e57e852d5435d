// Exit codes of prunesvc's command-line tools, one table for all of them (docs/operations.md
// "Exit codes"):
//
//   0    success; also --help and --version
//   1    a failure that is not the user's input: I/O, a server that is down, an internal error
//   2    input the user must fix: an unknown flag or a bad value, a bad file, an unreachable
//        budget, an existing output, an unsupported configuration, a port already taken
//   130  cancelled (SIGINT; mains that know the signal use 128 + signal)
//
// Header-only; thread-safe.
#ifndef PRUNESVC_COMMON_CLI_EXIT_H_
#define PRUNESVC_COMMON_CLI_EXIT_H_

#include "absl/status/status.h"

namespace prunesvc {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitCancelled = 130;

inline int ExitCodeForStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kUnimplemented:
      return kExitUsage;
    case absl::StatusCode::kCancelled:
      return kExitCancelled;
    default:
      return kExitFailure;
  }
}

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_CLI_EXIT_H_
