// The one mapping from absl::Status to grpc::Status (and back, for clients). Canonical codes map
// one to one; the message is kept verbatim so it still says what to fix.
#ifndef PRUNESVC_COMMON_GRPC_STATUS_H_
#define PRUNESVC_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace prunesvc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_GRPC_STATUS_H_
