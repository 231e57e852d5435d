// Small pieces every server main needs: an atomically written "ready file" (JSON with the bound
// ports, so scripts and tests can use --port=0 without racing for a free port), and a
// SIGTERM/SIGINT/SIGHUP waiter.
#ifndef PRUNESVC_COMMON_SERVER_UTIL_H_
#define PRUNESVC_COMMON_SERVER_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace prunesvc {

// Writes `content` to `path` via a temporary file + rename, so readers never see half a file.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content);

// Writes the --ready-file JSON {"port", "metrics_port", "pid"[, "worker_port"]} atomically
// (worker_port < 0 leaves it out).
absl::Status WriteReadyFile(const std::string& path, int port, int metrics_port,
                            int worker_port = -1);

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (call first thing in main, before
// any thread starts, so every thread inherits the mask).
void BlockShutdownSignals();

// Waits for one of the blocked shutdown signals and returns its number.
int WaitForShutdownSignal();

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_SERVER_UTIL_H_
