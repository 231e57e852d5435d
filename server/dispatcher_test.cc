// The dispatcher and search driver on a real SQLite store with a fake worker transport
// (WorkerConnector): the job lifecycle and its events, the checkpoint/resume, determinism across
// how a generation is split over workers, retries of a worker's retryable failure, failures that
// end the job, cancellation of in-flight steps, and priority order of dispatch. The fake workers
// score a policy with a closed-form function of its ratios (no model), so the expected search is
// recomputed here with the same function through common/'s EvolutionarySearch.
#include "server/dispatcher.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/evolution.h"
#include "common/job_spec.h"
#include "common/job_spec_proto.h"
#include "common/racing.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/evaluation_plan.h"
#include "server/search_checkpoint.h"
#include "server/search_driver.h"
#include "server/sqlite_job_store.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;
namespace fs = std::filesystem;

// Polls `pred` for up to 60 s (a hang guard, not a timing assertion).
bool testing_internal_wait(const std::function<bool()>& pred) {
  for (int i = 0; i < 6000; ++i) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

FlopsModelDims Dims() {
  FlopsModelDims d;
  d.vision = {.width = 16, .mlp_width = 32, .layers_run = 1, .tokens = 5, .patch_size = 4};
  d.image_tokens = 4;
  d.projector_in = 16;
  d.projector_hidden = 32;
  d.projector_out = 32;
  for (int i = 0; i < 4; ++i) d.decoder.push_back({32, 32, 16, 64});
  d.vocab = 50;
  return d;
}
const TokenStats kStats{.mean_tokens = 20, .mean_tokens_sq = 420, .mean_answer_tokens = 1};

// The fake workers' scores: a smooth function of the ratios (later layers cheaper to prune).
search::EvalResult Score(const std::vector<double>& ratios, int version) {
  double loss = 0.3 - 0.01 * version, omega = 0;
  for (size_t u = 0; u < ratios.size(); ++u) {
    loss += ratios[u] * ratios[u] * (1.0 + 0.5 * double(ratios.size() - u));
    omega += (1 - ratios[u]) / double(ratios.size());
  }
  // 16 per-sample losses around the mean (the estimators and cross-validated η rank with them).
  std::vector<double> samples(16);
  for (size_t i = 0; i < samples.size(); ++i) {
    samples[i] = loss * (1.0 + 0.2 * (double(i % 4) - 1.5)) + 0.01 * ratios[i % ratios.size()];
  }
  return {.loss = loss,
          .accuracy = std::max(0.0, 1 - loss),
          .omega = omega,
          .sample_losses = std::move(samples)};
}

// Shared state of the fake cluster: the calls made, gates and faults.
struct Cluster {
  absl::Mutex mu;
  std::vector<std::string> calls;            // "job/kind" in dispatch order
  std::map<std::string, int> fail_evaluate;  // worker address → retryable failures to inject
  std::string bad_prepare;                   // job id whose prepare fails with bad input
  absl::Notification* gate = nullptr;        // blocks prepare calls until notified
  bool block_evaluate = false;               // evaluate waits until cancelled
  std::atomic<int> evaluations{0};
  // Concurrent evaluate calls per job, and the most seen while `shared()` held (fair shares).
  absl::Duration evaluate_delay = absl::ZeroDuration();
  std::function<bool()> shared;
  std::map<std::string, int> in_flight ABSL_GUARDED_BY(mu);
  std::map<std::string, int> max_in_flight_shared ABSL_GUARDED_BY(mu);
  std::string evaluation_key;      // PrepareResponse.evaluation_key (empty: no cache across jobs)
  std::vector<int> prepare_order;  // PrepareResponse.sample_order
  // The sample_order of every EvaluatePolicies request, joined ("" when the request had none).
  std::set<std::string> evaluate_orders ABSL_GUARDED_BY(mu);
};

class FakeClient : public WorkerClient {
 public:
  FakeClient(Cluster* c, std::string address) : c_(c), address_(std::move(address)) {}

  absl::StatusOr<pb::PrepareResponse> Prepare(const pb::PrepareRequest& req, absl::Duration,
                                              StepCancel*) override {
    Record(req.header().job_id(), "prepare");
    if (c_->gate != nullptr) c_->gate->WaitForNotification();
    if (req.header().job_id() == c_->bad_prepare) {
      return WithRetryable(absl::InvalidArgumentError("model_uri: no such directory"), false);
    }
    pb::PrepareResponse r;
    const FlopsModelDims d = Dims();
    pb::FlopsModelDims* p = r.mutable_flops_dims();
    p->mutable_vision()->set_width(d.vision.width);
    p->mutable_vision()->set_mlp_width(d.vision.mlp_width);
    p->mutable_vision()->set_layers_run(d.vision.layers_run);
    p->mutable_vision()->set_tokens(d.vision.tokens);
    p->mutable_vision()->set_patch_size(d.vision.patch_size);
    p->mutable_vision()->set_channels(d.vision.channels);
    p->set_images_per_sample(1);
    p->set_image_tokens(d.image_tokens);
    p->set_projector_in(d.projector_in);
    p->set_projector_hidden(d.projector_hidden);
    p->set_projector_out(d.projector_out);
    for (const auto& l : d.decoder) {
      pb::DecoderLayerDims* x = p->add_decoder();
      x->set_hidden(l.hidden);
      x->set_q_width(l.q_width);
      x->set_kv_width(l.kv_width);
      x->set_mlp_width(l.mlp_width);
      x->set_num_heads(4);
      x->set_num_kv_heads(2);
      x->set_head_dim(8);
    }
    p->set_vocab(d.vocab);
    r.mutable_token_stats()->set_mean_tokens(kStats.mean_tokens);
    r.mutable_token_stats()->set_mean_tokens_sq(kStats.mean_tokens_sq);
    r.mutable_token_stats()->set_mean_answer_tokens(kStats.mean_answer_tokens);
    r.set_num_samples(16);
    r.set_evaluation_key(c_->evaluation_key);
    r.mutable_sample_order()->Assign(c_->prepare_order.begin(), c_->prepare_order.end());
    for (int l = 0; l < 4; ++l) r.add_owl_outlier_ratios(0.01 * (l + 1));
    return r;
  }

  absl::Status EvaluatePolicies(
      const pb::EvaluatePoliciesRequest& req, absl::Duration, StepCancel* cancel,
      const std::function<void(const pb::EvaluatePoliciesResponse&)>& on_result) override {
    Record(req.header().job_id(), "evaluate");
    const std::string& job = req.header().job_id();
    {
      const bool shared = c_->shared && c_->shared();
      absl::MutexLock lock(&c_->mu);
      c_->evaluate_orders.insert(absl::StrJoin(req.sample_order(), ","));
      int& fails = c_->fail_evaluate[address_];
      if (fails > 0) {
        --fails;
        return WithRetryable(absl::UnavailableError("worker died"), true);
      }
      const int n = ++c_->in_flight[job];
      if (shared) c_->max_in_flight_shared[job] = std::max(c_->max_in_flight_shared[job], n);
    }
    absl::SleepFor(c_->evaluate_delay);
    struct Leave {
      Cluster* c;
      const std::string& job;
      ~Leave() {
        absl::MutexLock lock(&c->mu);
        --c->in_flight[job];
      }
    } leave{c_, job};
    for (int i = 0; i < req.policies_size(); ++i) {
      while (c_->block_evaluate && !cancel->cancelled()) absl::SleepFor(absl::Milliseconds(5));
      if (cancel->cancelled()) return WithRetryable(absl::CancelledError("cancelled"), false);
      std::vector<double> ratios(req.policies(i).ratios().begin(), req.policies(i).ratios().end());
      search::EvalResult e = Score(ratios, req.projector_version());
      if (req.has_race_threshold()) {  // race as a worker does (checkpoints after every sample)
        search::RaceLimit race{.threshold = req.race_threshold(),
                               .norm_eta = req.race_norm_eta(),
                               .num_samples = int(e.sample_losses.size()),
                               .extra = {req.race_extra().begin(), req.race_extra().end()},
                               .paired_eta = req.race_paired_eta(),
                               .reference_losses = {req.race_reference_losses().begin(),
                                                    req.race_reference_losses().end()}};
        e = *RaceAsWorker(std::move(e), race.num_samples, 0, race, size_t(i));
      }
      pb::EvaluatePoliciesResponse r;
      r.set_index(i);
      r.mutable_evaluation()->set_loss(e.loss);
      r.mutable_evaluation()->set_accuracy(e.accuracy);
      r.mutable_evaluation()->set_omega(e.omega);
      r.mutable_evaluation()->mutable_sample_losses()->Add(e.sample_losses.begin(),
                                                           e.sample_losses.end());
      r.mutable_evaluation()->set_raced_out(e.raced_out);
      r.mutable_evaluation()->set_samples_scored(e.samples_scored);
      on_result(r);
      ++c_->evaluations;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<pb::TrainProjectorResponse> TrainProjector(const pb::TrainProjectorRequest& req,
                                                            absl::Duration, StepCancel*) override {
    Record(req.header().job_id(), "train");
    pb::TrainProjectorResponse r;
    r.set_projector_version(req.new_projector_version());
    r.set_projector_blob_id("sha256:" +
                            Sha256Hex(absl::StrCat("projector-", req.new_projector_version())));
    r.set_loss_before(0.5);
    r.set_loss_after(0.4);
    return r;
  }

  absl::StatusOr<pb::FinalizeResponse> Finalize(const pb::FinalizeRequest& req, absl::Duration,
                                                StepCancel*) override {
    Record(req.header().job_id(), "finalize");
    pb::FinalizeResponse r;
    std::string ratios;
    for (double x : req.ratios()) absl::StrAppend(&ratios, x, ",");
    r.set_artifact_blob_id("sha256:" + Sha256Hex(ratios));
    r.set_artifact_size_bytes(123);
    r.set_flops_ratio(0.5);
    r.set_accuracy(0.9);
    r.set_accuracy_set("eval");
    r.set_report_json(req.search_report_json());
    absl::MutexLock lock(&c_->mu);
    final_ratios_[req.header().job_id()] = ratios;
    reports_[req.header().job_id()] = req.search_report_json();
    return r;
  }

  static std::map<std::string, std::string> final_ratios_;
  static std::map<std::string, std::string> reports_;  // search_report_json by job

 private:
  void Record(const std::string& job, const std::string& kind) {
    absl::MutexLock lock(&c_->mu);
    c_->calls.push_back(job + "/" + kind);
  }
  Cluster* const c_;
  const std::string address_;
};
std::map<std::string, std::string> FakeClient::final_ratios_;
std::map<std::string, std::string> FakeClient::reports_;

class FakeConnector : public WorkerConnector {
 public:
  explicit FakeConnector(Cluster* c) : c_(c) {}
  std::shared_ptr<WorkerClient> Connect(const std::string& address) override {
    return std::make_shared<FakeClient>(c_, address);
  }

 private:
  Cluster* const c_;
};

// The real store behind a switch that makes Commit fail as a full disk does (SQLITE_FULL); it
// also keeps every checkpoint committed.
class FullDiskStore : public JobStore {
 public:
  explicit FullDiskStore(JobStore* real) : real_(real) {}
  // After `pass_first` more Commit calls have passed, `fail_commits` calls fail, then they pass.
  std::atomic<int> pass_first{0};
  std::atomic<int> fail_commits{0};
  std::atomic<int> failed{0};
  struct Committed {
    std::string job_id;
    int generation = 0;
    std::string head;  // Checkpoint::search_state_json
  };
  std::vector<Committed> checkpoints() {
    absl::MutexLock l(&mu_);
    return checkpoints_;
  }

  absl::StatusOr<CreateJobResult> CreateJob(absl::string_view t, const pb::JobSpec& s,
                                            const std::vector<pb::JobEvent>& e) override {
    return real_->CreateJob(t, s, e);
  }
  absl::StatusOr<pb::Job> GetJob(absl::string_view id) override { return real_->GetJob(id); }
  absl::StatusOr<ListJobsPage> ListJobs(const ListJobsQuery& q) override {
    return real_->ListJobs(q);
  }
  absl::StatusOr<CommitResult> Commit(absl::string_view id, const JobMutation& m,
                                      const std::vector<pb::JobEvent>& e,
                                      const std::optional<Checkpoint>& c) override {
    if (pass_first.load() > 0) {
      pass_first.fetch_sub(1);
    } else if (fail_commits.load() > 0) {
      fail_commits.fetch_sub(1);
      failed.fetch_add(1);
      return absl::ResourceExhaustedError("commit: database or disk is full");
    }
    absl::StatusOr<CommitResult> r = real_->Commit(id, m, e, c);
    if (r.ok() && c.has_value()) {
      absl::MutexLock l(&mu_);
      checkpoints_.push_back({std::string(id), c->generation, c->search_state_json});
    }
    return r;
  }
  absl::StatusOr<std::vector<pb::JobEvent>> ReadEvents(absl::string_view id, int64_t after,
                                                       int32_t limit) override {
    return real_->ReadEvents(id, after, limit);
  }
  absl::StatusOr<std::optional<Checkpoint>> LoadCheckpoint(absl::string_view id) override {
    return real_->LoadCheckpoint(id);
  }
  absl::StatusOr<std::vector<pb::Job>> ListNonTerminalJobs() override {
    return real_->ListNonTerminalJobs();
  }
  absl::StatusOr<std::map<pb::JobState, int64_t>> CountJobsByState(absl::string_view t) override {
    return real_->CountJobsByState(t);
  }
  absl::StatusOr<PutBlobResult> PutBlob(const BlobRecord& r) override { return real_->PutBlob(r); }
  absl::StatusOr<BlobRecord> GetBlob(absl::string_view t, absl::string_view id) override {
    return real_->GetBlob(t, id);
  }
  absl::StatusOr<std::vector<BlobRecord>> ListBlobs(absl::string_view t,
                                                    std::optional<BlobKind> k) override {
    return real_->ListBlobs(t, k);
  }
  absl::StatusOr<DeleteBlobResult> DeleteBlob(absl::string_view t, absl::string_view id) override {
    return real_->DeleteBlob(t, id);
  }
  absl::StatusOr<int64_t> TenantBlobBytes(absl::string_view t) override {
    return real_->TenantBlobBytes(t);
  }
  absl::Status DeleteJob(absl::string_view id) override { return real_->DeleteJob(id); }
  absl::StatusOr<std::vector<std::string>> ListJobsFinishedBefore(absl::Time t) override {
    return real_->ListJobsFinishedBefore(t);
  }
  absl::StatusOr<std::set<std::pair<std::string, std::string>>> ReferencedBlobs() override {
    return real_->ReferencedBlobs();
  }
  absl::StatusOr<std::map<std::string, std::string>> GetCachedEvaluations(
      const std::vector<std::string>& keys) override {
    return real_->GetCachedEvaluations(keys);
  }
  absl::Status PutCachedEvaluations(const CacheEntries& entries) override {
    return real_->PutCachedEvaluations(entries);
  }

 private:
  JobStore* const real_;
  absl::Mutex mu_;
  std::vector<Committed> checkpoints_ ABSL_GUARDED_BY(mu_);
};

struct Harness {
  explicit Harness(int workers, const std::string& dir = "", bool evaluation_cache = false) {
    owns_dir = dir.empty();
    state_dir = dir.empty() ? (fs::temp_directory_path() /
                               absl::StrCat("dispatcher_test_", getpid(), "_", counter++))
                                  .string()
                            : dir;
    store = *SqliteJobStore::Create({.state_dir = state_dir});
    full_disk = std::make_unique<FullDiskStore>(store.get());
    table = std::make_unique<WorkerTable>(
        WorkerTableOptions{.lost_after = absl::Hours(1), .forget_after = absl::Hours(2)},
        RealClock::Get());
    for (int w = 0; w < workers; ++w) {
      pb::WorkerInfo info;
      info.set_address(absl::StrCat("127.0.0.1:", 1000 + w + 1));
      info.set_device("cpu");
      EXPECT_TRUE(table->Register(info).ok());
    }
    DispatcherOptions o;
    o.retry_backoff = absl::Milliseconds(1);
    o.quarantine = absl::Milliseconds(1);
    o.commit_retry_backoff = absl::Milliseconds(1);
    o.commit_retry_max = absl::Milliseconds(4);
    o.evaluation_cache = evaluation_cache;
    dispatcher =
        std::make_unique<Dispatcher>(o, full_disk.get(), &hub, table.get(), &connector, &registry);
  }
  ~Harness() {
    dispatcher.reset();
    full_disk.reset();
    store.reset();
    std::error_code ec;
    if (owns_dir) fs::remove_all(state_dir, ec);
  }

  std::string Submit(JobSpec spec, const std::string& tenant = "") {
    spec.model_uri = "file:///models/fake";
    spec.dataset_id = "sha256:" + std::string(64, 'a');
    pb::JobEvent queued;
    queued.mutable_state_changed()->set_to(pb::QUEUED);
    auto r = store->CreateJob(tenant, JobSpecToProto(spec), {queued});
    EXPECT_TRUE(r.ok()) << r.status();
    dispatcher->Enqueue(r->job.job_id());
    return r->job.job_id();
  }
  pb::Job WaitTerminal(const std::string& id) {
    for (int i = 0; i < 3000; ++i) {
      auto j = store->GetJob(id);
      if (j.ok() && IsTerminalState(j->state())) return *j;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "job " << id << " did not finish";
    return {};
  }
  std::vector<pb::JobEvent> Events(const std::string& id) { return *store->ReadEvents(id, 0, 0); }

  static inline int counter = 0;
  bool owns_dir = true;
  std::string state_dir;
  Cluster cluster;
  FakeConnector connector{&cluster};
  EventHub hub;
  prometheus::Registry registry;
  std::unique_ptr<SqliteJobStore> store;
  std::unique_ptr<FullDiskStore> full_disk;  // what the dispatcher writes through
  std::unique_ptr<WorkerTable> table;
  std::unique_ptr<Dispatcher> dispatcher;
};

JobSpec SmallSearch() {
  JobSpec s;
  s.flops_budget = 0.6;
  s.population = 6;
  s.parents = 2;
  s.generations = 4;
  s.projector_every = 2;
  s.seed = 11;
  return s;
}

// The final ratios the same search picks in process with the same scores.
std::string ExpectedFinalRatios(JobSpec spec) {
  auto space = BuildPolicySpace(spec, Dims(), kStats, std::vector<DecoderLayerHeads>(4, {4, 2, 8}));
  class Local : public search::PolicyEvaluator {
   public:
    explicit Local(const search::PolicySpace* s) : s_(s) {}
    absl::StatusOr<std::vector<search::EvalResult>> Evaluate(const std::vector<search::Policy>& ps,
                                                             int v) override {
      std::vector<search::EvalResult> out;
      for (const auto& p : ps) out.push_back(Score(*s_->UnitRatios(p), v));
      return out;
    }
    absl::StatusOr<search::ProjectorUpdate> TrainProjector(const std::vector<search::Policy>&,
                                                           int) override {
      return search::ProjectorUpdate{.version = ++latest, .loss_before = 0.5, .loss_after = 0.4};
    }
    int latest = 0;
    const search::PolicySpace* s_;
  } local(&*space);
  auto search = search::EvolutionarySearch::Create(&*space, spec.ToSearchConfig(16));
  EXPECT_TRUE((*search)->Run(local).ok());
  const search::ScoredPolicy best = *(*search)->Best();
  const std::vector<double> unit_ratios = *space->UnitRatios(best.policy);
  std::string ratios;
  for (double x : unit_ratios) absl::StrAppend(&ratios, x, ",");
  return ratios;
}

TEST(DispatcherTest, JobRunsToSucceededWithEventsInOrderAndTheLocalPolicy) {
  for (int workers : {1, 2, 5}) {  // 5 > the generations' cache misses: splitting is exercised
    Harness h(workers);
    const std::string id = h.Submit(SmallSearch());
    const pb::Job job = h.WaitTerminal(id);
    ASSERT_EQ(job.state(), pb::SUCCEEDED) << job.error();
    EXPECT_FALSE(job.artifact_id().empty());
    EXPECT_EQ(FakeClient::final_ratios_[id], ExpectedFinalRatios(SmallSearch())) << workers;
    std::vector<std::string> kinds;
    int64_t seq = 0;
    for (const pb::JobEvent& e : h.Events(id)) {
      EXPECT_EQ(e.sequence(), ++seq);
      if (e.has_state_changed()) kinds.push_back(pb::JobState_Name(e.state_changed().to()));
      if (e.has_generation_finished()) kinds.push_back("G");
      if (e.has_projector_updated()) kinds.push_back("P");
      if (e.has_artifact_ready()) kinds.push_back("A");
    }
    const std::vector<std::string> want = {"QUEUED",     "PREPARING", "SEARCHING", "G", "G",
                                           "G",          "P",         "G",         "G", "P",
                                           "FINALIZING", "A",         "SUCCEEDED"};
    EXPECT_EQ(kinds, want) << workers;
    EXPECT_EQ(job.last_event_sequence(), int64_t(want.size()));
  }
}

TEST(DispatcherTest, RetryableWorkerFailureIsRetriedElsewhereWithTheSamePolicy) {
  Harness h(2);
  h.cluster.fail_evaluate["127.0.0.1:1001"] = 2;
  const std::string id = h.Submit(SmallSearch());
  const pb::Job job = h.WaitTerminal(id);
  ASSERT_EQ(job.state(), pb::SUCCEEDED) << job.error();
  EXPECT_EQ(FakeClient::final_ratios_[id], ExpectedFinalRatios(SmallSearch()));
  EXPECT_GE(h.dispatcher->metrics().retries->Value(), 2);
}

TEST(DispatcherTest, BadInputAndUnreachableBudgetFailTheJob) {
  Harness h(1);
  JobSpec spec = SmallSearch();
  spec.flops_budget = 0.05;  // below what the model can reach
  const std::string low = h.Submit(spec);
  pb::Job job = h.WaitTerminal(low);
  EXPECT_EQ(job.state(), pb::FAILED);
  EXPECT_EQ(job.error_code(), int(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(absl::StrContains(job.error(), "smallest reachable budget")) << job.error();
  // A bad-input step fails the job at once (no retries).
  Harness h3(2);
  h3.cluster.bad_prepare = "will-be-set";
  JobSpec ok = SmallSearch();
  ok.model_uri = "file:///models/fake";
  ok.dataset_id = "sha256:" + std::string(64, 'a');
  pb::JobEvent queued;
  queued.mutable_state_changed()->set_to(pb::QUEUED);
  auto r = h3.store->CreateJob("", JobSpecToProto(ok), {queued});
  ASSERT_TRUE(r.ok());
  {
    absl::MutexLock lock(&h3.cluster.mu);
    h3.cluster.bad_prepare = r->job.job_id();
  }
  h3.dispatcher->Enqueue(r->job.job_id());
  job = h3.WaitTerminal(r->job.job_id());
  EXPECT_EQ(job.state(), pb::FAILED);
  EXPECT_EQ(job.error_code(), int(absl::StatusCode::kInvalidArgument));
  absl::MutexLock lock(&h3.cluster.mu);
  EXPECT_EQ(
      std::count(h3.cluster.calls.begin(), h3.cluster.calls.end(), r->job.job_id() + "/prepare"),
      1);
}

TEST(DispatcherTest, CancelStopsTheDriverAndItsInFlightSteps) {
  Harness h(2);
  h.cluster.block_evaluate = true;
  const std::string id = h.Submit(SmallSearch());
  ASSERT_TRUE(testing_internal_wait([&] {
    return h.cluster.evaluations.load() == 0 && h.store->GetJob(id)->state() == pb::SEARCHING;
  }));
  // What CancelJob does: commit CANCELLED, then tell the runner.
  JobMutation m;
  m.state = pb::CANCELLED;
  pb::JobEvent e;
  e.mutable_state_changed()->set_to(pb::CANCELLED);
  ASSERT_TRUE(h.store->Commit(id, m, {e}, std::nullopt).ok());
  h.dispatcher->Cancel(id);
  const pb::Job job = h.WaitTerminal(id);
  EXPECT_EQ(job.state(), pb::CANCELLED);
  // The driver exits (the dispatcher forgets it) and the workers are released.
  ASSERT_TRUE(
      testing_internal_wait([&] { return h.dispatcher->metrics().running_jobs->Value() == 0; }));
  EXPECT_EQ(h.dispatcher->waiting(), 0);
}

TEST(DispatcherTest, HigherPriorityStepsAreDispatchedFirst) {
  Harness h(1);
  absl::Notification gate;
  h.cluster.gate = &gate;
  JobSpec low = SmallSearch();
  low.priority = 0;
  const std::string a = h.Submit(low);
  // A's prepare holds the only worker; C (priority 0) and B (priority 10) wait for it.
  ASSERT_TRUE(testing_internal_wait([&] {
    absl::MutexLock lock(&h.cluster.mu);
    return h.cluster.calls.size() == 1;
  }));
  const std::string c = h.Submit(low);
  ASSERT_TRUE(testing_internal_wait([&] { return h.dispatcher->waiting() == 1; }));
  JobSpec high = SmallSearch();
  high.priority = 10;
  const std::string b = h.Submit(high);
  ASSERT_TRUE(testing_internal_wait([&] { return h.dispatcher->waiting() == 2; }));
  gate.Notify();
  for (const std::string& id : {a, b, c}) EXPECT_EQ(h.WaitTerminal(id).state(), pb::SUCCEEDED);
  absl::MutexLock lock(&h.cluster.mu);
  ASSERT_GE(h.cluster.calls.size(), 3u);
  EXPECT_EQ(h.cluster.calls[0], a + "/prepare");
  EXPECT_EQ(h.cluster.calls[1], b + "/prepare");  // B jumped C, which waited longer
  // C, which waited longer than B, got the worker only after B's step.
  const auto c_prepare = std::find(h.cluster.calls.begin(), h.cluster.calls.end(), c + "/prepare");
  EXPECT_GT(c_prepare - h.cluster.calls.begin(), 1);
}

// The search report a job's driver sent with its Finalize.
nlohmann::json SearchReport(const std::string& job_id) {
  return nlohmann::json::parse(FakeClient::reports_[job_id]);
}

// The evaluation cache across jobs: the same job again (same tenant, same worker evaluation key)
// dispatches no evaluation and records exactly the first one's evaluations and policy, racing
// included (a hit is raced by replaying it); another tenant shares nothing; without a worker key
// nothing is cached.
TEST(DispatcherTest, ASecondJobReusesTheFirstJobsEvaluations) {
  Harness h(2, "", /*evaluation_cache=*/true);
  h.cluster.evaluation_key = "sha256:" + std::string(64, 'e');
  const JobSpec spec = SmallSearch();
  auto evaluated = [](const std::string& id) { return SearchReport(id).at("evaluated"); };
  auto reused = [](const std::string& id) {
    return SearchReport(id).value("evaluations_reused", -1);
  };
  const std::string a = h.Submit(spec);
  ASSERT_EQ(h.WaitTerminal(a).state(), pb::SUCCEEDED);
  const int after_a = h.cluster.evaluations.load();
  ASSERT_GT(after_a, 0);
  EXPECT_EQ(reused(a), 0);
  const std::string b = h.Submit(spec);
  ASSERT_EQ(h.WaitTerminal(b).state(), pb::SUCCEEDED);
  EXPECT_EQ(h.cluster.evaluations.load(), after_a);  // every policy came from the cache
  EXPECT_EQ(evaluated(b), evaluated(a));             // bitwise the same results, raced the same
  EXPECT_EQ(FakeClient::final_ratios_[b], FakeClient::final_ratios_[a]);
  EXPECT_EQ(reused(b), int(evaluated(b).size()));
  // The fake's projectors and artifact, stored for tenant "" as a worker's PutBlob stores them
  // (a tenant's job indexes them for its tenant).
  for (const std::string& id : {Sha256Hex("projector-1"), Sha256Hex("projector-2"),
                                Sha256Hex(FakeClient::final_ratios_[a])}) {
    BlobRecord blob;
    blob.blob_id = "sha256:" + id;
    blob.kind = BlobKind::kProjector;
    blob.size_bytes = 1;
    ASSERT_TRUE(h.store->PutBlob(blob).ok());
  }
  const std::string c = h.Submit(spec, "another-tenant");
  const pb::Job job_c = h.WaitTerminal(c);
  ASSERT_EQ(job_c.state(), pb::SUCCEEDED) << job_c.error();
  EXPECT_EQ(h.cluster.evaluations.load(), 2 * after_a);  // nothing shared across tenants
  EXPECT_EQ(evaluated(c), evaluated(a));

  // The same job twice on a fresh cluster that must not reuse: both evaluate everything.
  auto expect_no_reuse = [&](Harness& x) {
    const std::string first = x.Submit(spec);
    ASSERT_EQ(x.WaitTerminal(first).state(), pb::SUCCEEDED);
    const std::string second = x.Submit(spec);
    ASSERT_EQ(x.WaitTerminal(second).state(), pb::SUCCEEDED);
    EXPECT_EQ(x.cluster.evaluations.load(), 2 * after_a);
    EXPECT_EQ(reused(second), 0);
  };
  Harness off(2, "", /*evaluation_cache=*/true);  // no evaluation key from the workers
  expect_no_reuse(off);
  Harness disabled(2);  // --evaluation-cache=false, whatever the workers report
  disabled.cluster.evaluation_key = h.cluster.evaluation_key;
  expect_no_reuse(disabled);
}

// Each generation's checkpoint holds that generation's state, written while the next one runs:
// after its calls are out, or — when the next generation dispatches nothing (a resubmitted job,
// every result cached) — before the next state replaces it. One write per generation, in order.
TEST(DispatcherTest, EachGenerationsCheckpointHoldsThatGenerationsState) {
  Harness h(2, "", /*evaluation_cache=*/true);
  h.cluster.evaluation_key = "sha256:" + std::string(64, 'e');
  const JobSpec spec = SmallSearch();
  const std::string a = h.Submit(spec);
  ASSERT_EQ(h.WaitTerminal(a).state(), pb::SUCCEEDED);
  const int after_a = h.cluster.evaluations.load();
  const std::string b = h.Submit(spec);  // every policy from the cache: nothing dispatched
  ASSERT_EQ(h.WaitTerminal(b).state(), pb::SUCCEEDED);
  ASSERT_EQ(h.cluster.evaluations.load(), after_a);
  for (const std::string& id : {a, b}) {
    std::vector<int> generations;
    for (const FullDiskStore::Committed& c : h.full_disk->checkpoints()) {
      if (c.job_id != id) continue;
      generations.push_back(c.generation);
      const nlohmann::json head = nlohmann::json::parse(c.head);
      const nlohmann::json& history = head.at("search_state").at("history");
      ASSERT_FALSE(history.empty()) << id;
      EXPECT_EQ(history.back().at("generation").get<int>(), c.generation)
          << "job " << id << ": the checkpoint of generation " << c.generation
          << " holds the state after generation " << history.back().at("generation");
      EXPECT_EQ(int(history.size()), c.generation + 1) << id;
    }
    std::vector<int> expected(size_t(spec.generations + 1));
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(generations, expected) << id;
  }
}

// warm_start_job_id: the second search's initial population holds the first one's ranked
// policies (repaired into its band), so the first job's pick is among the second's first
// generation; the same start is deterministic; another budget repairs them into its own band.
TEST(DispatcherTest, AWarmStartedSearchBeginsWithTheFinishedJobsRankedPolicies) {
  Harness h(2);
  JobSpec spec = SmallSearch();
  spec.projector_every = 0;  // every evaluation under the model's own projector
  // The fitness is the loss, comparable across jobs (PAIRED's is relative to each job's
  // reference, which the repair may draw differently under another seed).
  spec.eta = 0.0;
  auto first_generation = [&](const std::string& id) {
    std::set<std::string> hashes;
    const nlohmann::json evaluated = SearchReport(id).at("evaluated");
    for (size_t i = 0; i < evaluated.size() && i < size_t(spec.population); ++i) {
      hashes.insert(evaluated[i].at("hash").get<std::string>());
    }
    return hashes;
  };
  const std::string a = h.Submit(spec);
  ASSERT_EQ(h.WaitTerminal(a).state(), pb::SUCCEEDED);
  const std::string best_a = SearchReport(a).at("search_best").at("hash");
  EXPECT_FALSE(first_generation(a).contains(best_a)) << "the test needs a pick the search found";

  JobSpec warm = spec;
  warm.seed = spec.seed + 1;
  warm.warm_start_job_id = a;
  const std::string b = h.Submit(warm);
  const pb::Job job_b = h.WaitTerminal(b);
  ASSERT_EQ(job_b.state(), pb::SUCCEEDED) << job_b.error();
  EXPECT_TRUE(first_generation(b).contains(best_a));
  EXPECT_LE(SearchReport(b).at("search_best").at("fitness").get<double>(),
            SearchReport(a).at("search_best").at("fitness").get<double>());
  EXPECT_EQ(SearchReport(b).at("search_options").at("warm_start_job_id"), a);
  const std::string b2 = h.Submit(warm);
  ASSERT_EQ(h.WaitTerminal(b2).state(), pb::SUCCEEDED);
  EXPECT_EQ(SearchReport(b2).at("evaluated"), SearchReport(b).at("evaluated"));

  JobSpec other_budget = warm;
  other_budget.flops_budget = 0.5;
  const std::string c = h.Submit(other_budget);
  const pb::Job job_c = h.WaitTerminal(c);
  ASSERT_EQ(job_c.state(), pb::SUCCEEDED) << job_c.error();
  const nlohmann::json report_c = SearchReport(c);
  for (const auto& g : report_c.at("history")) {
    EXPECT_LE(g.at("best_flops_ratio").get<double>(), 0.5 + 1e-9) << g.dump();
  }

  // A job with no search state to start from fails saying so.
  JobSpec uniform = spec;
  SetStrategy(uniform, search::Strategy::kUniform);
  const std::string u = h.Submit(uniform);
  ASSERT_EQ(h.WaitTerminal(u).state(), pb::SUCCEEDED);
  JobSpec from_uniform = spec;
  from_uniform.warm_start_job_id = u;
  const pb::Job failed = h.WaitTerminal(h.Submit(from_uniform));
  EXPECT_EQ(failed.state(), pb::FAILED);
  EXPECT_THAT(failed.error(), ::testing::HasSubstr("left no search state"));
}

// Two jobs of one priority on 8 workers: while both run, neither holds more than its fair share
// (4) for a generation's chunks, though each generation has 12 policies to spread; alone, a job
// may take more.
TEST(DispatcherTest, ConcurrentJobsSplitTheWorkersByFairShare) {
  Harness h(8);
  absl::Notification gate;
  h.cluster.gate = &gate;  // both jobs ask for workers (their prepare) before either searches
  h.cluster.evaluate_delay = absl::Milliseconds(5);
  JobSpec spec = SmallSearch();
  spec.population = 12;
  spec.parents = 3;
  const std::string a = h.Submit(spec);
  spec.seed = 12;
  const std::string b = h.Submit(spec);
  h.cluster.shared = [&] {
    for (const std::string& id : {a, b}) {
      absl::StatusOr<pb::Job> j = h.store->GetJob(id);
      if (!j.ok() || IsTerminalState(j->state())) return false;
    }
    return true;
  };
  ASSERT_TRUE(testing_internal_wait([&] {
    absl::MutexLock lock(&h.cluster.mu);
    return h.cluster.calls.size() == 2;  // both prepares started
  }));
  gate.Notify();
  for (const std::string& id : {a, b}) EXPECT_EQ(h.WaitTerminal(id).state(), pb::SUCCEEDED);
  absl::MutexLock lock(&h.cluster.mu);
  int most = 0;
  for (const std::string& id : {a, b}) {
    EXPECT_LE(h.cluster.max_in_flight_shared[id], 4) << id;
    most = std::max(most, h.cluster.max_in_flight_shared[id]);
  }
  EXPECT_GE(most, 2);  // generations were split while both ran: the bound was exercised
}

// The state of a fresh SmallSearch over 16 samples: what the checkpoint tests write and read.
absl::StatusOr<search::SearchState> SmallSearchState() {
  const JobSpec spec = SmallSearch();
  ASSIGN_OR_RETURN(
      search::PolicySpace space,
      BuildPolicySpace(spec, Dims(), kStats, std::vector<DecoderLayerHeads>(4, {4, 2, 8})));
  ASSIGN_OR_RETURN(auto search,
                   search::EvolutionarySearch::Create(&space, spec.ToSearchConfig(16)));
  return search->state();
}

// The checkpoint reader (issue 16): a round trip keeps every field; each malformed field is
// DATA_LOSS naming it (the old reader threw std::invalid_argument on a non-numeric version).
TEST(SearchCheckpointTest, RoundTripsAndNamesEachMalformedField) {
  auto state = SmallSearchState();
  ASSERT_TRUE(state.ok()) << state.status();
  SearchCheckpoint c;
  c.state = *state;
  c.projector_blobs = {{1, "sha256:aa"}, {3, "sha256:bb"}};
  c.evaluated = nlohmann::json::array({{{"hash", "h"}, {"projector_version", 1}}});
  c.evaluations = 17;
  {  // written before samples were ordered: no sample_order (its losses are in index order)
    auto unordered = ParseSearchCheckpoint(SearchCheckpointToJson(c));
    ASSERT_TRUE(unordered.ok()) << unordered.status();
    EXPECT_FALSE(unordered->sample_order.has_value());
  }
  c.sample_order = std::vector<int>{2, 0, 1};
  const std::string text = SearchCheckpointToJson(c);
  auto back = ParseSearchCheckpoint(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->state.ToJson(), c.state.ToJson());
  EXPECT_EQ(back->projector_blobs, c.projector_blobs);
  EXPECT_EQ(back->evaluated, c.evaluated);
  EXPECT_EQ(back->evaluations, 17);
  EXPECT_EQ(back->sample_order, c.sample_order);
  EXPECT_EQ(SearchCheckpointToJson(*back), text);

  const nlohmann::json good = nlohmann::json::parse(text);
  auto with = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = good;
    j[key] = std::move(value);
    return j.dump();
  };
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "not a JSON object"},
      {"[1]", "not a JSON object"},
      {R"({"projector_blobs": {}})", "no search_state"},
      {with("search_state", 3), "search_state"},
      {with("projector_blobs", {{"x", "sha256:aa"}}), "projector_blobs key \"x\""},
      {with("projector_blobs", {{"99999999999", "sha256:aa"}}), "projector_blobs key"},
      {with("projector_blobs", {{"0", "sha256:aa"}}), "projector_blobs key \"0\""},
      {with("projector_blobs", {{"2", 5}}), "projector_blobs[2]"},
      {with("projector_blobs", "x"), "projector_blobs is not an object"},
      {with("evaluated", 1), "evaluated is not an array"},
      {with("evaluated", {1, 2}), "evaluated holds a non-object"},
      {with("evaluations", -1), "evaluations"},
      {with("evaluations", 1.5), "evaluations"},
      {with("sample_order", 3), "sample_order is not an array"},
      {with("sample_order", {0, 5}), "sample_order holds 5"},
      {with("sample_order", {0, -1}), "sample_order holds -1"},
      {with("sample_order", {0.5, 1}), "sample_order holds 0.5"},
      {with("sample_order", {1, 2, 1}), "sample_order holds 1 twice (entry 2)"},
  };
  for (const auto& [input, needle] : bad) {
    auto r = ParseSearchCheckpoint(input);
    ASSERT_FALSE(r.ok()) << input;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << input;
    EXPECT_TRUE(absl::StrContains(r.status().message(), needle)) << r.status() << " / " << needle;
  }
}

// Incremental checkpoints (issue 20): each cache entry and evaluated record is written once, as a
// log record; the head and the log parse to the checkpoint the whole text holds; an uncommitted
// delta is written again; a malformed record is DATA_LOSS naming it.
TEST(SearchCheckpointTest, LogWritesEachRecordOnceAndParsesToTheWholeCheckpoint) {
  auto fresh = SmallSearchState();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  search::SearchState state = *fresh;
  nlohmann::json evaluated = nlohmann::json::array();
  auto add = [&](const std::string& hash, int version, double loss) {
    state.cache[{hash, version}] = search::EvalResult{
        .loss = loss, .accuracy = 0.5, .omega = 0.25, .sample_losses = {loss, loss / 3}};
    evaluated.push_back({{"hash", hash}, {"projector_version", version}});
  };
  const std::map<int, std::string> blobs = {{1, "sha256:aa"}};
  add("00000000000000a1", 0, 0.1);
  add("00000000000000b2", 0, 0.2);
  CheckpointLog log;
  const CheckpointDelta first = log.Delta(state, blobs, evaluated, 2);
  EXPECT_EQ(first.records.size(), 4u);  // two cache entries, two evaluated records
  log.Committed(first);
  add("00000000000000c3", 1, 1.0 / 3);
  const CheckpointDelta second = log.Delta(state, blobs, evaluated, 3);
  ASSERT_EQ(second.records.size(), 2u);  // only what the "generation" added
  EXPECT_TRUE(absl::StrContains(second.records[0], "00000000000000c3"));
  EXPECT_EQ(log.Delta(state, blobs, evaluated, 3).records, second.records);  // not committed yet
  log.Committed(second);
  EXPECT_TRUE(log.Delta(state, blobs, evaluated, 3).records.empty());

  std::vector<std::string> all = first.records;
  all.insert(all.end(), second.records.begin(), second.records.end());
  auto back = ParseSearchCheckpoint(second.head, all);
  ASSERT_TRUE(back.ok()) << back.status();
  SearchCheckpoint whole;
  whole.state = state;
  whole.projector_blobs = blobs;
  whole.evaluated = evaluated;
  whole.evaluations = 3;
  EXPECT_EQ(SearchCheckpointToJson(*back), SearchCheckpointToJson(whole));  // bitwise losses
  EXPECT_EQ(back->state.cache.at({"00000000000000c3", 1}).sample_losses[1], 1.0 / 9);
  // Resumed from it, nothing is logged twice.
  EXPECT_TRUE(CheckpointLog::Resumed(*back, all).Delta(state, blobs, evaluated, 3).records.empty());
  // The whole text is a head with an empty log (checkpoints written before the log). Resumed from
  // it, the next commit's head leaves the cache out, so everything goes into the log then: no
  // entry is lost across the upgrade.
  const std::string whole_text = SearchCheckpointToJson(whole);
  auto old = ParseSearchCheckpoint(whole_text, {});
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(SearchCheckpointToJson(*old), whole_text);
  const CheckpointDelta upgrade =
      CheckpointLog::Resumed(*old, {}).Delta(state, blobs, evaluated, 3);
  EXPECT_EQ(upgrade.records.size(), 6u);  // 3 cache entries, 3 evaluated records
  auto upgraded = ParseSearchCheckpoint(upgrade.head, upgrade.records);
  ASSERT_TRUE(upgraded.ok()) << upgraded.status();
  EXPECT_EQ(SearchCheckpointToJson(*upgraded), whole_text);

  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{"x"}, "log record 0 is not a one-key JSON object"},
      {{first.records[0], R"({"cache":{},"evaluated":{}})"}, "log record 1 is not a one-key"},
      {{R"({"other":1})"}, "log record 0 is neither"},
      {{R"({"cache":5})"}, "state.cache[0]"},
      {{first.records[0], first.records[0]}, "duplicate"},
  };
  for (const auto& [records, needle] : bad) {
    auto r = ParseSearchCheckpoint(second.head, records);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), needle)) << r.status() << " / " << needle;
  }
  auto no_state = ParseSearchCheckpoint(R"({"evaluations":1})", {first.records[0]});
  EXPECT_EQ(no_state.status().code(), absl::StatusCode::kDataLoss);
}

// The state dir fills up mid-search (issue 16): the job's commits wait for space instead of
// failing it, and the search ends as it would have, with every event once.
TEST(DispatcherTest, CommitsWaitForSpaceAndTheJobEndsUndisturbed) {
  Harness h(2);
  h.cluster.block_evaluate = false;
  JobSpec spec = SmallSearch();
  spec.generations = 4;
  // The disk fills after the first generations' commits (PREPARING, SEARCHING, generations 0-1).
  h.full_disk->pass_first = 4;
  h.full_disk->fail_commits = 25;
  const std::string id = h.Submit(spec);
  const pb::Job job = h.WaitTerminal(id);
  ASSERT_EQ(job.state(), pb::SUCCEEDED) << job.error();
  EXPECT_GE(h.full_disk->failed.load(), 25);
  EXPECT_EQ(FakeClient::final_ratios_[id], ExpectedFinalRatios(spec));
  int64_t seq = 0;
  int generations = 0;
  for (const pb::JobEvent& e : h.Events(id)) {
    EXPECT_EQ(e.sequence(), ++seq);
    generations += e.has_generation_finished();
  }
  EXPECT_EQ(generations, spec.generations + 1);
}

TEST(DispatcherTest, ResumesFromTheCheckpointWithTheSamePolicy) {
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("dispatcher_resume_", getpid())).string();
  std::string id;
  // The job's workers score the samples in its Prepare's order; after the resume a new Prepare
  // names another (a worker on another device), but the checkpoint's losses count the first
  // one's positions, so that is the order every later request carries.
  const std::vector<int> first_order = {15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0};
  {
    Harness h(1, dir);
    h.cluster.block_evaluate = false;
    h.cluster.prepare_order = first_order;
    h.cluster.evaluate_delay = absl::Milliseconds(20);  // generations left to run after the stop
    JobSpec spec = SmallSearch();
    spec.generations = 6;
    id = h.Submit(spec);
    // Stop the scheduler once generation 2 is checkpointed.
    ASSERT_TRUE(testing_internal_wait([&] {
      auto c = h.store->LoadCheckpoint(id);
      return c.ok() && c->has_value() && (*c)->generation >= 2;
    }));
    h.dispatcher->Shutdown();
    absl::MutexLock lock(&h.cluster.mu);
    EXPECT_EQ(h.cluster.evaluate_orders, std::set<std::string>{absl::StrJoin(first_order, ",")});
  }
  Harness h(2, dir);
  h.cluster.prepare_order = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  ASSERT_TRUE(h.dispatcher->ResumeAll().ok());
  const pb::Job job = h.WaitTerminal(id);
  ASSERT_EQ(job.state(), pb::SUCCEEDED) << job.error();
  {
    absl::MutexLock lock(&h.cluster.mu);
    EXPECT_EQ(h.cluster.evaluate_orders, std::set<std::string>{absl::StrJoin(first_order, ",")});
  }
  JobSpec spec = SmallSearch();
  spec.generations = 6;
  EXPECT_EQ(FakeClient::final_ratios_[id], ExpectedFinalRatios(spec));
  int64_t seq = 0;
  for (const pb::JobEvent& e : h.Events(id)) EXPECT_EQ(e.sequence(), ++seq);
  h.owns_dir = true;  // removed with the second harness
}

}  // namespace
}  // namespace prunesvc::server
