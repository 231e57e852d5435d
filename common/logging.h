// Logging setup shared by every binary: spdlog to stderr, one line per event. Structured fields
// are written as `key=value` pairs after the message so logs stay grep- and Loki-friendly.
// (libtorch's c10 headers define glog's LOG/CHECK macros, so prunesvc uses spdlog only.)
#ifndef PRUNESVC_COMMON_LOGGING_H_
#define PRUNESVC_COMMON_LOGGING_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

// Debian's abseil has its own string_view (not std::string_view), which fmt cannot format;
// these let spdlog print absl::string_view (e.g. status.message()) and absl::Status directly.
#if !defined(ABSL_USES_STD_STRING_VIEW)
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Ctx>
  auto format(absl::string_view s, Ctx& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};
#endif

template <>
struct fmt::formatter<absl::Status> : fmt::formatter<fmt::string_view> {
  template <typename Ctx>
  auto format(const absl::Status& s, Ctx& ctx) const {
    std::string text = s.ToString();
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(text), ctx);
  }
};

namespace prunesvc {

// Configures the default logger: `component` is shown on each line; `level` is one of
// trace|debug|info|warn|error (invalid → info with a warning).
void InitLogging(const std::string& component, const std::string& level = "info");

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_LOGGING_H_
