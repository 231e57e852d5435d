#include "server/worker_client.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "prune/v1/worker.grpc.pb.h"

namespace prunesvc::server {
namespace {

// A listening loopback socket (not a gRPC server: the test watches the connection itself).
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return;
    }
    port = ntohs(a.sin_port);
  }
  ~Listener() {
    if (fd >= 0) close(fd);
  }
  // Whether a connection arrives within `ms`.
  bool Accepts(int ms) const {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, ms) != 1) return false;
    const int c = accept(fd, nullptr, nullptr);
    if (c < 0) return false;
    close(c);
    return true;
  }
};

// A worker that registers is dialled at once: the connection is opened before any step is sent
// (dispatch-bench: the first wave of 64 dispatches arrived spread over 59–81 ms without it,
// 26–32 ms with it). Dial neither blocks nor needs the worker to answer.
TEST(WorkerClientTest, DialOpensTheConnectionBeforeAnyStep) {
  Listener l;
  ASSERT_GT(l.port, 0);
  std::unique_ptr<WorkerConnector> connector = NewGrpcWorkerConnector();
  const std::string address = absl::StrCat("127.0.0.1:", l.port);
  connector->Dial(address);
  EXPECT_TRUE(l.Accepts(30000));
  // The client a later step gets is the one dialled (one channel per address).
  EXPECT_EQ(connector->Connect(address), connector->Connect(address));
}

namespace pb = ::prune::v1;

// A worker whose EvaluatePolicies streams one result per policy, index i with loss i, once the
// test releases it, or answers `error` (with a StepError when `error_retryable` is set) — served
// by a real gRPC server on loopback.
class HeldWorker final : public pb::PruningWorker::Service {
 public:
  grpc::Status EvaluatePolicies(grpc::ServerContext* ctx, const pb::EvaluatePoliciesRequest* req,
                                grpc::ServerWriter<pb::EvaluatePoliciesResponse>* out) override {
    arrived.Notify();
    while (!release.WaitForNotificationWithTimeout(absl::Milliseconds(5))) {
      if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    if (!error.ok()) {
      pb::StepError e;
      e.set_retryable(error_retryable);
      return grpc::Status(error.error_code(), error.error_message(), e.SerializeAsString());
    }
    for (int i = 0; i < req->policies_size(); ++i) {
      pb::EvaluatePoliciesResponse r;
      r.set_index(i);
      r.mutable_evaluation()->set_loss(i);
      out->Write(r);
    }
    return grpc::Status::OK;
  }

  absl::Notification arrived, release;
  grpc::Status error = grpc::Status::OK;
  bool error_retryable = false;
};

struct Served {
  HeldWorker worker;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  Served() {
    int port = 0;
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&worker);
    server = b.BuildAndStart();
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~Served() {
    if (!worker.release.HasBeenNotified()) worker.release.Notify();
    server->Shutdown();
  }
};

// What StartEvaluatePolicies reported, and when it was done.
struct Outcome {
  absl::Mutex mu;
  std::vector<int> indices ABSL_GUARDED_BY(mu);
  std::vector<double> losses ABSL_GUARDED_BY(mu);
  int done_calls ABSL_GUARDED_BY(mu) = 0;
  absl::Status status ABSL_GUARDED_BY(mu);
  absl::Notification done;

  void Start(WorkerClient& client, int policies, absl::Duration deadline, StepCancel* cancel,
             ThreadCache& threads) {
    pb::EvaluatePoliciesRequest req;
    for (int i = 0; i < policies; ++i) req.add_policies()->add_ratios(0.5);
    client.StartEvaluatePolicies(
        req, deadline, cancel,
        [this](const pb::EvaluatePoliciesResponse& r) {
          absl::MutexLock l(&mu);
          indices.push_back(r.index());
          losses.push_back(r.evaluation().loss());
        },
        [this](absl::Status s) {
          {
            absl::MutexLock l(&mu);
            ++done_calls;
            status = std::move(s);
          }
          done.Notify();
        },
        threads);
  }
};

// The gRPC client starts the call and returns at once — the worker holds the answer back, so a
// blocking call could not have returned — then streams every result and calls on_done once.
TEST(WorkerClientTest, StartEvaluatePoliciesReturnsBeforeTheAnswerThenStreamsIt) {
  Served s;
  std::unique_ptr<WorkerConnector> connector = NewGrpcWorkerConnector();
  ThreadCache threads;
  Outcome o;
  o.Start(*connector->Connect(s.address), 3, absl::Seconds(30), nullptr, threads);
  EXPECT_EQ(threads.threads(), 0u);  // no thread of the fallback was used
  ASSERT_TRUE(s.worker.arrived.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_FALSE(o.done.HasBeenNotified());
  s.worker.release.Notify();
  ASSERT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  absl::MutexLock l(&o.mu);
  EXPECT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.done_calls, 1);
  EXPECT_EQ(o.indices, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(o.losses, (std::vector<double>{0, 1, 2}));
}

// A StepCancel reaches a started call (CANCELLED, not retryable: the step was stopped), and a
// call started under a cancelled StepCancel never leaves.
TEST(WorkerClientTest, StartEvaluatePoliciesIsCancelledByItsStepCancel) {
  Served s;
  std::unique_ptr<WorkerConnector> connector = NewGrpcWorkerConnector();
  ThreadCache threads;
  StepCancel cancel;
  Outcome o;
  o.Start(*connector->Connect(s.address), 2, absl::Seconds(30), &cancel, threads);
  ASSERT_TRUE(s.worker.arrived.WaitForNotificationWithTimeout(absl::Seconds(30)));
  cancel.Cancel();
  ASSERT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  {
    absl::MutexLock l(&o.mu);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kCancelled) << o.status;
    EXPECT_FALSE(IsRetryable(o.status));
    EXPECT_EQ(o.done_calls, 1);
  }
  Outcome again;
  again.Start(*connector->Connect(s.address), 2, absl::Seconds(30), &cancel, threads);
  ASSERT_TRUE(again.done.HasBeenNotified());  // synchronously: nothing was sent
  absl::MutexLock l(&again.mu);
  EXPECT_EQ(again.status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(again.indices.empty());
}

// Failures are classified as the blocking call classifies them: the worker's StepError decides
// (retryable or not); a deadline, or a worker that is not there, is retryable elsewhere.
TEST(WorkerClientTest, StartEvaluatePoliciesClassifiesFailuresLikeTheBlockingCall) {
  std::unique_ptr<WorkerConnector> connector = NewGrpcWorkerConnector();
  ThreadCache threads;
  for (bool retryable : {false, true}) {
    Served s;
    s.worker.error = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "out of memory");
    s.worker.error_retryable = retryable;
    s.worker.release.Notify();
    Outcome o;
    o.Start(*connector->Connect(s.address), 1, absl::Seconds(30), nullptr, threads);
    ASSERT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    absl::MutexLock l(&o.mu);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kResourceExhausted) << o.status;
    EXPECT_EQ(IsRetryable(o.status), retryable);
  }
  {
    Served s;  // never released: the deadline ends the call
    Outcome o;
    o.Start(*connector->Connect(s.address), 1, absl::Milliseconds(200), nullptr, threads);
    ASSERT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    absl::MutexLock l(&o.mu);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kDeadlineExceeded) << o.status;
    EXPECT_TRUE(IsRetryable(o.status));
  }
  Listener closed;  // a port nobody serves once the listener is gone
  const std::string nobody = absl::StrCat("127.0.0.1:", closed.port);
  close(closed.fd);
  closed.fd = -1;
  Outcome o;
  o.Start(*connector->Connect(nobody), 1, absl::Seconds(5), nullptr, threads);
  ASSERT_TRUE(o.done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  absl::MutexLock l(&o.mu);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kUnavailable) << o.status;
  EXPECT_TRUE(IsRetryable(o.status));
}

}  // namespace
}  // namespace prunesvc::server
