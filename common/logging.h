// Logging setup shared by every binary: spdlog to stderr, one line per event. Structured fields
// are written as `key=value` pairs after the message so logs stay grep- and Loki-friendly.
// (libtorch's c10 headers define glog's LOG/CHECK macros, so prunesvc uses spdlog only.)
#ifndef PRUNESVC_COMMON_LOGGING_H_
#define PRUNESVC_COMMON_LOGGING_H_

#include <string>

#include "spdlog/spdlog.h"

namespace prunesvc {

// Configures the default logger: `component` is shown on each line; `level` is one of
// trace|debug|info|warn|error (invalid → info with a warning).
void InitLogging(const std::string& component, const std::string& level = "info");

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_LOGGING_H_
