// The scheduler's view of its workers: registration, heartbeats and liveness. A worker that has
// not heartbeated for `lost_after` is LOST; one LOST for `forget_after` is dropped. Ids are
// assigned here ("w-<n>") unless the worker brings one (re-registration after a scheduler
// restart keeps its id). Thread-safe; time comes from an injected Clock.
#ifndef PRUNESVC_SERVER_WORKER_TABLE_H_
#define PRUNESVC_SERVER_WORKER_TABLE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "prune/v1/pruning_service.pb.h"

namespace prunesvc::server {

struct WorkerTableOptions {
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration lost_after = absl::Seconds(5);
  absl::Duration forget_after = absl::Minutes(10);
};

class WorkerTable {
 public:
  WorkerTable(WorkerTableOptions options, const Clock* clock);

  // Registers (or re-registers) a worker; returns its id. The address must be host:port.
  absl::StatusOr<std::string> Register(const prune::v1::WorkerInfo& info);

  // Records a heartbeat. NOT_FOUND when the id is unknown (the worker must re-register).
  absl::Status Heartbeat(const std::string& worker_id, prune::v1::WorkerState state,
                         const std::vector<std::string>& cached_models);

  // Snapshot with states refreshed against the clock, ordered by id.
  std::vector<prune::v1::WorkerInfo> List();

  // A fresh random session secret for a registered worker (replacing its previous one): with
  // worker authentication on, the worker proves its id with it on heartbeats and blob calls.
  // NOT_FOUND for an unknown id.
  absl::StatusOr<std::string> OpenSession(const std::string& worker_id);
  // The worker whose current session `session` is; NOT_FOUND when none (forgotten, replaced).
  absl::StatusOr<std::string> WorkerOfSession(const std::string& session);

  // Counts by state after refreshing (for metrics).
  std::map<prune::v1::WorkerState, int> CountByState();

  const WorkerTableOptions& options() const { return options_; }

 private:
  void RefreshLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const WorkerTableOptions options_;
  const Clock* const clock_;

  absl::Mutex mu_;
  struct Entry {
    prune::v1::WorkerInfo info;
    absl::Time last_heartbeat;
    std::string session;  // "" until OpenSession
  };
  std::map<std::string, Entry> workers_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_WORKER_TABLE_H_
