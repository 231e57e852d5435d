#include "common/logging.h"

#include <memory>
#include <string>

#include "spdlog/sinks/stdout_sinks.h"

namespace prunesvc {

void InitLogging(const std::string& component, const std::string& level) {
  auto logger = std::make_shared<spdlog::logger>(component,
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %L %n pid=%P %v");
  spdlog::level::level_enum lvl = spdlog::level::from_str(level);
  bool bad = lvl == spdlog::level::off && level != "off";
  logger->set_level(bad ? spdlog::level::info : lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  if (bad) spdlog::warn("unknown --log-level '{}', using info", level);
}

}  // namespace prunesvc
