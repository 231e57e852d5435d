// A client's view of a real prune-scheduler (with --local-workers) for the end-to-end tests:
// start it, upload datasets, submit, watch (following a restarted scheduler), fetch and unpack
// artifacts, read its metrics. Shared by e2e_jobs_test (issue 13) and e2e_crash_test (issue 16).
#ifndef PRUNESVC_TESTS_E2E_SERVICE_H_
#define PRUNESVC_TESTS_E2E_SERVICE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/job_spec.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "prune/v1/pruning_service.grpc.pb.h"
#include "tests/process_harness.h"

namespace prunesvc::testing {

// A deadline `seconds` from now on `ctx`.
void Deadline(grpc::ClientContext& ctx, int seconds = 600);

// Samples shared by every test of a binary: 12 search and 6 held-out shapes-vqa samples.
struct E2eData {
  std::string work, search, eval;
};
const E2eData& TheData();

struct ServiceOptions {
  int workers = 2;
  int batch = 0;                        // --worker-batch; 0 = the workers' default
  std::string state_dir;                // default: DIR/state
  std::vector<std::string> extra_args;  // appended to the scheduler's command line
  std::vector<std::string> env;         // NAME=VALUE for the scheduler (and so its workers)
  // The stub's channel credentials (TLS, a token) when the scheduler asks for them; the
  // registration wait calls ListWorkers with them (an admin's). nullptr = plain text.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

struct Service {
  std::unique_ptr<TestProcess> process;
  int port = 0, metrics_port = 0, worker_port = 0;
  std::unique_ptr<::prune::v1::PruningService::Stub> stub;
  std::string dir;
};

// Starts a scheduler in TheData().work/`name` and waits until `options.workers` workers are
// registered; on failure `stub` is null (the log says why).
Service StartService(const std::string& name, const ServiceOptions& options = {});
// The same with `workers` local workers scoring in batches of `batch`.
Service StartService(const std::string& name, int workers, int batch = 0);

// Uploads a samples directory as a tar; its dataset id.
absl::StatusOr<std::string> Upload(Service& s, const std::string& dir);
absl::StatusOr<::prune::v1::Job> Submit(Service& s, const JobSpec& spec);
absl::StatusOr<::prune::v1::Job> GetJob(Service& s, const std::string& job_id);

bool IsTerminalEvent(const ::prune::v1::JobEvent& e);
// Watches from `from` to the terminal event; with `drop_after` > 0 the stream is cancelled after
// that many events and the watcher reconnects from the last sequence it saw.
std::vector<::prune::v1::JobEvent> Watch(Service& s, const std::string& job, int drop_after = 0);
// Ends a WatchFollowing early from another thread (a test that failed half-way).
class WatchStopper {
 public:
  void Stop();
  bool stopped();
  // The call in progress (null between calls); Stop() cancels it.
  void Attach(grpc::ClientContext* ctx);

 private:
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// Watches to the terminal event through whatever stub `current()` returns at each (re)connect,
// resuming from the last sequence seen: a scheduler killed and restarted under it is followed.
// Gives up after `timeout_s` or when `stopper` is stopped.
std::vector<::prune::v1::JobEvent> WatchFollowing(
    const std::function<std::shared_ptr<::prune::v1::PruningService::Stub>()>& current,
    const std::string& job, WatchStopper* stopper, int timeout_s = 600);

// Fetches an artifact in two calls (the second resumes from the first's offset); `trailer` gets
// the sha256 the server reports.
absl::StatusOr<std::string> Fetch(Service& s, const std::string& artifact, std::string* trailer);
bool Untar(const std::string& bytes, const std::string& dir);
// Fetches the job's artifact (from its ArtifactReady event) and unpacks it into `dir`.
absl::Status FetchInto(Service& s, const std::vector<::prune::v1::JobEvent>& events,
                       const std::string& dir);

// The sum of a series' samples on /metrics (-1 when absent).
double Metric(int port, const std::string& series);

}  // namespace prunesvc::testing

#endif  // PRUNESVC_TESTS_E2E_SERVICE_H_
