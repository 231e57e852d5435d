#include "server/sqlite_job_store.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/blob_store.h"
#include "server/sqlite_db.h"
#include "server/store_test_util.h"

namespace prunesvc::server {
namespace {

using prune::v1::Job;
using prune::v1::JobEvent;
using prune::v1::JobSpec;
using prune::v1::JobState;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

JobSpec Spec(const std::string& request_id = "",
             const std::map<std::string, std::string>& labels = {}) {
  JobSpec spec;
  spec.set_model_uri("file:///models/tiny");
  spec.set_dataset_id(BlobIdFromHex(Sha256Hex("data")));
  spec.set_flops_budget(0.5);
  spec.set_population(16);
  spec.set_request_id(request_id);
  for (const auto& [k, v] : labels) (*spec.mutable_labels())[k] = v;
  return spec;
}

JobEvent StateEvent(JobState from, JobState to) {
  JobEvent event;
  event.mutable_state_changed()->set_from(from);
  event.mutable_state_changed()->set_to(to);
  return event;
}

JobEvent LogEvent(const std::string& message) {
  JobEvent event;
  event.mutable_log()->set_message(message);
  return event;
}

JobMutation ToState(JobState state) {
  JobMutation m;
  m.state = state;
  return m;
}

std::vector<std::string> Ids(const std::vector<Job>& jobs) {
  std::vector<std::string> ids;
  for (const Job& job : jobs) ids.push_back(job.job_id());
  return ids;
}

class SqliteJobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }

  void Open() {
    store_.reset();
    SqliteJobStoreOptions options;
    options.state_dir = dir_.Sub("state");
    options.clock = &clock_;
    auto store = SqliteJobStore::Create(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // Runs SQL on the database file directly, with the store closed.
  void RawExec(const std::string& sql) {
    store_.reset();
    auto db = SqliteDb::Open(DbPath());
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)->Exec(sql).ok()) << sql;
  }

  std::string DbPath() const { return dir_.Sub("state") + "/" + SqliteJobStore::kFileName; }

  Job Create(const std::string& tenant = "t1", const JobSpec& spec = Spec()) {
    auto created = store_->CreateJob(
        tenant, spec, {StateEvent(prune::v1::JOB_STATE_UNSPECIFIED, prune::v1::QUEUED)});
    EXPECT_TRUE(created.ok()) << created.status();
    clock_.Advance(absl::Milliseconds(1));
    return created.ok() ? created->job : Job();
  }

  ScopedTempDir dir_;
  FakeClock clock_;
  std::unique_ptr<SqliteJobStore> store_;
};

TEST_F(SqliteJobStoreTest, CreateAndGet) {
  absl::Time now = clock_.Now();
  JobSpec spec = Spec("", {{"team", "vision"}});
  Job job = Create("t1", spec);
  EXPECT_THAT(job.job_id(), ::testing::StartsWith("job-"));
  EXPECT_EQ(job.job_id().size(), 4u + 16u);
  EXPECT_EQ(job.tenant(), "t1");
  EXPECT_EQ(job.state(), prune::v1::QUEUED);
  EXPECT_EQ(job.spec().SerializeAsString(), spec.SerializeAsString());
  EXPECT_EQ(job.create_time().seconds(), absl::ToUnixSeconds(now));
  EXPECT_EQ(job.last_event_sequence(), 1);
  EXPECT_FALSE(job.has_best());

  auto got = store_->GetJob(job.job_id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), job.SerializeAsString());
  EXPECT_EQ(store_->GetJob("job-nope").status().code(), absl::StatusCode::kNotFound);

  auto events = store_->ReadEvents(job.job_id(), 0, 0);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].sequence(), 1);
  EXPECT_EQ((*events)[0].job_id(), job.job_id());
  EXPECT_EQ((*events)[0].state_changed().to(), prune::v1::QUEUED);
  EXPECT_EQ((*events)[0].time().seconds(), absl::ToUnixSeconds(now));
}

TEST_F(SqliteJobStoreTest, RequestIdIsIdempotentPerTenant) {
  Job first = Create("t1", Spec("req-1"));
  auto again = store_->CreateJob("t1", Spec("req-1", {{"other", "spec"}}), {LogEvent("dup")});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->deduplicated);
  EXPECT_EQ(again->job.job_id(), first.job_id());
  EXPECT_EQ(again->job.last_event_sequence(), 1);  // the duplicate's events were not appended
  EXPECT_TRUE(again->job.spec().labels().empty());

  Job other_tenant = Create("t2", Spec("req-1"));
  EXPECT_NE(other_tenant.job_id(), first.job_id());
  Job a = Create("t1", Spec(""));
  Job b = Create("t1", Spec(""));
  EXPECT_NE(a.job_id(), b.job_id());

  Open();  // still deduplicated after a restart
  again = store_->CreateJob("t1", Spec("req-1"), {});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->deduplicated);
  EXPECT_EQ(again->job.job_id(), first.job_id());
}

TEST_F(SqliteJobStoreTest, ListFiltersByTenantStateAndAllLabels) {
  Job a = Create("t1", Spec("", {{"team", "vision"}, {"env", "prod"}}));
  Job b = Create("t1", Spec("", {{"team", "vision"}}));
  Job c = Create("t1", Spec("", {{"team", "text"}, {"env", "prod"}}));
  Job d = Create("t2", Spec("", {{"team", "vision"}, {"env", "prod"}}));
  ASSERT_TRUE(store_->Commit(b.job_id(), ToState(prune::v1::SEARCHING), {}, {}).ok());
  ASSERT_TRUE(store_->Commit(c.job_id(), ToState(prune::v1::FAILED), {}, {}).ok());

  auto list = [&](ListJobsQuery q) {
    auto page = store_->ListJobs(q);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? Ids(page->jobs) : std::vector<std::string>{};
  };
  EXPECT_THAT(list({}), ElementsAre(d.job_id(), c.job_id(), b.job_id(), a.job_id()));
  EXPECT_THAT(list({.tenant = "t1"}), ElementsAre(c.job_id(), b.job_id(), a.job_id()));
  EXPECT_THAT(list({.tenant = "t1", .states = {prune::v1::QUEUED, prune::v1::FAILED}}),
              ElementsAre(c.job_id(), a.job_id()));
  EXPECT_THAT(list({.labels = {{"team", "vision"}}}),
              ElementsAre(d.job_id(), b.job_id(), a.job_id()));
  EXPECT_THAT(list({.tenant = "t1", .labels = {{"team", "vision"}, {"env", "prod"}}}),
              ElementsAre(a.job_id()));
  EXPECT_THAT(list({.labels = {{"team", "audio"}}}), ElementsAre());
  EXPECT_THAT(list({.states = {prune::v1::SUCCEEDED}}), ElementsAre());

  auto bad = store_->ListJobs({.states = {prune::v1::JOB_STATE_UNSPECIFIED}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  bad = store_->ListJobs({.page_size = -1});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SqliteJobStoreTest, PagesAreStableUnderInserts) {
  std::vector<std::string> created;
  for (int i = 0; i < 7; ++i) created.push_back(Create("t1").job_id());
  std::vector<std::string> expected(created.rbegin(), created.rend());

  ListJobsQuery q{.tenant = "t1", .page_size = 3};
  std::vector<std::string> seen;
  std::vector<size_t> page_sizes;
  while (true) {
    auto page = store_->ListJobs(q);
    ASSERT_TRUE(page.ok()) << page.status();
    page_sizes.push_back(page->jobs.size());
    for (const Job& job : page->jobs) seen.push_back(job.job_id());
    // New jobs between pages land before the cursor and never shift the rest.
    Create("t1");
    Create("t1");
    if (page->next_page_token.empty()) break;
    q.page_token = page->next_page_token;
  }
  EXPECT_EQ(seen, expected);
  EXPECT_THAT(page_sizes, ElementsAre(3, 3, 1));

  // A token only fits the filters it was issued for.
  auto first = store_->ListJobs({.tenant = "t1", .page_size = 2});
  ASSERT_TRUE(first.ok());
  ASSERT_FALSE(first->next_page_token.empty());
  auto other = store_->ListJobs({.tenant = "t2", .page_token = first->next_page_token});
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(other.status().message(), HasSubstr("different filters"));
  for (std::string token : {"garbage", "djE6eDp5", "", "%%%"}) {
    if (token.empty()) continue;
    auto bad = store_->ListJobs({.tenant = "t1", .page_token = token});
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << token;
  }
}

TEST_F(SqliteJobStoreTest, DefaultPageSizeIs50) {
  for (int i = 0; i < 52; ++i) Create("t1");
  auto page = store_->ListJobs({});
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->jobs.size(), 50u);
  auto rest = store_->ListJobs({.page_size = 1000, .page_token = page->next_page_token});
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->jobs.size(), 2u);
  EXPECT_TRUE(rest->next_page_token.empty());
}

TEST_F(SqliteJobStoreTest, CommitUpdatesAppendsAndCheckpointsTogether) {
  Job job = Create();
  JobMutation m = ToState(prune::v1::SEARCHING);
  m.generation = 3;
  m.projector_version = 1;
  m.best.emplace().set_accuracy(0.75);
  m.progress = 0.25;
  clock_.Advance(absl::Seconds(5));
  auto result = store_->Commit(
      job.job_id(), m,
      {StateEvent(prune::v1::QUEUED, prune::v1::SEARCHING), LogEvent("generation 3")},
      Checkpoint{.generation = 3, .search_state_json = R"({"g":3})", .log = {"a", "b"}});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->events.size(), 2u);
  EXPECT_EQ(result->events[0].sequence(), 2);
  EXPECT_EQ(result->events[1].sequence(), 3);
  EXPECT_EQ(result->events[1].job_id(), job.job_id());
  EXPECT_EQ(result->job.last_event_sequence(), 3);
  EXPECT_EQ(result->job.update_time().seconds(), absl::ToUnixSeconds(clock_.Now()));

  auto got = store_->GetJob(job.job_id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->SerializeAsString(), result->job.SerializeAsString());
  EXPECT_EQ(got->state(), prune::v1::SEARCHING);
  EXPECT_EQ(got->generation(), 3);
  EXPECT_EQ(got->projector_version(), 1);
  EXPECT_DOUBLE_EQ(got->best().accuracy(), 0.75);
  EXPECT_DOUBLE_EQ(got->progress(), 0.25);

  auto checkpoint = store_->LoadCheckpoint(job.job_id());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ASSERT_TRUE(checkpoint->has_value());
  EXPECT_EQ((*checkpoint)->generation, 3);
  EXPECT_EQ((*checkpoint)->search_state_json, R"({"g":3})");
  EXPECT_THAT((*checkpoint)->log, ElementsAre("a", "b"));

  auto tail = store_->ReadEvents(job.job_id(), 1, 1);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 1u);
  EXPECT_EQ((*tail)[0].sequence(), 2);
  EXPECT_EQ((*tail)[0].state_changed().to(), prune::v1::SEARCHING);
  tail = store_->ReadEvents(job.job_id(), 3, 10);
  ASSERT_TRUE(tail.ok());
  EXPECT_TRUE(tail->empty());

  // A later checkpoint replaces the earlier head and appends to the log; an expected state that
  // holds lets it through.
  JobMutation guarded;
  guarded.expected_states = {prune::v1::PREPARING, prune::v1::SEARCHING};
  ASSERT_TRUE(store_->Commit(job.job_id(), guarded, {}, Checkpoint{4, "{}", {"c"}, {}}).ok());
  ASSERT_TRUE(store_->Commit(job.job_id(), guarded, {}, Checkpoint{5, "{5}", {}, {}}).ok());
  checkpoint = store_->LoadCheckpoint(job.job_id());
  ASSERT_TRUE(checkpoint.ok() && checkpoint->has_value());
  EXPECT_EQ((*checkpoint)->generation, 5);
  EXPECT_EQ((*checkpoint)->search_state_json, "{5}");
  EXPECT_THAT((*checkpoint)->log, ElementsAre("a", "b", "c"));
  // Another job's log is its own.
  const Job other = Create();
  ASSERT_TRUE(store_
                  ->Commit(other.job_id(), ToState(prune::v1::SEARCHING), {},
                           Checkpoint{0, "{}", {"x"}, {}})
                  .ok());
  auto theirs = store_->LoadCheckpoint(other.job_id());
  ASSERT_TRUE(theirs.ok() && theirs->has_value());
  EXPECT_THAT((*theirs)->log, ElementsAre("x"));
}

// Group commit: commits from many threads at once (they queue behind each other's transactions
// and are written in batches) each land whole, in order per job, with their events numbered
// without gaps; one that fails (its job is terminal) writes nothing and fails nobody else's.
TEST_F(SqliteJobStoreTest, ConcurrentCommitsAreGroupedAndEachAllOrNothing) {
  constexpr int kThreads = 12, kCommits = 25;
  std::vector<Job> jobs;
  for (int t = 0; t < kThreads; ++t) jobs.push_back(Create());
  ASSERT_TRUE(store_->Commit(jobs[0].job_id(), ToState(prune::v1::CANCELLED), {}, {}).ok());
  std::vector<int> failed(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCommits; ++i) {
        JobMutation m;
        m.generation = i;
        auto r = store_->Commit(jobs[t].job_id(), m, {LogEvent(absl::StrCat(t, "/", i))},
                                Checkpoint{i, absl::StrCat("{", i, "}"), {absl::StrCat(i)}, {}});
        if (!r.ok()) {
          EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
          ++failed[t];
          continue;
        }
        EXPECT_EQ(r->job.generation(), i);
        ASSERT_EQ(r->events.size(), 1u);
        EXPECT_EQ(r->events[0].sequence(), r->job.last_event_sequence());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failed[0], kCommits);
  for (int t = 0; t < kThreads; ++t) {
    auto events = store_->ReadEvents(jobs[t].job_id(), 0, 0);
    ASSERT_TRUE(events.ok());
    auto checkpoint = store_->LoadCheckpoint(jobs[t].job_id());
    ASSERT_TRUE(checkpoint.ok());
    if (t == 0) {
      EXPECT_FALSE(checkpoint->has_value());  // every commit of the cancelled job failed whole
      continue;
    }
    EXPECT_EQ(failed[t], 0);
    // The creation event, then one per commit in the thread's order.
    ASSERT_EQ(events->size(), size_t{kCommits} + jobs[t].last_event_sequence());
    std::vector<std::string> log;
    for (int i = 0; i < kCommits; ++i) {
      const JobEvent& e = (*events)[jobs[t].last_event_sequence() + i];
      EXPECT_EQ(e.sequence(), jobs[t].last_event_sequence() + i + 1);
      EXPECT_EQ(e.log().message(), absl::StrCat(t, "/", i));
      log.push_back(absl::StrCat(i));
    }
    ASSERT_TRUE(checkpoint->has_value());
    EXPECT_EQ((*checkpoint)->generation, kCommits - 1);
    EXPECT_EQ((*checkpoint)->log, log);
  }
}

TEST_F(SqliteJobStoreTest, FailedCommitWritesNothing) {
  Job job = Create();
  auto snapshot = [&] {
    auto got = store_->GetJob(job.job_id());
    EXPECT_TRUE(got.ok());
    auto events = store_->ReadEvents(job.job_id(), 0, 0);
    EXPECT_TRUE(events.ok());
    auto checkpoint = store_->LoadCheckpoint(job.job_id());
    EXPECT_TRUE(checkpoint.ok());
    return absl::StrCat(got->SerializeAsString(), events->size(), checkpoint->has_value());
  };
  std::string before = snapshot();

  EXPECT_EQ(store_->Commit("job-unknown", ToState(prune::v1::SEARCHING), {LogEvent("x")}, {})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  // The second event names another job: the first, already inserted, must be rolled back.
  JobEvent foreign = LogEvent("foreign");
  foreign.set_job_id("job-other");
  auto bad = store_->Commit(job.job_id(), ToState(prune::v1::SEARCHING), {LogEvent("ok"), foreign},
                            Checkpoint{1, "{}", {}, {}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(snapshot(), before);

  JobMutation guarded = ToState(prune::v1::CANCELLED);
  guarded.expected_states = {prune::v1::SEARCHING};
  bad = store_->Commit(job.job_id(), guarded, {LogEvent("cancel")}, Checkpoint{1, "{}", {}, {}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("QUEUED"));
  EXPECT_EQ(snapshot(), before);

  bad = store_->Commit(job.job_id(), ToState(prune::v1::JOB_STATE_UNSPECIFIED), {}, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(snapshot(), before);

  // Terminal is final: nothing can follow the terminal event.
  ASSERT_TRUE(store_
                  ->Commit(job.job_id(), ToState(prune::v1::CANCELLED),
                           {StateEvent(prune::v1::QUEUED, prune::v1::CANCELLED)}, {})
                  .ok());
  before = snapshot();
  bad = store_->Commit(job.job_id(), {}, {LogEvent("late")}, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("terminal"));
  EXPECT_EQ(snapshot(), before);

  EXPECT_EQ(store_->ReadEvents("job-unknown", 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadEvents(job.job_id(), 0, 10001).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->LoadCheckpoint("job-unknown").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SqliteJobStoreTest, ConcurrentAppendsAreGaplessAndOrdered) {
  Job job = Create();
  constexpr int kThreads = 8;
  constexpr int kCommits = 20;
  std::vector<std::vector<int64_t>> sequences(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCommits; ++i) {
        std::vector<JobEvent> events;
        for (int k = 0; k <= i % 3; ++k)
          events.push_back(LogEvent(absl::StrCat(t, ":", i, ":", k)));
        auto result = store_->Commit(job.job_id(), {}, events, {});
        ASSERT_TRUE(result.ok()) << result.status();
        for (const JobEvent& e : result->events) sequences[t].push_back(e.sequence());
      }
    });
  }
  for (auto& thread : threads) thread.join();

  std::set<int64_t> all;
  size_t total = 0;
  for (const auto& seqs : sequences) {
    EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end()));
    all.insert(seqs.begin(), seqs.end());
    total += seqs.size();
  }
  ASSERT_EQ(all.size(), total);                               // no sequence handed out twice
  EXPECT_EQ(*all.begin(), 2);                                 // 1 is the creation event
  EXPECT_EQ(*all.rbegin(), static_cast<int64_t>(total) + 1);  // and no gaps

  std::vector<JobEvent> log;
  int64_t after = 0;
  while (true) {  // read back in pages, as a watcher would
    auto events = store_->ReadEvents(job.job_id(), after, 37);
    ASSERT_TRUE(events.ok()) << events.status();
    if (events->empty()) break;
    after = events->back().sequence();
    log.insert(log.end(), events->begin(), events->end());
  }
  ASSERT_EQ(log.size(), total + 1);
  std::map<int, std::string> last_per_thread;
  for (size_t i = 0; i < log.size(); ++i) {
    EXPECT_EQ(log[i].sequence(), static_cast<int64_t>(i) + 1);
    if (i == 0) continue;
    // Each thread's events keep their order, and one commit's events stay together in order.
    const std::string& msg = log[i].log().message();
    int t = msg[0] - '0';
    if (last_per_thread.count(t)) {
      std::vector<int> prev, cur;
      for (auto p : absl::StrSplit(last_per_thread[t], ':'))
        prev.push_back(std::stoi(std::string(p)));
      for (auto p : absl::StrSplit(msg, ':')) cur.push_back(std::stoi(std::string(p)));
      EXPECT_LT(std::make_pair(prev[1], prev[2]), std::make_pair(cur[1], cur[2])) << msg;
    }
    last_per_thread[t] = msg;
  }
  auto got = store_->GetJob(job.job_id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->last_event_sequence(), static_cast<int64_t>(total) + 1);
}

TEST_F(SqliteJobStoreTest, EverythingSurvivesReopen) {
  Job queued = Create("t1", Spec("r1", {{"k", "v"}}));
  Job running = Create("t1");
  Job done = Create("t2");
  ASSERT_TRUE(store_
                  ->Commit(running.job_id(), ToState(prune::v1::SEARCHING), {LogEvent("g1")},
                           Checkpoint{1, R"({"generation":1})", {}, {}})
                  .ok());
  ASSERT_TRUE(
      store_->Commit(done.job_id(), ToState(prune::v1::SUCCEEDED), {LogEvent("end")}, {}).ok());
  std::string blob = BlobIdFromHex(Sha256Hex("blob"));
  ASSERT_TRUE(store_->PutBlob({blob, BlobKind::kDataset, 4, "t1", {}, 64}).ok());
  auto before = store_->ListJobs({});
  ASSERT_TRUE(before.ok());

  Open();
  auto after = store_->ListJobs({});
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->jobs.size(), before->jobs.size());
  for (size_t i = 0; i < after->jobs.size(); ++i) {
    EXPECT_EQ(after->jobs[i].SerializeAsString(), before->jobs[i].SerializeAsString());
  }
  auto counts = store_->CountJobsByState("");
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts,
            (std::map<JobState, int64_t>{
                {prune::v1::QUEUED, 1}, {prune::v1::SEARCHING, 1}, {prune::v1::SUCCEEDED, 1}}));
  counts = store_->CountJobsByState("t2");
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(*counts, (std::map<JobState, int64_t>{{prune::v1::SUCCEEDED, 1}}));
  auto resumable = store_->ListNonTerminalJobs();
  ASSERT_TRUE(resumable.ok()) << resumable.status();
  EXPECT_THAT(Ids(*resumable), ElementsAre(queued.job_id(), running.job_id()));
  auto checkpoint = store_->LoadCheckpoint(running.job_id());
  ASSERT_TRUE(checkpoint.ok() && checkpoint->has_value());
  EXPECT_EQ((*checkpoint)->search_state_json, R"({"generation":1})");
  auto blob_record = store_->GetBlob("t1", blob);
  ASSERT_TRUE(blob_record.ok()) << blob_record.status();
  EXPECT_EQ(blob_record->num_samples, 64);

  // Sequences continue after a restart, never renumbered.
  auto next = store_->Commit(running.job_id(), {}, {LogEvent("g2")}, {});
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->events[0].sequence(), 3);
  auto events = store_->ReadEvents(running.job_id(), 0, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[1].log().message(), "g1");

  // The file is in WAL mode (a property of the file, visible to any connection).
  store_.reset();
  auto raw = SqliteDb::Open(DbPath());
  ASSERT_TRUE(raw.ok());
  auto mode = (*raw)->QueryText("PRAGMA journal_mode");
  ASSERT_TRUE(mode.ok());
  EXPECT_EQ(*mode, "wal");
}

// A process killed right after a write returned (no destructor, no sqlite3_close) loses nothing.
TEST_F(SqliteJobStoreTest, AcknowledgedWritesSurviveAKilledProcess) {
  store_.reset();  // the child opens its own connection
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    auto store = SqliteJobStore::Create({.state_dir = dir_.Sub("state"), .clock = &clock_});
    if (!store.ok()) ::_exit(1);
    auto created = (*store)->CreateJob("t1", Spec("req"), {LogEvent("submitted")});
    if (!created.ok()) ::_exit(1);
    std::string id = created->job.job_id();
    auto committed = (*store)->Commit(id, ToState(prune::v1::SEARCHING), {LogEvent("g1")},
                                      Checkpoint{1, "{}", {}, {}});
    if (!committed.ok()) ::_exit(1);
    if (::write(fds[1], id.data(), id.size()) != static_cast<ssize_t>(id.size())) ::_exit(1);
    ::raise(SIGKILL);
  }
  ::close(fds[1]);
  char buf[64];
  ssize_t n = ::read(fds[0], buf, sizeof(buf));
  ::close(fds[0]);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child failed before its writes returned";
  ASSERT_GT(n, 0);
  std::string id(buf, static_cast<size_t>(n));

  Open();
  auto job = store_->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), prune::v1::SEARCHING);
  EXPECT_EQ(job->last_event_sequence(), 2);
  auto events = store_->ReadEvents(id, 0, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].log().message(), "g1");
  auto checkpoint = store_->LoadCheckpoint(id);
  ASSERT_TRUE(checkpoint.ok() && checkpoint->has_value());
  auto again = store_->CreateJob("t1", Spec("req"), {});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->deduplicated);
  EXPECT_EQ(again->job.job_id(), id);
}

TEST_F(SqliteJobStoreTest, NewerSchemaVersionIsRefused) {
  RawExec("UPDATE schema_version SET version = 99");
  SqliteJobStoreOptions options{.state_dir = dir_.Sub("state"), .clock = &clock_};
  auto store = SqliteJobStore::Create(options);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("schema version 99"));
  EXPECT_THAT(store.status().message(), HasSubstr("newer"));
}

TEST_F(SqliteJobStoreTest, ForeignDatabaseAndGarbageFileAreRefused) {
  store_.reset();
  std::string foreign_dir = dir_.Sub("foreign");
  std::filesystem::create_directories(foreign_dir);
  {
    auto db = SqliteDb::Open(foreign_dir + "/" + SqliteJobStore::kFileName);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TABLE something (x INTEGER)").ok());
  }
  auto store = SqliteJobStore::Create({.state_dir = foreign_dir, .clock = &clock_});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("not a prunesvc job store"));

  std::string garbage_dir = dir_.Sub("garbage");
  std::filesystem::create_directories(garbage_dir);
  std::ofstream(garbage_dir + "/" + SqliteJobStore::kFileName)
      << std::string(4096, 'x') << "this is not a database";
  store = SqliteJobStore::Create({.state_dir = garbage_dir, .clock = &clock_});
  EXPECT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(SqliteJobStore::kFileName));
}

TEST_F(SqliteJobStoreTest, MalformedRowsAreErrorsNotCrashes) {
  Job bad_spec = Create();
  Job bad_state = Create();
  Job bad_event = Create();
  Job bad_best = Create();
  std::string blob = BlobIdFromHex(Sha256Hex("b"));
  ASSERT_TRUE(store_->PutBlob({blob, BlobKind::kArtifact, 1, "t1", {}, 0}).ok());
  RawExec(absl::StrCat("UPDATE jobs SET spec = x'ffffffff' WHERE job_id = '", bad_spec.job_id(),
                       "'; UPDATE jobs SET state = 42 WHERE job_id = '", bad_state.job_id(),
                       "'; UPDATE events SET event = x'0a' WHERE job_id = '", bad_event.job_id(),
                       "'; UPDATE jobs SET best = x'08' WHERE job_id = '", bad_best.job_id(),
                       "'; UPDATE blobs SET kind = 'weird';"));
  Open();

  auto spec = store_->GetJob(bad_spec.job_id());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(spec.status().message(), HasSubstr(bad_spec.job_id()));
  EXPECT_EQ(store_->GetJob(bad_state.job_id()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->GetJob(bad_best.job_id()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(store_->GetJob(bad_event.job_id()).ok());
  EXPECT_EQ(store_->ReadEvents(bad_event.job_id(), 0, 0).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->ListJobs({}).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->ListNonTerminalJobs().status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->Commit(bad_spec.job_id(), {}, {}, {}).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->GetBlob("t1", blob).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(SqliteJobStoreTest, BlobIndexIsPerTenant) {
  std::string a = BlobIdFromHex(Sha256Hex("a"));
  std::string b = BlobIdFromHex(Sha256Hex("b"));
  auto put = store_->PutBlob({a, BlobKind::kDataset, 100, "t1", {}, 64});
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_FALSE(put->already_present);
  EXPECT_EQ(put->record.create_time, clock_.Now());
  clock_.Advance(absl::Seconds(1));
  put = store_->PutBlob({a, BlobKind::kDataset, 100, "t1", {}, 64});
  ASSERT_TRUE(put.ok());
  EXPECT_TRUE(put->already_present);
  EXPECT_LT(put->record.create_time, clock_.Now());  // the first record is kept
  ASSERT_TRUE(store_->PutBlob({a, BlobKind::kDataset, 100, "t2", {}, 64}).ok());
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(store_->PutBlob({b, BlobKind::kArtifact, 7, "t1", {}, 0}).ok());

  auto got = store_->GetBlob("t1", a);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->kind, BlobKind::kDataset);
  EXPECT_EQ(got->size_bytes, 100);
  EXPECT_EQ(store_->GetBlob("t2", b).status().code(), absl::StatusCode::kNotFound);

  auto listed = store_->ListBlobs("t1", std::nullopt);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].blob_id, a);
  EXPECT_EQ((*listed)[1].blob_id, b);
  listed = store_->ListBlobs("", BlobKind::kDataset);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);
  auto bytes = store_->TenantBlobBytes("t1");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, 107);

  auto deleted = store_->DeleteBlob("t1", a);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->content_id, a);
  EXPECT_EQ(deleted->remaining_references, 1);  // t2 still references it
  EXPECT_EQ(store_->DeleteBlob("t1", a).status().code(), absl::StatusCode::kNotFound);
  deleted = store_->DeleteBlob("t2", a);
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->remaining_references, 0);

  // A dataset's id (its sample-set hash) names a file stored under the upload's hash; two
  // datasets that differ only in packing share that file.
  std::string dataset = BlobIdFromHex(Sha256Hex("sample set"));
  std::string tar = BlobIdFromHex(Sha256Hex("tar bytes"));
  put = store_->PutBlob({dataset, BlobKind::kDataset, 9, "t1", {}, 64, tar});
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->record.content_id, tar);
  ASSERT_TRUE(store_->PutBlob({dataset, BlobKind::kDataset, 9, "t2", {}, 64, tar}).ok());
  got = store_->GetBlob("t2", dataset);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->content_id, tar);
  EXPECT_EQ(store_->GetBlob("t1", b)->content_id, b);  // defaulted to the blob id
  deleted = store_->DeleteBlob("t1", dataset);
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->content_id, tar);
  EXPECT_EQ(deleted->remaining_references, 1);
  EXPECT_EQ(
      store_->PutBlob({dataset, BlobKind::kDataset, 9, "t1", {}, 64, "sha256:bad"}).status().code(),
      absl::StatusCode::kInvalidArgument);

  for (std::string id : {std::string("../x"), std::string("sha256:") + std::string(64, 'A'),
                         std::string("sha256:abc")}) {
    EXPECT_EQ(store_->PutBlob({id, BlobKind::kDataset, 1, "t1", {}, 0}).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->GetBlob("t1", id).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(store_->PutBlob({b, BlobKind::kDataset, -1, "t1", {}, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace prunesvc::server

namespace prunesvc::server {
namespace {

// ---- lifecycle (issue 16) ----------------------------------------------------------------------

TEST_F(SqliteJobStoreTest, DeleteJobRemovesAFinishedJobWholeAndRefusesALiveOne) {
  const Job live = Create("t1", Spec("", {{"team", "a"}}));
  const Job done = Create("t1", Spec("", {{"team", "a"}}));
  Checkpoint c{3, "{}", {"r1", "r2"}, clock_.Now()};
  ASSERT_TRUE(store_->Commit(done.job_id(), ToState(prune::v1::SEARCHING), {}, c).ok());
  ASSERT_TRUE(store_->Commit(done.job_id(), ToState(prune::v1::CANCELLED), {}, std::nullopt).ok());

  absl::Status s = store_->DeleteJob(live.job_id());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("QUEUED"));
  EXPECT_THAT(s.message(), HasSubstr("cancel it first"));
  EXPECT_EQ(store_->DeleteJob("job-0000000000000000").code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(store_->DeleteJob(done.job_id()).ok());
  EXPECT_EQ(store_->GetJob(done.job_id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadEvents(done.job_id(), 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteJob(done.job_id()).code(), absl::StatusCode::kNotFound);
  // No row of it is left anywhere; the live job is untouched.
  store_.reset();
  auto db = SqliteDb::Open(DbPath());
  ASSERT_TRUE(db.ok());
  for (const char* table : {"jobs", "events", "checkpoints", "checkpoint_log", "job_labels"}) {
    auto n = (*db)->QueryText(
        absl::StrCat("SELECT count(*) FROM ", table, " WHERE job_id = '", done.job_id(), "'"));
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, "0") << table;
  }
  db->reset();
  Open();
  EXPECT_TRUE(store_->GetJob(live.job_id()).ok());
  auto page = store_->ListJobs({.tenant = "t1", .labels = {{"team", "a"}}});
  ASSERT_TRUE(page.ok());
  EXPECT_THAT(Ids(page->jobs), ElementsAre(live.job_id()));
}

TEST_F(SqliteJobStoreTest, FinishedBeforeAndReferencedBlobs) {
  const Job a = Create();
  clock_.Advance(absl::Hours(1));
  const Job b = Create();
  ASSERT_TRUE(store_->Commit(a.job_id(), ToState(prune::v1::FAILED), {}, std::nullopt).ok());
  const absl::Time between = clock_.Now() + absl::Minutes(1);
  clock_.Advance(absl::Hours(1));
  JobMutation done = ToState(prune::v1::SUCCEEDED);
  done.artifact_id = BlobIdFromHex(Sha256Hex("artifact"));
  JobEvent projector;
  projector.mutable_projector_updated()->set_version(1);
  projector.mutable_projector_updated()->set_blob_id(BlobIdFromHex(Sha256Hex("projector")));
  ASSERT_TRUE(store_->Commit(b.job_id(), done, {projector}, std::nullopt).ok());

  auto old = store_->ListJobsFinishedBefore(between);
  ASSERT_TRUE(old.ok());
  EXPECT_THAT(*old, ElementsAre(a.job_id()));
  auto all = store_->ListJobsFinishedBefore(clock_.Now() + absl::Seconds(1));
  ASSERT_TRUE(all.ok());
  EXPECT_THAT(*all, ElementsAre(a.job_id(), b.job_id()));

  auto refs = store_->ReferencedBlobs();
  ASSERT_TRUE(refs.ok()) << refs.status();
  const std::set<std::pair<std::string, std::string>> want = {
      {"t1", BlobIdFromHex(Sha256Hex("data"))},
      {"t1", BlobIdFromHex(Sha256Hex("artifact"))},
      {"t1", BlobIdFromHex(Sha256Hex("projector"))}};
  EXPECT_EQ(*refs, want);
}

// A state dir written by the previous schema (server/testdata/state_v1: made by prune-scheduler
// at schema 1 with `prunectl upload-dataset` / `submit` / `cancel`) opens, is migrated, and keeps
// every job, event and blob record.
// The evaluation cache across jobs: what is put comes back (and survives a reopen); a longer
// value replaces a shorter one under its key, never the other way; only the newest entries
// beyond the bound are kept.
TEST_F(SqliteJobStoreTest, EvaluationCacheKeepsTheLongestValueAndTheNewestEntries) {
  ASSERT_TRUE(store_->PutCachedEvaluations({{"a", "12"}, {"b", "1"}}).ok());
  ASSERT_TRUE(store_->PutCachedEvaluations({{"a", "1"}, {"b", "123"}}).ok());
  auto got = store_->GetCachedEvaluations({"a", "b", "missing"});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::map<std::string, std::string>{{"a", "12"}, {"b", "123"}}));
  Open();
  EXPECT_EQ(store_->GetCachedEvaluations({"a"})->at("a"), "12");

  store_.reset();
  SqliteJobStoreOptions options{.state_dir = dir_.Sub("bounded"), .clock = &clock_};
  options.max_cached_evaluations = 3;
  auto bounded = SqliteJobStore::Create(options);
  ASSERT_TRUE(bounded.ok()) << bounded.status();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*bounded)->PutCachedEvaluations({{absl::StrCat("k", i), "v"}}).ok());
  }
  auto kept = (*bounded)->GetCachedEvaluations({"k0", "k1", "k2", "k3", "k4"});
  ASSERT_TRUE(kept.ok());
  std::vector<std::string> keys;
  for (const auto& [k, v] : *kept) keys.push_back(k);
  EXPECT_THAT(keys, ElementsAre("k2", "k3", "k4"));
}

// The cache's memory mirror (every key; the newest values within a byte budget) answers as the
// table would, checked against a brute-force model of the table's rules over random puts — some
// riding along with a job's checkpoint, some in commits that fail — and across reopens, which
// rebuild the mirror from the table.
TEST_F(SqliteJobStoreTest, EvaluationCacheMirrorAnswersAsTheTableWithinItsMemoryBudget) {
  store_.reset();
  SqliteJobStoreOptions options{.state_dir = dir_.Sub("mirror"), .clock = &clock_};
  options.max_cached_evaluations = 7;
  options.cached_evaluation_memory_bytes = 40;
  auto open = [&] {
    auto s = SqliteJobStore::Create(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  };
  std::unique_ptr<SqliteJobStore> store = open();
  ASSERT_NE(store, nullptr);
  auto created = store->CreateJob("t1", Spec(), {});
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string job = created->job.job_id();

  // The model: key → value, and the keys in first-insertion order (the newest 7 kept).
  std::map<std::string, std::string> model;
  std::deque<std::string> order;
  auto model_put = [&](const CacheEntries& entries) {
    for (const auto& [k, v] : entries) {
      auto it = model.find(k);
      if (it == model.end()) {
        model[k] = v;
        order.push_back(k);
      } else if (v.size() > it->second.size()) {
        it->second = v;
      }
    }
    while (order.size() > 7) {
      model.erase(order.front());
      order.pop_front();
    }
  };
  std::vector<std::string> pool;
  for (int i = 0; i < 12; ++i) pool.push_back(absl::StrCat("key", i));
  std::mt19937 rng(7);
  bool some_not_resident = false;
  for (int round = 0; round < 300; ++round) {
    CacheEntries entries;
    const int n = 1 + int(rng() % 3);
    for (int i = 0; i < n; ++i) {
      entries.emplace_back(pool[rng() % pool.size()],
                           std::string(1 + rng() % 15, 'a' + rng() % 26));
    }
    switch (rng() % 4) {
      case 0: {  // with a checkpoint
        Checkpoint c{.generation = round, .search_state_json = "{}", .cache_entries = entries};
        ASSERT_TRUE(store->Commit(job, {}, {}, c).ok());
        model_put(entries);
        break;
      }
      case 1: {  // with a commit that fails: nothing of it is written
        JobEvent foreign = LogEvent("foreign");
        foreign.set_job_id("job-other");
        Checkpoint c{.generation = round, .search_state_json = "{}", .cache_entries = entries};
        EXPECT_FALSE(store->Commit(job, {}, {foreign}, c).ok());
        break;
      }
      default:
        ASSERT_TRUE(store->PutCachedEvaluations(entries).ok());
        model_put(entries);
    }
    if (rng() % 25 == 0) {
      store.reset();
      store = open();
      ASSERT_NE(store, nullptr);
    }
    auto got = store->GetCachedEvaluations(pool);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(*got, model) << "round " << round;
    const SqliteJobStore::CacheMirrorStats stats = store->cache_mirror_stats();
    EXPECT_EQ(stats.entries, int64_t(model.size()));
    EXPECT_LE(stats.resident_bytes, 40);
    some_not_resident |= stats.resident_entries < stats.entries;
  }
  EXPECT_TRUE(some_not_resident) << "the budget never left a value to the table";

  // An empty value cannot be stored (the mirror reads "" as "not resident"); a checkpoint that
  // carries one still commits, without its entries.
  EXPECT_EQ(store->PutCachedEvaluations({{"key0", ""}}).code(), absl::StatusCode::kInvalidArgument);
  Checkpoint c{.generation = 999, .search_state_json = "{}", .cache_entries = {{"fresh", ""}}};
  ASSERT_TRUE(store->Commit(job, {}, {}, c).ok());
  EXPECT_EQ(store->LoadCheckpoint(job)->value().generation, 999);
  EXPECT_TRUE(store->GetCachedEvaluations({"fresh"})->empty());
}

// SqliteDb reuses prepared statements: a reused one starts fresh (reset, binds cleared), sees
// what was written since, survives a schema change, and two of one SQL text live side by side.
TEST(SqliteDbTest, ReusedStatementsStartFresh) {
  ScopedTempDir dir;
  auto opened = SqliteDb::Open(dir.Sub("db") + ".sqlite");
  ASSERT_TRUE(opened.ok()) << opened.status();
  SqliteDb& db = **opened;
  ASSERT_TRUE(db.Exec("CREATE TABLE t (a INTEGER, b TEXT)").ok());
  const char* insert = "INSERT INTO t (a, b) VALUES (?, ?)";
  const char* select = "SELECT a, b FROM t ORDER BY a";
  {
    auto s = db.Prepare(insert);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(s->Bind(1, int64_t{1}).Bind(2, "one").Run().ok());
  }
  {
    auto s = db.Prepare(insert);  // the same statement again: its binds were cleared
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(s->Bind(1, int64_t{2}).Run().ok());
  }
  auto rows = [&] {
    std::vector<std::string> out;
    auto s = db.Prepare(select);
    EXPECT_TRUE(s.ok());
    while (s.ok() && *s->Step()) {
      out.push_back(absl::StrCat(s->Int64(0), s->IsNull(1) ? "/null" : "/" + s->Text(1)));
    }
    return out;
  };
  EXPECT_THAT(rows(), ElementsAre("1/one", "2/null"));
  {
    auto s = db.Prepare(select);  // left after one of two rows
    ASSERT_TRUE(s.ok() && *s->Step());
    auto t = db.Prepare(select);  // the same text while the first is live: another statement
    ASSERT_TRUE(t.ok() && *t->Step());
    EXPECT_EQ(t->Int64(0), 1);
    ASSERT_TRUE(*t->Step());
    EXPECT_EQ(t->Int64(0), 2);
  }
  ASSERT_TRUE(db.Exec("INSERT INTO t VALUES (3, 'three')").ok());
  EXPECT_THAT(rows(), ElementsAre("1/one", "2/null", "3/three"));  // from the first row again
  ASSERT_TRUE(db.Exec("ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 7").ok());
  {
    auto s = db.Prepare("SELECT * FROM t ORDER BY a");
    ASSERT_TRUE(s.ok() && *s->Step());
    EXPECT_EQ(s->Int64(2), 7);
  }
  EXPECT_THAT(rows(), ElementsAre("1/one", "2/null", "3/three"));
  // The statements kept are bounded per text and in all, however many texts a caller builds.
  {
    std::vector<SqliteStatement> live;
    for (int i = 0; i < 300; ++i) live.push_back(*db.Prepare(absl::StrCat("SELECT ", i)));
    for (int i = 0; i < 6; ++i) live.push_back(*db.Prepare(select));
  }
  EXPECT_EQ(db.idle_statements(), 256u);
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(db.Prepare(absl::StrCat("SELECT ", i)).ok());
  EXPECT_LE(db.idle_statements(), 256u);
  {
    std::vector<SqliteStatement> live;
    for (int i = 0; i < 6; ++i) live.push_back(*db.Prepare("SELECT 'x'"));
    const size_t before = db.idle_statements();
    live.clear();
    EXPECT_LE(db.idle_statements(), std::min<size_t>(256, before + 4));
  }
  EXPECT_EQ(db.Prepare("  -- nothing ").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(db.Prepare("SELEKT 1").status().code(), absl::StatusCode::kInternal);
}

TEST_F(SqliteJobStoreTest, OpensAndMigratesAStateDirOfThePreviousSchema) {
  store_.reset();
  const std::string dir = dir_.Sub("v1");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(std::string(PRUNESVC_SOURCE_DIR) + "/server/testdata/state_v1/jobs.db",
                             dir + "/jobs.db");
  {
    auto db = SqliteDb::Open(dir + "/jobs.db");
    ASSERT_TRUE(db.ok());
    EXPECT_EQ(*(*db)->QueryText("SELECT version FROM schema_version"), "1");
  }
  SqliteJobStoreOptions options{.state_dir = dir, .clock = &clock_};
  auto store = SqliteJobStore::Create(options);
  ASSERT_TRUE(store.ok()) << store.status();
  auto page = (*store)->ListJobs({.tenant = ""});
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->jobs.size(), 2u);
  std::map<std::string, JobState> states;
  for (const Job& j : page->jobs) states[j.job_id()] = j.state();
  EXPECT_EQ(states["job-0644e73bcdc6f0fc"], prune::v1::QUEUED);
  EXPECT_EQ(states["job-7b430e672e387575"], prune::v1::CANCELLED);
  auto events = (*store)->ReadEvents("job-7b430e672e387575", 0, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].state_changed().reason(), "fixture");
  auto blobs = (*store)->ListBlobs("", BlobKind::kDataset);
  ASSERT_TRUE(blobs.ok()) << blobs.status();
  ASSERT_EQ(blobs->size(), 1u);
  EXPECT_EQ((*blobs)[0].num_samples, 2);
  EXPECT_EQ((*blobs)[0].name, "");  // schema 1 did not keep names
  // New writes use the new column; the old rows stay deletable.
  BlobRecord named{.blob_id = BlobIdFromHex(Sha256Hex("x")), .tenant = "", .name = "mine"};
  ASSERT_TRUE((*store)->PutBlob(named).ok());
  EXPECT_EQ((*store)->GetBlob("", named.blob_id)->name, "mine");
  EXPECT_TRUE((*store)->DeleteJob("job-7b430e672e387575").ok());
  // Schema 3's checkpoint log is there.
  ASSERT_TRUE((*store)
                  ->Commit("job-0644e73bcdc6f0fc", ToState(prune::v1::SEARCHING), {},
                           Checkpoint{0, "{}", {"r"}, {}})
                  .ok());
  auto checkpoint = (*store)->LoadCheckpoint("job-0644e73bcdc6f0fc");
  ASSERT_TRUE(checkpoint.ok() && checkpoint->has_value());
  EXPECT_THAT((*checkpoint)->log, ElementsAre("r"));
  // Schema 4's evaluation cache is there (empty).
  ASSERT_TRUE((*store)->PutCachedEvaluations({{"k", "v"}}).ok());
  EXPECT_EQ((*(*store)->GetCachedEvaluations({"k"}))["k"], "v");
  store->reset();
  auto db = SqliteDb::Open(dir + "/jobs.db");
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(*(*db)->QueryText("SELECT version FROM schema_version"),
            std::to_string(SqliteJobStore::kSchemaVersion));
}

}  // namespace
}  // namespace prunesvc::server
