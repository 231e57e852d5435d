// WatchJob under load, in process: the real PruningServiceImpl over a real SqliteJobStore, served
// on loopback. This test plays the search driver (commits events to the store, then publishes
// them) while a watcher does not read: its live queue overflows the small backlog, it re-reads
// the store, and still delivers every event exactly once, in order, ending after the terminal
// one. A watcher of a job that is already terminal replays and ends at once. SubmitJob and
// CancelJob hand the job to the JobRunner only after the store has it.
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/pruning_service.h"
#include "server/sqlite_job_store.h"
#include "server/store_test_util.h"
#include "server/thread_pool.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

// Records what the service tells the runner, and what the store held at that moment.
class RecordingRunner final : public JobRunner {
 public:
  explicit RecordingRunner(JobStore* store) : store_(store) {}
  void Enqueue(const std::string& job_id) override { Record("enqueue", job_id); }
  void Cancel(const std::string& job_id) override { Record("cancel", job_id); }
  std::vector<std::string> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  void Record(const std::string& what, const std::string& job_id) {
    auto job = store_->GetJob(job_id);
    absl::MutexLock lock(&mu_);
    calls_.push_back(absl::StrCat(what, " ", job_id, " ",
                                  job.ok() ? pb::JobState_Name(job->state()) : "missing"));
  }
  JobStore* const store_;
  absl::Mutex mu_;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
};

class WatchJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteJobStoreOptions so;
    so.state_dir = dir_.path();
    store_ = *SqliteJobStore::Create(so);
    FileBlobStoreOptions bo;
    bo.root = dir_.Sub("blobs");
    blobs_ = *FileBlobStore::Create(bo);
    PruningServiceDeps deps;
    deps.store = store_.get();
    deps.blobs = blobs_.get();
    deps.hub = &hub_;
    deps.pool = &pool_;
    deps.metrics = &metrics_;
    PruningServiceOptions options;
    options.max_watch_backlog = 4;
    options.upload_dir = dir_.path();
    options.allowed_model_roots = {std::filesystem::canonical(PRUNESVC_SOURCE_DIR "/models")};
    service_ = std::make_unique<PruningServiceImpl>(deps, options);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = pb::PruningService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  std::string NewJob() {
    pb::JobEvent queued;
    queued.mutable_state_changed()->set_to(pb::QUEUED);
    auto created = store_->CreateJob("", pb::JobSpec(), {queued});
    EXPECT_TRUE(created.ok()) << created.status();
    return created->job.job_id();
  }

  // What the driver does: commit, then publish.
  void Emit(const std::string& job, int count, std::optional<pb::JobState> state) {
    std::vector<pb::JobEvent> events(count);
    for (int i = 0; i < count; ++i) events[i].mutable_log()->set_message(std::string(2000, 'x'));
    JobMutation m;
    if (state) {
      m.state = *state;
      pb::JobEvent e;
      e.mutable_state_changed()->set_from(pb::QUEUED);
      e.mutable_state_changed()->set_to(*state);
      events.push_back(e);
    }
    auto r = store_->Commit(job, m, events, std::nullopt);
    ASSERT_TRUE(r.ok()) << r.status();
    hub_.Publish(r->events);
  }

  ScopedTempDir dir_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<FileBlobStore> blobs_;
  EventHub hub_;
  ThreadPool pool_{4};
  SchedulerMetrics metrics_;
  std::unique_ptr<PruningServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<pb::PruningService::Stub> stub_;
};

TEST_F(WatchJobTest, SlowWatcherFallsBackToTheStoreAndMissesNothing) {
  const std::string job = NewJob();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  pb::WatchJobRequest req;
  req.set_job_id(job);
  auto reader = stub_->WatchJob(&ctx, req);
  pb::JobEvent e;
  ASSERT_TRUE(reader->Read(&e));  // replayed: the watcher is subscribed
  EXPECT_EQ(e.sequence(), 1);

  // ~6 MB of events while the client reads nothing: flow control stalls the writes, the live
  // queue (backlog 4) overflows and is dropped. Publishing never waits for the watcher.
  constexpr int kBatches = 30, kPerBatch = 100;
  for (int b = 0; b < kBatches; ++b) Emit(job, kPerBatch, std::nullopt);
  Emit(job, 0, pb::CANCELLED);
  const int64_t last = 1 + kBatches * kPerBatch + 1;

  int64_t expected = 2;
  while (reader->Read(&e)) {
    ASSERT_EQ(e.sequence(), expected);
    ++expected;
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(expected, last + 1);
  EXPECT_EQ(e.state_changed().to(), pb::CANCELLED);
  EXPECT_GE(metrics_.watch_resyncs->Value(), 1);  // the store fallback did happen
}

TEST_F(WatchJobTest, ManyLiveWatchersThenATerminalJobReplaysAndEnds) {
  const std::string job = NewJob();
  constexpr int kWatchers = 8;
  std::vector<std::vector<int64_t>> seen(kWatchers);
  std::vector<std::thread> threads;
  std::atomic<int> subscribed{0};
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      pb::WatchJobRequest req;
      req.set_job_id(job);
      auto reader = stub_->WatchJob(&ctx, req);
      pb::JobEvent e;
      while (reader->Read(&e)) {
        if (seen[i].empty()) ++subscribed;
        seen[i].push_back(e.sequence());
      }
      EXPECT_TRUE(reader->Finish().ok());
    });
  }
  while (subscribed.load() < kWatchers) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  for (int b = 0; b < 5; ++b) Emit(job, 3, std::nullopt);
  Emit(job, 1, pb::FAILED);
  for (std::thread& t : threads) t.join();
  std::vector<int64_t> all;
  for (int64_t s = 1; s <= 1 + 15 + 2; ++s) all.push_back(s);
  for (const auto& v : seen) EXPECT_EQ(v, all);

  // Already terminal: replay from 5 ends after the terminal event; from the end, at once.
  for (int64_t from : {int64_t{5}, int64_t{18}, int64_t{100}}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    pb::WatchJobRequest req;
    req.set_job_id(job);
    req.set_from_sequence(from);
    auto reader = stub_->WatchJob(&ctx, req);
    pb::JobEvent e;
    int64_t n = 0;
    while (reader->Read(&e)) ++n;
    EXPECT_TRUE(reader->Finish().ok()) << from;
    EXPECT_EQ(n, std::max<int64_t>(0, 18 - from)) << from;
  }
}

TEST_F(WatchJobTest, ShutdownEndsAnIdleWatcher) {
  const std::string job = NewJob();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  pb::WatchJobRequest req;
  req.set_job_id(job);
  auto reader = stub_->WatchJob(&ctx, req);
  pb::JobEvent e;
  ASSERT_TRUE(reader->Read(&e));  // replayed; now idle, waiting for live events
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  while (reader->Read(&e)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
}

TEST_F(WatchJobTest, SubmitAndCancelReachTheRunnerAfterTheStore) {
  RecordingRunner runner(store_.get());
  service_->SetJobRunner(&runner);
  BlobRecord dataset;
  dataset.blob_id = "sha256:" + std::string(64, 'd');
  dataset.content_id = "sha256:" + std::string(64, 'e');
  dataset.kind = BlobKind::kDataset;
  ASSERT_TRUE(store_->PutBlob(dataset).ok());

  pb::JobSpec spec;
  spec.set_model_uri(std::string("file://") + PRUNESVC_SOURCE_DIR + "/models/tiny-llava-shapes");
  spec.set_dataset_id(dataset.blob_id);
  spec.set_flops_budget(0.5);
  auto submitted = service_->DoSubmit(Principal{""}, spec);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = submitted->job().job_id();
  auto cancelled = service_->DoCancel(Principal{""}, id, "");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  ASSERT_TRUE(
      service_->DoCancel(Principal{""}, id, "").ok());  // terminal: the runner hears nothing more
  EXPECT_EQ(runner.calls(),
            (std::vector<std::string>{"enqueue " + id + " QUEUED", "cancel " + id + " CANCELLED"}));
  auto events = store_->ReadEvents(id, 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].state_changed().reason(), "cancelled by CancelJob");
  // Another tenant sees nothing.
  EXPECT_TRUE(absl::IsNotFound(service_->DoGet(Principal{"tenant-b"}, id).status()));
  EXPECT_TRUE(absl::IsNotFound(service_->DoCancel(Principal{"tenant-b"}, id, "").status()));
  service_->SetJobRunner(nullptr);
}

}  // namespace
}  // namespace prunesvc::server
