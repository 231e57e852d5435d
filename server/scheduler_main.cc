// prune-scheduler: the control plane. See docs/architecture.md §1 and `prune-scheduler --help`.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/server_util.h"
#include "server/scheduler.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on (gRPC and metrics).");
ABSL_FLAG(int, port, 50051, "gRPC port for PruningService and WorkerRegistry; 0 = a free port.");
ABSL_FLAG(int, metrics_port, 9464, "Prometheus /metrics port; 0 = a free port; -1 = off.");
ABSL_FLAG(std::string, state_dir, "./var/scheduler",
          "Directory for the job store and blobs (created; locked against a second scheduler).");
ABSL_FLAG(int, local_workers, 0,
          "Spawn this many prune-worker processes on loopback (restarted if they exit).");
ABSL_FLAG(std::string, worker_binary, "",
          "prune-worker executable for --local-workers (default: next to this binary).");
ABSL_FLAG(int, worker_threads, 0, "Threads per local worker; 0 = cores / --local-workers.");
ABSL_FLAG(int, worker_batch, 0,
          "Samples per scoring forward on each local worker (prune-worker --batch); 0 = its "
          "default. A job's results equal prune-local's at the same --batch.");
ABSL_FLAG(std::string, ready_file, "",
          "When set, write {\"port\":..,\"metrics_port\":..,\"pid\":..} here once serving.");
ABSL_FLAG(std::vector<std::string>, allowed_model_roots, {},
          "Comma-separated directories a job's model_uri (file://) must lie under (realpath'ed "
          "at start; each must exist). None = every job is refused.");
ABSL_FLAG(int64_t, max_upload_bytes, prunesvc::server::kDefaultMaxUploadBytes,
          "Largest accepted UploadDataset (bytes); larger uploads get RESOURCE_EXHAUSTED.");
ABSL_FLAG(absl::Duration, prepare_deadline, absl::Minutes(30),
          "A Prepare step not answered within this moves to another worker (e.g. 30m, 90s).");
ABSL_FLAG(absl::Duration, evaluate_deadline, absl::Minutes(30),
          "An EvaluatePolicies step (one batch of policies on one worker) not finished within "
          "this moves to another worker: a hung or wedged worker costs the job at most this.");
ABSL_FLAG(absl::Duration, train_deadline, absl::Minutes(30),
          "A TrainProjector step not answered within this moves to another worker.");
ABSL_FLAG(absl::Duration, finalize_deadline, absl::Minutes(60),
          "A Finalize step not answered within this moves to another worker.");
ABSL_FLAG(int, max_step_attempts, 4,
          "Attempts per step across workers before the job fails (retryable failures only).");
ABSL_FLAG(int, max_running_jobs, 16,
          "Jobs running at once; later ones wait QUEUED, in submission order, until one "
          "ends.");
ABSL_FLAG(
    bool, evaluation_cache, true,
    "Reuse a policy's evaluation across jobs of one tenant when the worker reports the same "
    "evaluation key (same model files, samples, granularity, N:M, unit, mask method, worker "
    "batch, threads, device and build) and the projector is the same: a re-submitted job or a "
    "seed sweep does not pay twice. Results are bitwise those a fresh evaluation gives "
    "(docs/PERFORMANCE.md measures what it saves and costs).");
ABSL_FLAG(int64_t, evaluation_cache_entries, 200000,
          "Entries the evaluation cache keeps in the state dir (the oldest go first; ~0.6 KB "
          "each with 64 search samples).");
ABSL_FLAG(int64_t, evaluation_cache_memory_mib, 64,
          "MiB of the evaluation cache's newest values also kept in memory; older hits are read "
          "from the state dir. Every entry's key is in memory too (~0.1 KB each).");
ABSL_FLAG(int, max_watchers_per_job, 256,
          "Concurrent WatchJob streams per job; more get RESOURCE_EXHAUSTED naming the limit.");
ABSL_FLAG(int, max_queued_jobs, 1000,
          "QUEUED jobs per tenant; SubmitJob beyond it gets RESOURCE_EXHAUSTED naming the limit.");
ABSL_FLAG(int, max_message_bytes, 8 << 20,
          "Largest gRPC message the scheduler accepts (bytes); larger ones get RESOURCE_EXHAUSTED "
          "from gRPC with both sizes. Dataset and blob chunks are at most 1 MiB.");
ABSL_FLAG(double, retain_days, 0,
          "Finished jobs (with their events, artifact and projectors) are deleted this many days "
          "after they ended; 0 keeps them until DeleteJob. Datasets go by DeleteDataset only.");
ABSL_FLAG(absl::Duration, sweep_interval, absl::Hours(1),
          "How often retention and blob garbage collection run (also at start and soon after "
          "DeleteJob / DeleteDataset).");
ABSL_FLAG(int64_t, tenant_max_running_jobs, 0,
          "Jobs of one tenant running at once (more wait QUEUED while other tenants' start); "
          "0 = only --max-running-jobs. The tokens file may set it per tenant.");
ABSL_FLAG(int64_t, tenant_max_stored_bytes, 0,
          "Bytes one tenant may store (datasets, artifacts, projectors); an upload or submission "
          "beyond it gets RESOURCE_EXHAUSTED naming the quota. 0 = unlimited; the tokens file "
          "may set it per tenant.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate (chain) served on --port and --worker-port; with --tls-key turns on "
          "TLS. Local workers use it as their client and server certificate.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that signs the workers' certificates: --worker-port then requires a client "
          "certificate it verifies (mutual TLS), and the scheduler verifies the workers' servers "
          "with it. Needs --worker-port.");
ABSL_FLAG(std::string, worker_identity, "",
          "With --tls-ca: the name (DNS SAN) every worker's certificate carries, checked instead "
          "of the host each worker advertises, so workers may advertise pod IPs and share one "
          "certificate. With --local-workers the scheduler's certificate must carry it too "
          "(local workers present it). Empty = the advertised host.");
ABSL_FLAG(int, worker_port, -1,
          "Serve WorkerRegistry (registration, heartbeats, blobs) on this port instead of "
          "--port; 0 = a free port; -1 = share --port.");
ABSL_FLAG(std::string, auth_tokens, "",
          "Tokens file: one 'TOKEN TENANT ROLE [max_queued_jobs=N] [max_running_jobs=N] "
          "[max_stored_bytes=N]' per line (ROLE user|admin; # comments); re-read on SIGHUP. "
          "Empty = no authentication (every client is the admin of one anonymous tenant).");
ABSL_FLAG(std::string, worker_token_file, "",
          "File holding the token every worker must present to register, heartbeat and move "
          "blobs; re-read on SIGHUP. Required with --auth-tokens.");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");

int main(int argc, char** argv) {
  prunesvc::BlockShutdownSignals();
  prunesvc::ParseFlags(argc, argv,
                       "prune-scheduler: the prunesvc control plane (jobs, search, dispatch).\n"
                       "Usage: prune-scheduler --state-dir=DIR [--port=50051] "
                       "[--local-workers=N]");
  prunesvc::InitLogging("scheduler", absl::GetFlag(FLAGS_log_level));

  prunesvc::server::SchedulerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.local_workers = absl::GetFlag(FLAGS_local_workers);
  options.worker_binary = absl::GetFlag(FLAGS_worker_binary);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.worker_batch = absl::GetFlag(FLAGS_worker_batch);
  options.log_level = absl::GetFlag(FLAGS_log_level);
  options.allowed_model_roots = absl::GetFlag(FLAGS_allowed_model_roots);
  options.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  options.dispatcher.prepare_deadline = absl::GetFlag(FLAGS_prepare_deadline);
  options.dispatcher.evaluate_deadline = absl::GetFlag(FLAGS_evaluate_deadline);
  options.dispatcher.train_deadline = absl::GetFlag(FLAGS_train_deadline);
  options.dispatcher.finalize_deadline = absl::GetFlag(FLAGS_finalize_deadline);
  options.dispatcher.max_attempts = absl::GetFlag(FLAGS_max_step_attempts);
  options.dispatcher.max_running_jobs = absl::GetFlag(FLAGS_max_running_jobs);
  options.dispatcher.evaluation_cache = absl::GetFlag(FLAGS_evaluation_cache);
  options.evaluation_cache_entries = absl::GetFlag(FLAGS_evaluation_cache_entries);
  const int64_t cache_mib = absl::GetFlag(FLAGS_evaluation_cache_memory_mib);
  options.evaluation_cache_memory_bytes =
      std::clamp<int64_t>(cache_mib, -1, int64_t{1} << 40) * (int64_t{1} << 20);
  options.sweep.retain = absl::Hours(24) * absl::GetFlag(FLAGS_retain_days);
  options.max_watchers_per_job = absl::GetFlag(FLAGS_max_watchers_per_job);
  options.max_queued_jobs = absl::GetFlag(FLAGS_max_queued_jobs);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.sweep_interval = absl::GetFlag(FLAGS_sweep_interval);
  options.tenant_max_running_jobs = absl::GetFlag(FLAGS_tenant_max_running_jobs);
  options.tenant_max_stored_bytes = absl::GetFlag(FLAGS_tenant_max_stored_bytes);
  options.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                 absl::GetFlag(FLAGS_tls_ca)};
  options.worker_port = absl::GetFlag(FLAGS_worker_port);
  options.worker_identity = absl::GetFlag(FLAGS_worker_identity);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens);
  options.worker_token_file = absl::GetFlag(FLAGS_worker_token_file);

  auto scheduler = prunesvc::server::Scheduler::Create(options);
  if (!scheduler.ok()) {
    spdlog::critical("cannot start: {}", scheduler.status().message());
    return 2;
  }
  const std::string ready = absl::GetFlag(FLAGS_ready_file);
  if (!ready.empty()) {
    if (auto s = prunesvc::WriteReadyFile(ready, (*scheduler)->port(), (*scheduler)->metrics_port(),
                                          (*scheduler)->worker_port());
        !s.ok()) {
      spdlog::critical("{}", s.message());
      return 2;
    }
  }
  int sig = prunesvc::WaitForShutdownSignal();
  while (sig == SIGHUP) {  // re-read the credentials; a bad file keeps the old ones
    (void)(*scheduler)->ReloadCredentials();
    sig = prunesvc::WaitForShutdownSignal();
  }
  spdlog::info("received signal {}", sig);
  (*scheduler)->Shutdown();
  return 0;
}
