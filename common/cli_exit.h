// Exit codes of prunesvc's command-line tools, one mapping for all of them: 0 success, 2 for
// input the user must fix (bad flags or files, an unreachable budget, an existing output, an
// unsupported configuration), 130 for a cancelled run (mains that know the signal use
// 128 + signal), 1 for everything else. Header-only; thread-safe.
#ifndef PRUNESVC_COMMON_CLI_EXIT_H_
#define PRUNESVC_COMMON_CLI_EXIT_H_

#include "absl/status/status.h"

namespace prunesvc {

inline int ExitCodeForStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kUnimplemented:
      return 2;
    case absl::StatusCode::kCancelled:
      return 130;
    default:
      return 1;
  }
}

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_CLI_EXIT_H_
