// Issue 17 end to end: a real prune-scheduler with TLS on its client port, mutual TLS and a worker
// token on its --worker-port, bearer tokens for three tenants and an admin, and a local worker
// that gets its credentials from the scheduler. Certificates are made here with Debian's openssl
// (a CA, the scheduler's certificate, a second certificate from the same CA with another common
// name, and one from an unrelated CA).
//
// What it pins: every client RPC without a valid token is UNAUTHENTICATED; tenant B cannot get,
// list, watch, cancel, delete, fetch or reuse anything of tenant A's (NOT_FOUND, or absent from
// its lists), in one table over every RPC, while A (and the admin) can; a plain-text client
// cannot talk to the TLS port; a worker without a client certificate of the CA, or without the
// worker token, cannot register; only the scheduler's certificate may call a worker; the quotas
// answer RESOURCE_EXHAUSTED naming themselves; a token removed from the file stops working after
// SIGHUP, and a file that no longer parses keeps the old tokens.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/job_spec_proto.h"
#include "common/sha256.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "prune/v1/pruning_service.grpc.pb.h"
#include "prune/v1/worker.grpc.pb.h"
#include "tests/e2e_service.h"
#include "tests/process_harness.h"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using testing::ReadFile;
using testing::RunShell;
using testing::Service;
using testing::ServiceOptions;
using testing::SourceDir;
using testing::StartService;
using testing::TheData;

constexpr char kAlice[] = "alice-token-0123456789";  // tenant team-a
constexpr char kBob[] = "bob-token-0123456789abc";   // tenant team-b
constexpr char kCarol[] = "carol-token-0123456789";  // tenant team-c: 1 KiB of storage
constexpr char kDave[] = "dave-token-0123456789ab";  // tenant team-d: 1 running, 1 queued
constexpr char kAdmin[] = "admin-token-0123456789";  // tenant ops, admin
constexpr char kWorkerToken[] = "worker-token-0123456789abcdef";

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// The test PKI, made once per process.
struct Pki {
  std::string dir;
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};

const Pki& ThePki() {
  static const Pki* pki = [] {
    auto* p = new Pki;
    p->dir = TheData().work + "/pki";
    fs::create_directories(p->dir);
    // P-256 keys: fast to make. The scheduler's certificate names 127.0.0.1 (where local workers
    // and the tests dial) and is also the local workers' certificate.
    const std::string script = absl::StrCat(
        "set -e; cd ", p->dir, "\n",
        "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1 "
        "2>/dev/null; }\n",
        "ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "
        "/CN=$1 2>/dev/null; }\n",
        "leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj /CN=$3 2>/dev/null; "
        "printf 'subjectAltName=%s\\n' \"${4:-IP:127.0.0.1,DNS:localhost}\" > $1.ext; "
        "openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem "
        "-days 2 -extfile $1.ext 2>/dev/null; }\n",
        "ca ca; ca other-ca\n", "leaf scheduler ca prune-scheduler\n", "leaf rogue ca rogue\n",
        "leaf stranger other-ca prune-scheduler\n",
        // A worker certificate that names no address, only the workers' shared identity.
        "leaf worker-dns ca prune-worker DNS:prune-worker\n");
    EXPECT_EQ(RunShell(script), 0) << "openssl failed in " << p->dir;
    return p;
  }();
  return *pki;
}

std::string TokensFile(bool with_alice) {
  std::string text = "# issue 17 test tenants\n";
  if (with_alice) absl::StrAppend(&text, kAlice, " team-a user\n");
  absl::StrAppend(&text, kBob, "\tteam-b user\n", kCarol, " team-c user max_stored_bytes=1K\n",
                  kDave, " team-d user max_queued_jobs=1 max_running_jobs=1\n", kAdmin,
                  " ops admin\n");
  return text;
}

std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& ca_name = "ca",
                                              const std::string& cert_name = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFile(ThePki().Path(ca_name + ".pem"));
  if (!cert_name.empty()) {
    o.pem_cert_chain = ReadFile(ThePki().Path(cert_name + ".pem"));
    o.pem_private_key = ReadFile(ThePki().Path(cert_name + ".key"));
  }
  return grpc::SslCredentials(o);
}

std::shared_ptr<grpc::ChannelCredentials> WithToken(const std::string& token) {
  return grpc::CompositeChannelCredentials(Tls(), grpc::AccessTokenCredentials(token));
}

std::shared_ptr<grpc::Channel> Channel(int port,
                                       const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  // A fresh channel per caller (gRPC would share one subchannel otherwise; harmless, but the
  // plain-text and foreign-certificate cases must not reuse a good connection).
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), creds, args);
}

JobSpec SmallSpec(const std::string& dataset, const std::string& eval, int generations = 2) {
  JobSpec s;
  s.model_uri = "file://" + SourceDir() + "/models/tiny-llava-shapes";
  s.dataset_id = dataset;
  s.eval_dataset_id = eval;
  s.flops_budget = 0.5;
  s.population = 4;
  s.parents = 2;
  s.generations = generations;
  s.projector_every = 2;  // a projector blob moves between the worker and the scheduler
  s.projector_steps = 2;
  s.seed = 5;
  return s;
}

void Deadline(grpc::ClientContext& ctx, int seconds = 30) { testing::Deadline(ctx, seconds); }

// The outcome of one RPC for one caller: its status, and whether it showed tenant A's object.
struct Outcome {
  grpc::Status status;
  bool revealed = false;
};

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const Pki& pki = ThePki();
    dir_ = new std::string(TheData().work + "/security");
    fs::create_directories(*dir_);
    WriteText(*dir_ + "/tokens", TokensFile(/*with_alice=*/true));
    WriteText(*dir_ + "/worker-token", std::string(kWorkerToken) + "\n");
    ServiceOptions o;
    o.workers = 1;
    o.extra_args = {
        "--auth-tokens=" + *dir_ + "/tokens",      "--worker-token-file=" + *dir_ + "/worker-token",
        "--tls-cert=" + pki.Path("scheduler.pem"), "--tls-key=" + pki.Path("scheduler.key"),
        "--tls-ca=" + pki.Path("ca.pem"),          "--worker-port=0"};
    o.credentials = WithToken(kAdmin);  // the registration wait lists workers as the admin
    service_ = new Service(StartService("security", o));
  }
  static void TearDownTestSuite() {
    delete service_;
    delete dir_;
  }

  void SetUp() override {
    ASSERT_NE(service_->stub, nullptr) << ReadFile(service_->dir + "/scheduler.log");
  }

  static std::unique_ptr<pb::PruningService::Stub> Api(
      const std::shared_ptr<grpc::ChannelCredentials>& creds) {
    return pb::PruningService::NewStub(Channel(service_->port, creds));
  }
  // A Service view whose stub acts for `token` (for the e2e helpers).
  static Service As(const std::string& token) {
    Service s;
    s.port = service_->port;
    s.dir = service_->dir;
    s.stub = Api(WithToken(token));
    return s;
  }

  // Tenant A's finished search job (projector trained, artifact stored), made once.
  struct AliceJob {
    std::string dataset, eval, job_id, artifact_id;
  };
  static const AliceJob& Alice() {
    static AliceJob* job = [] {
      auto* j = new AliceJob;
      Service a = As(kAlice);
      j->dataset = *testing::Upload(a, TheData().search);
      j->eval = *testing::Upload(a, TheData().eval);
      auto submitted = testing::Submit(a, SmallSpec(j->dataset, j->eval));
      EXPECT_TRUE(submitted.ok()) << submitted.status();
      j->job_id = submitted->job_id();
      const std::vector<pb::JobEvent> events = testing::Watch(a, j->job_id);
      for (const pb::JobEvent& e : events) {
        if (e.has_artifact_ready()) j->artifact_id = e.artifact_ready().artifact_id();
      }
      EXPECT_FALSE(j->artifact_id.empty()) << "the job did not succeed:\n"
                                           << ReadFile(service_->dir + "/scheduler.log");
      return j;
    }();
    return *job;
  }

  // Every client RPC, aimed at tenant A's objects.
  struct Rpc {
    std::string name;
    std::function<Outcome(pb::PruningService::Stub*)> call;
    bool lists = false;        // answers OK with the caller's own objects (A's must be absent)
    bool destructive = false;  // A itself is not run through it
  };
  static std::vector<Rpc> EveryRpc() {
    const AliceJob& a = Alice();
    auto unary = [](auto fn) {
      return [fn](pb::PruningService::Stub* stub) {
        grpc::ClientContext ctx;
        Deadline(ctx);
        return fn(stub, ctx);
      };
    };
    std::vector<Rpc> rpcs;
    rpcs.push_back({"GetJob", unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::GetJobRequest req;
                      req.set_job_id(a.job_id);
                      pb::Job job;
                      grpc::Status st = s->GetJob(&ctx, req, &job);
                      return Outcome{st, st.ok() && job.job_id() == a.job_id};
                    })});
    rpcs.push_back({"ListJobs", unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::ListJobsResponse resp;
                      grpc::Status st = s->ListJobs(&ctx, pb::ListJobsRequest(), &resp);
                      bool seen = false;
                      for (const pb::Job& j : resp.jobs()) seen |= j.job_id() == a.job_id;
                      return Outcome{st, seen};
                    }),
                    /*lists=*/true});
    rpcs.push_back({"WatchJob", [a](pb::PruningService::Stub* s) {
                      grpc::ClientContext ctx;
                      Deadline(ctx);
                      pb::WatchJobRequest req;
                      req.set_job_id(a.job_id);
                      auto reader = s->WatchJob(&ctx, req);
                      pb::JobEvent e;
                      bool seen = false;
                      while (reader->Read(&e)) seen = true;
                      return Outcome{reader->Finish(), seen};
                    }});
    rpcs.push_back({"CancelJob", unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::CancelJobRequest req;
                      req.set_job_id(a.job_id);
                      pb::Job job;
                      grpc::Status st = s->CancelJob(&ctx, req, &job);
                      return Outcome{st, st.ok()};
                    })});
    rpcs.push_back({"FetchArtifact", [a](pb::PruningService::Stub* s) {
                      grpc::ClientContext ctx;
                      Deadline(ctx);
                      pb::FetchArtifactRequest req;
                      req.set_artifact_id(a.artifact_id);
                      auto reader = s->FetchArtifact(&ctx, req);
                      pb::FetchArtifactResponse r;
                      bool seen = false;
                      while (reader->Read(&r)) seen = true;
                      return Outcome{reader->Finish(), seen};
                    }});
    rpcs.push_back({"SubmitJob with A's dataset",
                    unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::SubmitJobRequest req;
                      *req.mutable_spec() = JobSpecToProto(SmallSpec(a.dataset, ""));
                      req.mutable_spec()->clear_eval_dataset_id();
                      req.mutable_spec()->set_request_id("reuse-" + std::to_string(rand()));
                      pb::SubmitJobResponse resp;
                      grpc::Status st = s->SubmitJob(&ctx, req, &resp);
                      return Outcome{st, st.ok()};
                    }),
                    false, /*destructive=*/true});
    rpcs.push_back({"ListDatasets",
                    unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::ListDatasetsResponse resp;
                      grpc::Status st = s->ListDatasets(&ctx, pb::ListDatasetsRequest(), &resp);
                      bool seen = false;
                      for (const pb::Dataset& d : resp.datasets())
                        seen |= d.dataset_id() == a.dataset;
                      return Outcome{st, seen};
                    }),
                    /*lists=*/true});
    rpcs.push_back({"DeleteJob", unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::DeleteJobRequest req;
                      req.set_job_id(a.job_id);
                      pb::DeleteJobResponse resp;
                      grpc::Status st = s->DeleteJob(&ctx, req, &resp);
                      return Outcome{st, st.ok()};
                    }),
                    false, /*destructive=*/true});
    rpcs.push_back({"DeleteDataset",
                    unary([a](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::DeleteDatasetRequest req;
                      req.set_dataset_id(a.dataset);
                      pb::DeleteDatasetResponse resp;
                      grpc::Status st = s->DeleteDataset(&ctx, req, &resp);
                      return Outcome{st, st.ok()};
                    }),
                    false, /*destructive=*/true});
    rpcs.push_back({"ListWorkers", unary([](pb::PruningService::Stub* s, grpc::ClientContext& ctx) {
                      pb::ListWorkersResponse resp;
                      grpc::Status st = s->ListWorkers(&ctx, pb::ListWorkersRequest(), &resp);
                      return Outcome{st, resp.workers_size() > 0};
                    })});
    // Last: once B holds the same bytes, the dataset id is B's too (content-addressed), and
    // B may then use or delete its own copy.
    rpcs.push_back({"UploadDataset of A's bytes",
                    [](pb::PruningService::Stub* s) {
                      // De-duplication is per tenant: B's copy is new to B.
                      const std::string bytes = ReadFile(TheData().search + ".tar");
                      grpc::ClientContext ctx;
                      Deadline(ctx, 120);
                      pb::UploadDatasetResponse resp;
                      auto writer = s->UploadDataset(&ctx, &resp);
                      pb::UploadDatasetRequest info;
                      info.mutable_info()->set_format("tar");
                      info.mutable_info()->set_size_bytes(int64_t(bytes.size()));
                      writer->Write(info);
                      for (size_t off = 0; off < bytes.size(); off += 1 << 20) {
                        pb::UploadDatasetRequest chunk;
                        chunk.set_data(bytes.substr(off, 1 << 20));
                        writer->Write(chunk);
                      }
                      writer->WritesDone();
                      grpc::Status st = writer->Finish();
                      return Outcome{st, st.ok() && resp.already_present()};
                    },
                    /*lists=*/true});
    return rpcs;
  }

  static Rpc Find(const std::string& name) {
    for (Rpc& rpc : EveryRpc()) {
      if (rpc.name == name) return rpc;
    }
    ADD_FAILURE() << "no RPC " << name;
    return {};
  }

  static std::string* dir_;
  static Service* service_;
};

std::string* SecurityTest::dir_ = nullptr;
Service* SecurityTest::service_ = nullptr;

TEST_F(SecurityTest, TenantsSeeOnlyTheirOwnAndNothingWorksWithoutAToken) {
  const AliceJob& a = Alice();
  ASSERT_FALSE(a.artifact_id.empty());
  auto bob = Api(WithToken(kBob));
  auto alice = Api(WithToken(kAlice));
  auto admin = Api(WithToken(kAdmin));
  auto anonymous = Api(Tls());
  auto forged = Api(WithToken("forged-token-0123456789"));

  for (const Rpc& rpc : EveryRpc()) {
    SCOPED_TRACE(rpc.name);
    for (auto* stub : {anonymous.get(), forged.get()}) {
      const Outcome o = rpc.call(stub);
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << o.status.error_message();
      EXPECT_FALSE(o.revealed);
    }
    const Outcome b = rpc.call(bob.get());
    EXPECT_FALSE(b.revealed) << "tenant B saw tenant A's object";
    if (rpc.name == "ListWorkers") {
      EXPECT_EQ(b.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    } else if (rpc.lists) {
      EXPECT_TRUE(b.status.ok()) << b.status.error_message();
    } else {
      EXPECT_EQ(b.status.error_code(), grpc::StatusCode::NOT_FOUND) << b.status.error_message();
    }
    // The owner (non-destructive calls) and the admin (what it may see) do get through: the
    // refusals above are about the caller, not a broken call.
    if (!rpc.destructive && rpc.name != "UploadDataset of A's bytes" && rpc.name != "ListWorkers") {
      const Outcome o = rpc.call(alice.get());
      EXPECT_TRUE(o.status.ok()) << o.status.error_message();
      EXPECT_TRUE(o.revealed);
    }
  }
  // A's job and dataset survived B's DeleteJob / DeleteDataset.
  EXPECT_TRUE(Find("GetJob").call(alice.get()).revealed);
  EXPECT_TRUE(Find("ListDatasets").call(alice.get()).revealed);
  // The admin sees every tenant's jobs and the workers, and may fetch any artifact.
  for (const char* name : {"GetJob", "ListJobs", "ListWorkers", "FetchArtifact", "WatchJob"}) {
    const Outcome o = Find(name).call(admin.get());
    EXPECT_TRUE(o.status.ok()) << name << ": " << o.status.error_message();
    EXPECT_TRUE(o.revealed) << name;
  }
  // (A's FetchArtifact above found the artifact in A's index: the scheduler indexed the blob
  // the worker stored for the job's tenant.) Refusals are counted.
  EXPECT_GT(testing::Metric(service_->metrics_port, "prunesvc_auth_refused_total"), 0);
}

TEST_F(SecurityTest, PlainTextCannotTalkToTheTlsPorts) {
  grpc::ClientContext ctx;
  Deadline(ctx, 10);
  pb::ListJobsResponse resp;
  auto plain =
      pb::PruningService::NewStub(Channel(service_->port, grpc::InsecureChannelCredentials()));
  const grpc::Status st = plain->ListJobs(&ctx, pb::ListJobsRequest(), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  // A certificate the client does not trust (another CA's roots) fails the handshake too.
  grpc::ClientContext ctx2;
  Deadline(ctx2, 10);
  auto distrusting = pb::PruningService::NewStub(Channel(service_->port, Tls("other-ca")));
  EXPECT_EQ(distrusting->ListJobs(&ctx2, pb::ListJobsRequest(), &resp).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecurityTest, AWorkerNeedsTheCaCertificateAndTheWorkerToken) {
  auto attempt = [&](const std::shared_ptr<grpc::ChannelCredentials>& creds,
                     const std::string& token) {
    auto stub = pb::WorkerRegistry::NewStub(Channel(service_->worker_port, creds));
    grpc::ClientContext ctx;
    Deadline(ctx, 10);
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    pb::HeartbeatRequest req;
    req.set_worker_id("w-intruder");
    pb::HeartbeatResponse resp;
    return stub->Heartbeat(&ctx, req, &resp);
  };
  auto register_attempt = [&](const std::shared_ptr<grpc::ChannelCredentials>& creds,
                              const std::string& token) {
    auto stub = pb::WorkerRegistry::NewStub(Channel(service_->worker_port, creds));
    grpc::ClientContext ctx;
    Deadline(ctx, 10);
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    pb::RegisterWorkerRequest req;
    req.mutable_info()->set_address("127.0.0.1:1");
    req.mutable_info()->set_device("cpu");
    pb::RegisterWorkerResponse resp;
    return stub->RegisterWorker(&ctx, req, &resp);
  };
  // No TLS, TLS without a client certificate, a certificate from another CA: no handshake.
  for (const auto& creds : {grpc::InsecureChannelCredentials(), Tls(), Tls("ca", "stranger")}) {
    const grpc::Status st = register_attempt(creds, kWorkerToken);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  }
  // The CA's certificate but no or a wrong token: UNAUTHENTICATED.
  for (const std::string& token : {std::string(), std::string("wrong-worker-token-0123456789")}) {
    const grpc::Status st = register_attempt(Tls("ca", "rogue"), token);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  }
  // With both, the call gets through (a heartbeat of an unknown session asks to re-register):
  // the refusals above are the credentials'.
  EXPECT_TRUE(attempt(Tls("ca", "rogue"), kWorkerToken).ok());
  // A registered-looking caller without a session cannot read a blob.
  {
    auto stub = pb::WorkerRegistry::NewStub(Channel(service_->worker_port, Tls("ca", "rogue")));
    grpc::ClientContext ctx;
    Deadline(ctx, 10);
    ctx.AddMetadata("authorization", std::string("Bearer ") + kWorkerToken);
    pb::FetchBlobRequest req;
    req.set_blob_id(Alice().dataset);
    auto reader = stub->FetchBlob(&ctx, req);
    pb::FetchBlobResponse r;
    EXPECT_FALSE(reader->Read(&r));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  // Clients' tokens are not worker tokens.
  EXPECT_EQ(register_attempt(Tls("ca", "rogue"), kAdmin).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(SecurityTest, OnlyTheSchedulersCertificateMayCallAWorker) {
  auto admin = Api(WithToken(kAdmin));
  grpc::ClientContext ctx;
  Deadline(ctx);
  pb::ListWorkersResponse workers;
  ASSERT_TRUE(admin->ListWorkers(&ctx, pb::ListWorkersRequest(), &workers).ok());
  ASSERT_GT(workers.workers_size(), 0);
  const std::string address = workers.workers(0).address();
  auto call = [&](const std::string& cert) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    auto stub =
        pb::PruningWorker::NewStub(grpc::CreateCustomChannel(address, Tls("ca", cert), args));
    grpc::ClientContext c;
    Deadline(c, 10);
    pb::PrepareRequest req;  // empty: a caller that gets through is told what is missing
    pb::PrepareResponse resp;
    return stub->Prepare(&c, req, &resp);
  };
  const grpc::Status rogue = call("rogue");
  EXPECT_EQ(rogue.error_code(), grpc::StatusCode::UNAUTHENTICATED) << rogue.error_message();
  const grpc::Status scheduler = call("scheduler");
  EXPECT_NE(scheduler.error_code(), grpc::StatusCode::UNAUTHENTICATED) << scheduler.error_message();
  EXPECT_NE(scheduler.error_code(), grpc::StatusCode::UNAVAILABLE) << scheduler.error_message();
}

TEST_F(SecurityTest, QuotasAnswerResourceExhaustedNamingTheQuota) {
  // team-c: max_stored_bytes=1K refuses a dataset of several KiB.
  Service carol = As(kCarol);
  absl::StatusOr<std::string> upload = testing::Upload(carol, TheData().search);
  ASSERT_FALSE(upload.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(upload.status())) << upload.status();
  EXPECT_TRUE(absl::StrContains(upload.status().message(), "quota max_stored_bytes"))
      << upload.status();

  // team-d: max_running_jobs=1 max_queued_jobs=1. A long first job runs; the second waits
  // QUEUED without a driver; the third is refused; cancelling the first lets the second start.
  Service dave = As(kDave);
  absl::StatusOr<std::string> dataset = testing::Upload(dave, TheData().search);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  JobSpec long_spec = SmallSpec(*dataset, "", /*generations=*/40);
  long_spec.eval_dataset_id.reset();
  long_spec.population = 8;
  auto first = testing::Submit(dave, long_spec);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        auto j = testing::GetJob(dave, first->job_id());
        return j.ok() && j->state() == pb::SEARCHING;
      },
      absl::Seconds(120)));
  long_spec.seed = 6;
  auto second = testing::Submit(dave, long_spec);
  ASSERT_TRUE(second.ok()) << second.status();
  long_spec.seed = 7;
  auto third = testing::Submit(dave, long_spec);
  ASSERT_FALSE(third.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(third.status())) << third.status();
  EXPECT_TRUE(absl::StrContains(third.status().message(), "quota max_queued_jobs"))
      << third.status();
  auto waiting = testing::GetJob(dave, second->job_id());
  ASSERT_TRUE(waiting.ok());
  EXPECT_EQ(waiting->state(), pb::QUEUED);
  // Held back by the quota, not waiting for the worker: its driver has not started (a started
  // driver waits for a worker in QUEUED too, but counts as running).
  EXPECT_EQ(testing::Metric(service_->metrics_port, "prunesvc_running_jobs"), 1)
      << "a job over its tenant's running quota started";
  auto first_now = testing::GetJob(dave, first->job_id());
  ASSERT_TRUE(first_now.ok());
  EXPECT_EQ(first_now->state(), pb::SEARCHING) << "the first job should still be running";

  auto dave_api = Api(WithToken(kDave));
  auto cancel = [&](const std::string& id) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    pb::CancelJobRequest req;
    req.set_job_id(id);
    pb::Job job;
    return dave_api->CancelJob(&ctx, req, &job);
  };
  ASSERT_TRUE(cancel(first->job_id()).ok());
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        auto j = testing::GetJob(dave, second->job_id());
        return j.ok() && j->state() != pb::QUEUED;
      },
      absl::Seconds(60)));
  EXPECT_TRUE(cancel(second->job_id()).ok());
  EXPECT_GT(testing::Metric(service_->metrics_port, "prunesvc_quota_exceeded_total"), 1);
}

// prunectl takes the token from $PRUNESVC_TOKEN (or --token / --token-file) and the CA from
// --tls-ca (or $PRUNESVC_TLS_CA).
TEST_F(SecurityTest, PrunectlTakesTheTokenAndTheCa) {
  const AliceJob& a = Alice();
  const std::string prunectl = absl::StrCat(testing::BinDir(), "/prunectl get ", a.job_id,
                                            " --json --addr=localhost:", service_->port);
  const std::string out = *dir_ + "/prunectl.out";
  const std::string ca = ThePki().Path("ca.pem");
  auto run = [&](const std::string& env, const std::string& flags) {
    return RunShell(absl::StrCat(env, " ", prunectl, " ", flags, " >", out, " 2>&1"));
  };
  EXPECT_EQ(run(absl::StrCat("PRUNESVC_TOKEN=", kAlice), "--tls-ca=" + ca), 0) << ReadFile(out);
  EXPECT_TRUE(absl::StrContains(ReadFile(out), a.job_id));
  WriteText(*dir_ + "/alice.token", std::string(kAlice) + "\n");
  EXPECT_EQ(run(absl::StrCat("PRUNESVC_TLS_CA=", ca), "--token-file=" + *dir_ + "/alice.token"), 0)
      << ReadFile(out);
  // Another tenant: NOT_FOUND (exit 2); no token: UNAUTHENTICATED (exit 1); no CA: no TLS.
  EXPECT_EQ(run("", absl::StrCat("--token=", kBob, " --tls-ca=", ca)), 2) << ReadFile(out);
  EXPECT_EQ(run("PRUNESVC_TOKEN=", "--tls-ca=" + ca), 1) << ReadFile(out);
  EXPECT_TRUE(absl::StrContains(ReadFile(out), "UNAUTHENTICATED") ||
              absl::StrContains(ReadFile(out), "no credentials"))
      << ReadFile(out);
  EXPECT_EQ(run(absl::StrCat("PRUNESVC_TOKEN=", kAlice), ""), 1) << ReadFile(out);
}

// The Python client (build/python) takes the token and the CA the same way.
TEST_F(SecurityTest, ThePythonClientTakesTheTokenAndTheCa) {
  const AliceJob& a = Alice();
  const std::string script = *dir_ + "/client.py";
  WriteText(script, absl::StrCat("import sys, prunesvc\n"
                                 "c = prunesvc.Client('localhost:",
                                 service_->port,
                                 "', token=sys.argv[1] or None,"
                                 " tls_ca=sys.argv[2])\n"
                                 "try:\n"
                                 "    print(c.get('",
                                 a.job_id,
                                 "').job_id)\n"
                                 "except prunesvc.PrunesvcError as e:\n"
                                 "    print(type(e).__name__)\n"));
  const std::string out = *dir_ + "/python.out";
  auto run = [&](const std::string& token) {
    return RunShell(absl::StrCat("PYTHONPATH=", testing::BinDir(),
                                 "/../python PRUNESVC_TOKEN= ", "/usr/bin/python3 ", script, " '",
                                 token, "' ", ThePki().Path("ca.pem"), " >", out, " 2>&1"));
  };
  ASSERT_EQ(run(kAlice), 0) << ReadFile(out);
  EXPECT_TRUE(absl::StrContains(ReadFile(out), a.job_id)) << ReadFile(out);
  ASSERT_EQ(run(kBob), 0) << ReadFile(out);
  EXPECT_TRUE(absl::StrContains(ReadFile(out), "NotFound")) << ReadFile(out);
  ASSERT_EQ(run(""), 0) << ReadFile(out);
  EXPECT_TRUE(absl::StrContains(ReadFile(out), "Unauthenticated")) << ReadFile(out);
}

TEST_F(SecurityTest, ARevokedTokenStopsWorkingAfterSighup) {
  const AliceJob& a = Alice();  // made before the revocation
  auto alice = Api(WithToken(kAlice));
  auto bob = Api(WithToken(kBob));
  auto get = [&](pb::PruningService::Stub* stub) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    pb::GetJobRequest req;
    req.set_job_id(a.job_id);
    pb::Job job;
    return stub->GetJob(&ctx, req, &job);
  };
  ASSERT_TRUE(get(alice.get()).ok());
  // A file that no longer parses keeps the previous tokens (a typo must not lock teams out).
  WriteText(*dir_ + "/tokens", std::string(kBob) + " team-b superuser\n");
  ASSERT_EQ(kill(service_->process->pid(), SIGHUP), 0);
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        return absl::StrContains(ReadFile(service_->dir + "/scheduler.log"),
                                 "credentials not reloaded");
      },
      absl::Seconds(10)));
  EXPECT_TRUE(get(alice.get()).ok());
  // Alice's line removed: after SIGHUP her token is refused, Bob's still works.
  WriteText(*dir_ + "/tokens", TokensFile(/*with_alice=*/false));
  ASSERT_EQ(kill(service_->process->pid(), SIGHUP), 0);
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return get(alice.get()).error_code() == grpc::StatusCode::UNAUTHENTICATED; },
      absl::Seconds(10)));
  EXPECT_EQ(get(bob.get()).error_code(), grpc::StatusCode::NOT_FOUND);  // authenticated, not A
  // Restore for any test that runs after this one.
  WriteText(*dir_ + "/tokens", TokensFile(/*with_alice=*/true));
  ASSERT_EQ(kill(service_->process->pid(), SIGHUP), 0);
  EXPECT_TRUE(testing::WaitUntil([&] { return get(alice.get()).ok(); }, absl::Seconds(10)));
}

}  // namespace
}  // namespace prunesvc

namespace prunesvc {
namespace {

// Last (it registers a worker that cannot be reached): a registered worker with its own session
// still reads no blob unless a step leased to it references the blob, and stores none without a
// step.
// --worker-identity (issue 19, for Kubernetes): the scheduler checks every worker's certificate
// for one fixed name instead of the host the worker advertised, so workers may advertise pod IPs
// and share one certificate. This worker's certificate names only "prune-worker" (no address),
// and it advertises 127.0.0.1: without the flag its TLS handshake fails and no step runs.
TEST_F(SecurityTest, WorkerIdentityNamesTheWorkersCertificate) {
  const Pki& pki = ThePki();
  ServiceOptions o;
  o.workers = 0;
  o.extra_args = {
      "--auth-tokens=" + *dir_ + "/tokens",      "--worker-token-file=" + *dir_ + "/worker-token",
      "--tls-cert=" + pki.Path("scheduler.pem"), "--tls-key=" + pki.Path("scheduler.key"),
      "--tls-ca=" + pki.Path("ca.pem"),          "--worker-port=0",
      "--worker-identity=prune-worker"};
  o.credentials = WithToken(kAdmin);
  Service s = StartService("worker-identity", o);
  ASSERT_NE(s.stub, nullptr) << ReadFile(s.dir + "/scheduler.log");
  auto worker = testing::TestProcess::Start(
      {testing::BinDir() + "/prune-worker", "--host=127.0.0.1", "--port=0", "--metrics-port=-1",
       "--threads=1", "--advertise-host=127.0.0.1",
       absl::StrCat("--scheduler=127.0.0.1:", s.worker_port),
       "--tls-cert=" + pki.Path("worker-dns.pem"), "--tls-key=" + pki.Path("worker-dns.key"),
       "--tls-ca=" + pki.Path("ca.pem"), "--scheduler-identity=prune-scheduler",
       "--worker-token-file=" + *dir_ + "/worker-token", "--cache-dir=" + s.dir + "/worker-cache",
       "--allowed-model-roots=" + SourceDir() + "/models"},
      s.dir + "/worker.log");
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        grpc::ClientContext ctx;
        Deadline(ctx, 5);
        pb::ListWorkersResponse resp;
        return s.stub->ListWorkers(&ctx, pb::ListWorkersRequest(), &resp).ok() &&
               resp.workers_size() == 1;
      },
      absl::Seconds(30)))
      << worker->Log();
  Service alice;
  alice.port = s.port;
  alice.dir = s.dir;
  alice.stub = pb::PruningService::NewStub(Channel(s.port, WithToken(kAlice)));
  auto dataset = testing::Upload(alice, TheData().search);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  JobSpec spec = SmallSpec(*dataset, *dataset);
  SetStrategy(spec, search::Strategy::kUniform);
  auto job = testing::Submit(alice, spec);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::vector<pb::JobEvent> events = testing::Watch(alice, job->job_id());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state_changed().to(), pb::SUCCEEDED)
      << ReadFile(s.dir + "/scheduler.log") << worker->Log();
}

TEST_F(SecurityTest, ARegisteredWorkerReadsOnlyWhatItsStepsReference) {
  const AliceJob& a = Alice();
  auto stub = pb::WorkerRegistry::NewStub(Channel(service_->worker_port, Tls("ca", "rogue")));
  auto with_credentials = [&](grpc::ClientContext& ctx, const std::string& session) {
    Deadline(ctx, 10);
    ctx.AddMetadata("authorization", std::string("Bearer ") + kWorkerToken);
    if (!session.empty()) ctx.AddMetadata("prunesvc-worker-session", session);
  };
  grpc::ClientContext rctx;
  with_credentials(rctx, "");
  pb::RegisterWorkerRequest reg;
  reg.mutable_info()->set_address("127.0.0.1:1");
  reg.mutable_info()->set_device("cpu");
  pb::RegisterWorkerResponse registered;
  ASSERT_TRUE(stub->RegisterWorker(&rctx, reg, &registered).ok());
  ASSERT_FALSE(registered.session_token().empty());
  for (const std::string& blob : {a.dataset, a.eval}) {
    grpc::ClientContext ctx;
    with_credentials(ctx, registered.session_token());
    pb::FetchBlobRequest req;
    req.set_blob_id(blob);
    auto reader = stub->FetchBlob(&ctx, req);
    pb::FetchBlobResponse r;
    EXPECT_FALSE(reader->Read(&r));
    const grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "runs no step")) << st.error_message();
  }
  grpc::ClientContext pctx;
  with_credentials(pctx, registered.session_token());
  pb::PutBlobResponse put;
  auto writer = stub->PutBlob(&pctx, &put);
  pb::PutBlobRequest head;
  head.set_blob_id("sha256:" + Sha256Hex(std::string("x")));
  head.set_size_bytes(1);
  head.set_data("x");
  writer->Write(head);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Its heartbeat with its own session is accepted; with another's it is told to re-register.
  grpc::ClientContext hctx;
  with_credentials(hctx, registered.session_token());
  pb::HeartbeatRequest hb;
  hb.set_worker_id(registered.worker_id());
  pb::HeartbeatResponse hb_resp;
  ASSERT_TRUE(stub->Heartbeat(&hctx, hb, &hb_resp).ok());
  EXPECT_FALSE(hb_resp.reregister());
  grpc::ClientContext h2;
  with_credentials(h2, registered.session_token());
  hb.set_worker_id("w-1");
  ASSERT_TRUE(stub->Heartbeat(&h2, hb, &hb_resp).ok());
  EXPECT_TRUE(hb_resp.reregister());
}

}  // namespace
}  // namespace prunesvc
