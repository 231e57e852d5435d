#include "server/worker_table.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"

namespace prunesvc::server {
namespace {

bool ValidAddress(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  int port = 0;
  return absl::SimpleAtoi(address.substr(colon + 1), &port) && port > 0 && port < 65536;
}

}  // namespace

WorkerTable::WorkerTable(WorkerTableOptions options, const Clock* clock)
    : options_(options), clock_(clock) {}

absl::StatusOr<std::string> WorkerTable::OpenSession(const std::string& worker_id) {
  uint8_t bytes[32];
  for (size_t got = 0; got < sizeof(bytes);) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(absl::StrCat("getrandom: ", strerror(errno)));
    got += size_t(n);
  }
  std::string session = Sha256Hex(std::string_view(reinterpret_cast<char*>(bytes), 32));
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return absl::NotFoundError(absl::StrCat("no worker ", worker_id));
  it->second.session = session;
  return session;
}

absl::StatusOr<std::string> WorkerTable::WorkerOfSession(const std::string& session) {
  absl::MutexLock lock(&mu_);
  RefreshLocked();
  if (!session.empty()) {
    for (const auto& [id, e] : workers_) {
      if (e.session.size() == session.size() && e.session == session) return id;
    }
  }
  return absl::NotFoundError("unknown worker session (re-register)");
}

absl::StatusOr<std::string> WorkerTable::Register(const prune::v1::WorkerInfo& info) {
  if (!ValidAddress(info.address())) {
    return absl::InvalidArgumentError(
        absl::StrCat("RegisterWorker: info.address must be host:port, got '", info.address(), "'"));
  }
  if (info.device().empty()) {
    return absl::InvalidArgumentError("RegisterWorker: info.device is empty (cpu or cuda:N)");
  }
  absl::MutexLock lock(&mu_);
  std::string id = info.worker_id();
  if (id.empty()) {
    // A worker re-registering from the same address replaces its old entry.
    for (auto it = workers_.begin(); it != workers_.end(); ++it) {
      if (it->second.info.address() == info.address()) {
        workers_.erase(it);
        break;
      }
    }
    id = absl::StrCat("w-", next_id_++);
  }
  Entry& e = workers_[id];
  e.info = info;
  e.info.set_worker_id(id);
  e.info.set_state(prune::v1::WORKER_IDLE);
  e.last_heartbeat = clock_->Now();
  e.info.set_last_heartbeat_unix_ms(absl::ToUnixMillis(e.last_heartbeat));
  return id;
}

absl::Status WorkerTable::Heartbeat(const std::string& worker_id, prune::v1::WorkerState state,
                                    const std::vector<std::string>& cached_models) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown worker '", worker_id, "': re-register"));
  }
  Entry& e = it->second;
  e.last_heartbeat = clock_->Now();
  e.info.set_last_heartbeat_unix_ms(absl::ToUnixMillis(e.last_heartbeat));
  e.info.set_state(state == prune::v1::WORKER_STATE_UNSPECIFIED ? prune::v1::WORKER_IDLE : state);
  e.info.clear_cached_models();
  for (const auto& m : cached_models) e.info.add_cached_models(m);
  return absl::OkStatus();
}

void WorkerTable::RefreshLocked() {
  const absl::Time now = clock_->Now();
  for (auto it = workers_.begin(); it != workers_.end();) {
    const absl::Duration silent = now - it->second.last_heartbeat;
    if (silent > options_.lost_after + options_.forget_after) {
      it = workers_.erase(it);
      continue;
    }
    if (silent > options_.lost_after) it->second.info.set_state(prune::v1::WORKER_LOST);
    ++it;
  }
}

std::vector<prune::v1::WorkerInfo> WorkerTable::List() {
  absl::MutexLock lock(&mu_);
  RefreshLocked();
  std::vector<prune::v1::WorkerInfo> out;
  out.reserve(workers_.size());
  for (const auto& [id, e] : workers_) out.push_back(e.info);
  return out;
}

std::map<prune::v1::WorkerState, int> WorkerTable::CountByState() {
  absl::MutexLock lock(&mu_);
  RefreshLocked();
  std::map<prune::v1::WorkerState, int> counts;
  for (const auto& [id, e] : workers_) ++counts[e.info.state()];
  return counts;
}

}  // namespace prunesvc::server
