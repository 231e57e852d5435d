#include "server/worker_client.h"

#include <chrono>
#include <map>
#include <optional>

#include "absl/strings/cord.h"
#include "common/grpc_status.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "prune/v1/worker.grpc.pb.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

constexpr char kRetryablePayload[] = "type.prunesvc.dev/retryable";

// grpc::Status → absl::Status with the worker's StepError (or the transport's) class.
absl::Status Classify(const grpc::Status& g) {
  absl::Status s = FromGrpcStatus(g);
  if (s.ok()) return s;
  pb::StepError e;
  if (!g.error_details().empty() && e.ParseFromString(g.error_details())) {
    return WithRetryable(s, e.retryable());
  }
  // No StepError: the worker did not answer the step (it died, timed out or was unreachable).
  const bool transport =
      s.code() == absl::StatusCode::kUnavailable ||
      s.code() == absl::StatusCode::kDeadlineExceeded || s.code() == absl::StatusCode::kUnknown ||
      s.code() == absl::StatusCode::kInternal || s.code() == absl::StatusCode::kAborted;
  return WithRetryable(s, transport);
}

absl::Status Cancelled() { return WithRetryable(absl::CancelledError("cancelled"), false); }

// Runs one call with a context that `cancel` can reach.
template <typename Call>
absl::Status WithContext(absl::Duration deadline, StepCancel* cancel, Call call) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline));
  if (cancel != nullptr && !cancel->Attach(&ctx)) {
    return Cancelled();
  }
  grpc::Status g = call(ctx);
  if (cancel != nullptr) cancel->Detach();
  return Classify(g);
}

// One EvaluatePolicies call on gRPC's callback API: reads the stream into `on_result`, reports the
// status to `on_done` and deletes itself (OnDone is the reactor's last callback).
class EvaluateCall : public grpc::ClientReadReactor<pb::EvaluatePoliciesResponse> {
 public:
  static void Start(pb::PruningWorker::Stub* stub, const pb::EvaluatePoliciesRequest& req,
                    absl::Duration deadline, StepCancel* cancel,
                    std::function<void(const pb::EvaluatePoliciesResponse&)> on_result,
                    std::function<void(absl::Status)> on_done) {
    auto* call = new EvaluateCall(req, cancel, std::move(on_result), std::move(on_done));
    call->ctx_.set_deadline(std::chrono::system_clock::now() +
                            absl::ToChronoMilliseconds(deadline));
    if (cancel != nullptr && !cancel->Attach(&call->ctx_)) {
      std::function<void(absl::Status)> done = std::move(call->on_done_);
      delete call;
      done(Cancelled());
      return;
    }
    stub->async()->EvaluatePolicies(&call->ctx_, &call->req_, call);
    call->StartRead(&call->resp_);
    call->StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended: OnDone follows
    on_result_(resp_);
    StartRead(&resp_);
  }

  void OnDone(const grpc::Status& status) override {
    if (cancel_ != nullptr) cancel_->Detach();
    std::function<void(absl::Status)> done = std::move(on_done_);
    const absl::Status s = Classify(status);
    delete this;
    done(s);
  }

 private:
  EvaluateCall(const pb::EvaluatePoliciesRequest& req, StepCancel* cancel,
               std::function<void(const pb::EvaluatePoliciesResponse&)> on_result,
               std::function<void(absl::Status)> on_done)
      : req_(req),
        cancel_(cancel),
        on_result_(std::move(on_result)),
        on_done_(std::move(on_done)) {}

  grpc::ClientContext ctx_;
  const pb::EvaluatePoliciesRequest req_;
  StepCancel* const cancel_;
  pb::EvaluatePoliciesResponse resp_;
  const std::function<void(const pb::EvaluatePoliciesResponse&)> on_result_;
  std::function<void(absl::Status)> on_done_;
};

class GrpcWorkerClient : public WorkerClient {
 public:
  GrpcWorkerClient(const std::string& address,
                   const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                   const std::string& identity)
      : channel_(Dial(address, credentials, identity)),
        stub_(pb::PruningWorker::NewStub(channel_)) {}

  // Starts the connection (TCP, HTTP/2 and TLS handshakes) without waiting for it.
  void StartConnecting() { channel_->GetState(/*try_to_connect=*/true); }

  // With an identity, TLS checks the worker's certificate for that name, not the address's host.
  static std::shared_ptr<grpc::Channel> Dial(
      const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& credentials,
      const std::string& identity) {
    grpc::ChannelArguments args;
    if (!identity.empty()) args.SetSslTargetNameOverride(identity);
    // The dispatcher retries a failed step on another worker itself; gRPC's own retries would only
    // buffer every request for a replay that never comes.
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    return grpc::CreateCustomChannel(address, credentials, args);
  }

  absl::StatusOr<pb::PrepareResponse> Prepare(const pb::PrepareRequest& req,
                                              absl::Duration deadline,
                                              StepCancel* cancel) override {
    pb::PrepareResponse resp;
    absl::Status s = WithContext(deadline, cancel, [&](grpc::ClientContext& ctx) {
      return stub_->Prepare(&ctx, req, &resp);
    });
    if (!s.ok()) return s;
    return resp;
  }

  absl::Status EvaluatePolicies(
      const pb::EvaluatePoliciesRequest& req, absl::Duration deadline, StepCancel* cancel,
      const std::function<void(const pb::EvaluatePoliciesResponse&)>& on_result) override {
    return WithContext(deadline, cancel, [&](grpc::ClientContext& ctx) {
      auto reader = stub_->EvaluatePolicies(&ctx, req);
      pb::EvaluatePoliciesResponse r;
      while (reader->Read(&r)) on_result(r);
      return reader->Finish();
    });
  }

  void StartEvaluatePolicies(const pb::EvaluatePoliciesRequest& req, absl::Duration deadline,
                             StepCancel* cancel,
                             std::function<void(const pb::EvaluatePoliciesResponse&)> on_result,
                             std::function<void(absl::Status)> on_done,
                             ThreadCache& blocking_threads) override {
    (void)blocking_threads;
    EvaluateCall::Start(stub_.get(), req, deadline, cancel, std::move(on_result),
                        std::move(on_done));
  }

  absl::StatusOr<pb::TrainProjectorResponse> TrainProjector(const pb::TrainProjectorRequest& req,
                                                            absl::Duration deadline,
                                                            StepCancel* cancel) override {
    pb::TrainProjectorResponse resp;
    absl::Status s = WithContext(deadline, cancel, [&](grpc::ClientContext& ctx) {
      return stub_->TrainProjector(&ctx, req, &resp);
    });
    if (!s.ok()) return s;
    return resp;
  }

  absl::StatusOr<pb::FinalizeResponse> Finalize(const pb::FinalizeRequest& req,
                                                absl::Duration deadline,
                                                StepCancel* cancel) override {
    pb::FinalizeResponse resp;
    absl::Status s = WithContext(deadline, cancel, [&](grpc::ClientContext& ctx) {
      return stub_->Finalize(&ctx, req, &resp);
    });
    if (!s.ok()) return s;
    return resp;
  }

 private:
  const std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::PruningWorker::Stub> stub_;
};

class GrpcWorkerConnector : public WorkerConnector {
 public:
  GrpcWorkerConnector(std::shared_ptr<grpc::ChannelCredentials> credentials, std::string identity)
      : credentials_(std::move(credentials)), identity_(std::move(identity)) {}

  std::shared_ptr<WorkerClient> Connect(const std::string& address) override {
    return ClientOf(address);
  }

  void Dial(const std::string& address) override { ClientOf(address)->StartConnecting(); }

 private:
  std::shared_ptr<GrpcWorkerClient> ClientOf(const std::string& address) {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<GrpcWorkerClient>& c = clients_[address];
    if (c == nullptr) c = std::make_shared<GrpcWorkerClient>(address, credentials_, identity_);
    return c;
  }

  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const std::string identity_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<GrpcWorkerClient>> clients_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void StepCancel::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (ctx_ != nullptr) ctx_->TryCancel();
}

bool StepCancel::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool StepCancel::Attach(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  ctx_ = ctx;
  return true;
}

void StepCancel::Detach() {
  absl::MutexLock lock(&mu_);
  ctx_ = nullptr;
}

bool IsRetryable(const absl::Status& status) {
  if (status.ok()) return false;
  const auto p = status.GetPayload(kRetryablePayload);
  return p.has_value() && *p == "1";
}

absl::Status WithRetryable(absl::Status status, bool retryable) {
  if (!status.ok()) status.SetPayload(kRetryablePayload, absl::Cord(retryable ? "1" : "0"));
  return status;
}

std::unique_ptr<WorkerConnector> NewGrpcWorkerConnector(
    std::shared_ptr<grpc::ChannelCredentials> credentials, std::string worker_identity) {
  if (credentials == nullptr) credentials = grpc::InsecureChannelCredentials();
  return std::make_unique<GrpcWorkerConnector>(std::move(credentials), std::move(worker_identity));
}

}  // namespace prunesvc::server
