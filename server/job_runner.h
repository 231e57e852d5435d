// What the PruningService tells the part of the scheduler that runs jobs (the dispatcher and its
// per-job search drivers): a job became runnable, or was cancelled. The service has already made
// the change durable in the JobStore (a QUEUED job; a CANCELLED state with its StateChanged
// event) before it calls; the runner acts on it asynchronously.
//
// Thread-safe; never blocks (callers are gRPC reactor threads).
#ifndef PRUNESVC_SERVER_JOB_RUNNER_H_
#define PRUNESVC_SERVER_JOB_RUNNER_H_

#include <string>

namespace prunesvc::server {

class JobRunner {
 public:
  virtual ~JobRunner() = default;
  // A durable QUEUED job to run (also called for every non-terminal job at start-up).
  virtual void Enqueue(const std::string& job_id) = 0;
  // The job was committed CANCELLED: stop its driver and cancel its in-flight worker steps.
  virtual void Cancel(const std::string& job_id) = 0;
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_JOB_RUNNER_H_
