#include "server/sqlite_job_store.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "server/blob_store.h"

namespace prunesvc::server {
namespace {

using prune::v1::Job;
using prune::v1::JobEvent;
using prune::v1::JobSpec;
using prune::v1::JobState;

// Version 1. Times are Unix microseconds. Jobs are ordered by `id` (insertion order), which is
// what ListJobs pages over: unlike create_time it cannot tie or go backwards with the clock.
constexpr char kSchema[] = R"sql(
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL,
  request_id TEXT NOT NULL DEFAULT '',
  spec BLOB NOT NULL,                   -- serialized prune.v1.JobSpec
  state INTEGER NOT NULL,               -- prune.v1.JobState
  priority INTEGER NOT NULL,
  create_time_us INTEGER NOT NULL,
  update_time_us INTEGER NOT NULL,
  generation INTEGER NOT NULL DEFAULT 0,
  projector_version INTEGER NOT NULL DEFAULT 0,
  best BLOB,                            -- serialized prune.v1.PolicyEvaluation; NULL = none
  progress REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  error_code INTEGER NOT NULL DEFAULT 0,
  artifact_id TEXT NOT NULL DEFAULT '',
  artifact_sha256 TEXT NOT NULL DEFAULT '',
  last_event_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_by_request ON jobs (tenant, request_id) WHERE request_id <> '';
CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE TABLE job_labels (
  job_id TEXT NOT NULL REFERENCES jobs (job_id),
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (job_id, key)
) WITHOUT ROWID;
CREATE INDEX job_labels_by_pair ON job_labels (key, value);
CREATE TABLE events (
  job_id TEXT NOT NULL REFERENCES jobs (job_id),
  sequence INTEGER NOT NULL,
  time_us INTEGER NOT NULL,
  event BLOB NOT NULL,                  -- serialized prune.v1.JobEvent
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
  job_id TEXT PRIMARY KEY REFERENCES jobs (job_id),
  generation INTEGER NOT NULL,
  search_state TEXT NOT NULL,           -- the checkpoint's head (server/search_checkpoint.h)
  update_time_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE checkpoint_log (           -- records appended by checkpoint commits (v3)
  job_id TEXT NOT NULL REFERENCES jobs (job_id),
  sequence INTEGER NOT NULL,            -- 1, 2, … per job, in commit order
  record TEXT NOT NULL,
  PRIMARY KEY (job_id, sequence)
);
CREATE TABLE blobs (
  blob_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  kind TEXT NOT NULL,                   -- dataset | projector | artifact | model | model_file
  size_bytes INTEGER NOT NULL,
  create_time_us INTEGER NOT NULL,
  num_samples INTEGER NOT NULL DEFAULT 0,
  content_id TEXT NOT NULL,             -- BlobStore id of the bytes (datasets: != blob_id)
  name TEXT NOT NULL DEFAULT '',        -- datasets: the display name of the first upload (v2)
  PRIMARY KEY (blob_id, tenant)
) WITHOUT ROWID;
CREATE INDEX blobs_by_tenant ON blobs (tenant, create_time_us);
CREATE INDEX blobs_by_content ON blobs (content_id);
CREATE INDEX jobs_by_state_update ON jobs (state, update_time_us);
CREATE TABLE evaluation_cache (         -- results shared across jobs (v4); id = insertion order
  id    INTEGER PRIMARY KEY,
  key   TEXT NOT NULL UNIQUE,
  value BLOB NOT NULL
);
)sql";

// kMigrations[v - 1] takes a store from schema version v to v + 1, in the transaction that also
// records the new version (a failed migration leaves the file as it was).
constexpr const char* kMigrations[] = {
    // 1 → 2: dataset display names (ListDatasets), and finished jobs by age (retention).
    "ALTER TABLE blobs ADD COLUMN name TEXT NOT NULL DEFAULT '';"
    "CREATE INDEX jobs_by_state_update ON jobs (state, update_time_us);",
    // 2 → 3: incremental checkpoints (a v2 checkpoint is a head with everything inside: it
    // still loads, with an empty log).
    "CREATE TABLE checkpoint_log (job_id TEXT NOT NULL REFERENCES jobs (job_id), "
    "sequence INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (job_id, sequence));",
    // 3 → 4: the evaluation cache across jobs (starts empty).
    "CREATE TABLE evaluation_cache (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
    "value BLOB NOT NULL);",
};
static_assert(std::size(kMigrations) == SqliteJobStore::kSchemaVersion - 1);

// Column order shared by every job query and RowToJob; `id` last (page tokens).
constexpr char kJobColumns[] =
    "job_id, tenant, spec, state, create_time_us, update_time_us, generation, "
    "projector_version, best, progress, error, error_code, artifact_id, artifact_sha256, "
    "last_event_sequence, id";
constexpr int kJobIdColumn = 15;

constexpr char kBlobColumns[] =
    "blob_id, tenant, kind, size_bytes, create_time_us, num_samples, content_id, name";

constexpr int32_t kDefaultPageSize = 50;
constexpr int32_t kMaxPageSize = 500;
constexpr int32_t kDefaultEventLimit = 1000;
constexpr int32_t kMaxEventLimit = 10000;

int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }

void SetTimestamp(int64_t micros, google::protobuf::Timestamp* ts) {
  absl::Time t = absl::FromUnixMicros(micros);
  int64_t seconds = absl::ToUnixSeconds(t);
  ts->set_seconds(seconds);
  ts->set_nanos(static_cast<int32_t>((micros - seconds * 1'000'000) * 1000));
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

bool ValidStoredState(int64_t state) {
  return state != prune::v1::JOB_STATE_UNSPECIFIED && prune::v1::JobState_IsValid(state);
}

absl::StatusOr<Job> RowToJob(const SqliteStatement& row) {
  Job job;
  job.set_job_id(row.Text(0));
  job.set_tenant(row.Text(1));
  if (!job.mutable_spec()->ParseFromString(row.Blob(2))) {
    return absl::DataLossError(absl::StrCat("job ", job.job_id(), ": stored spec is corrupt"));
  }
  int64_t state = row.Int64(3);
  if (!ValidStoredState(state)) {
    return absl::DataLossError(
        absl::StrCat("job ", job.job_id(), ": stored state ", state, " is not a known JobState"));
  }
  job.set_state(static_cast<JobState>(state));
  SetTimestamp(row.Int64(4), job.mutable_create_time());
  SetTimestamp(row.Int64(5), job.mutable_update_time());
  job.set_generation(static_cast<int32_t>(row.Int64(6)));
  job.set_projector_version(static_cast<int32_t>(row.Int64(7)));
  if (!row.IsNull(8) && !job.mutable_best()->ParseFromString(row.Blob(8))) {
    return absl::DataLossError(absl::StrCat("job ", job.job_id(), ": stored best is corrupt"));
  }
  job.set_progress(row.Double(9));
  job.set_error(row.Text(10));
  job.set_error_code(static_cast<int32_t>(row.Int64(11)));
  job.set_artifact_id(row.Text(12));
  job.set_artifact_sha256(row.Text(13));
  job.set_last_event_sequence(row.Int64(14));
  return job;
}

std::optional<BlobKind> ParseBlobKind(absl::string_view name) {
  for (BlobKind kind : {BlobKind::kDataset, BlobKind::kProjector, BlobKind::kArtifact,
                        BlobKind::kModel, BlobKind::kModelFile}) {
    if (BlobKindName(kind) == name) return kind;
  }
  return std::nullopt;
}

absl::StatusOr<BlobRecord> RowToBlob(const SqliteStatement& row) {
  BlobRecord record;
  record.blob_id = row.Text(0);
  record.tenant = row.Text(1);
  std::string kind = row.Text(2);
  std::optional<BlobKind> parsed = ParseBlobKind(kind);
  if (!parsed.has_value()) {
    return absl::DataLossError(
        absl::StrCat("blob ", record.blob_id, ": stored kind '", kind, "' is unknown"));
  }
  record.kind = *parsed;
  record.size_bytes = row.Int64(3);
  record.create_time = absl::FromUnixMicros(row.Int64(4));
  record.num_samples = static_cast<int32_t>(row.Int64(5));
  record.content_id = row.Text(6);
  record.name = row.Text(7);
  return record;
}

absl::StatusOr<JobEvent> RowToEvent(absl::string_view job_id, const SqliteStatement& row) {
  JobEvent event;
  int64_t sequence = row.Int64(0);
  if (!event.ParseFromString(row.Blob(2))) {
    return absl::DataLossError(
        absl::StrCat("job ", job_id, ": stored event ", sequence, " is corrupt"));
  }
  event.set_job_id(std::string(job_id));
  event.set_sequence(sequence);
  if (!event.has_time()) SetTimestamp(row.Int64(1), event.mutable_time());
  return event;
}

// Page tokens bind the cursor to a fingerprint of the filters, so a token reused with other
// filters is an error instead of a silently wrong page.
std::string FilterFingerprint(const ListJobsQuery& query) {
  std::vector<int> states(query.states.begin(), query.states.end());
  std::sort(states.begin(), states.end());
  states.erase(std::unique(states.begin(), states.end()), states.end());
  std::string canonical =
      absl::StrCat(query.tenant.size(), ":", query.tenant, "|", absl::StrJoin(states, ","), "|");
  for (const auto& [key, value] : query.labels) {  // std::map: sorted
    absl::StrAppend(&canonical, key.size(), ":", key, value.size(), ":", value, ";");
  }
  return Sha256Hex(canonical).substr(0, 16);
}

std::string EncodePageToken(int64_t cursor, const std::string& fingerprint) {
  return absl::WebSafeBase64Escape(absl::StrCat("v1:", cursor, ":", fingerprint));
}

absl::StatusOr<int64_t> DecodePageToken(absl::string_view token, const std::string& fingerprint) {
  std::string raw;
  std::vector<std::string> parts;
  if (absl::WebSafeBase64Unescape(token, &raw)) parts = absl::StrSplit(raw, ':');
  int64_t cursor = 0;
  if (parts.size() != 3 || parts[0] != "v1" || !absl::SimpleAtoi(parts[1], &cursor) ||
      cursor <= 0) {
    return absl::InvalidArgumentError("page_token is malformed: pass next_page_token unchanged");
  }
  if (parts[2] != fingerprint) {
    return absl::InvalidArgumentError(
        "page_token was issued for different filters: repeat the first request's states and "
        "labels, or start over without a token");
  }
  return cursor;
}

absl::Status ValidateListQuery(const ListJobsQuery& query) {
  if (query.page_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be >= 0 (0 = ", kDefaultPageSize, "), got ", query.page_size));
  }
  for (JobState state : query.states) {
    if (!ValidStoredState(state)) {
      return absl::InvalidArgumentError(absl::StrCat("states: ", state, " is not a job state"));
    }
  }
  return absl::OkStatus();
}

// Keyset pagination: rows strictly older (smaller id) than the cursor, newest first. Bound by
// BindListJobs in the same order.
std::string ListJobsSql(const ListJobsQuery& query) {
  std::string sql = absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id < ?");
  if (!query.tenant.empty()) absl::StrAppend(&sql, " AND tenant = ?");
  if (!query.states.empty()) {
    std::vector<std::string> marks(query.states.size(), "?");
    absl::StrAppend(&sql, " AND state IN (", absl::StrJoin(marks, ", "), ")");
  }
  for (size_t i = 0; i < query.labels.size(); ++i) {
    absl::StrAppend(&sql, " AND EXISTS (SELECT 1 FROM job_labels l WHERE l.job_id = jobs.job_id",
                    " AND l.key = ? AND l.value = ?)");
  }
  absl::StrAppend(&sql, " ORDER BY id DESC LIMIT ?");
  return sql;
}

void BindListJobs(const ListJobsQuery& query, int64_t cursor, int64_t limit,
                  SqliteStatement& stmt) {
  int index = 1;
  stmt.Bind(index++, cursor);
  if (!query.tenant.empty()) stmt.Bind(index++, query.tenant);
  for (JobState state : query.states) stmt.Bind(index++, int64_t{state});
  for (const auto& [key, value] : query.labels) {
    stmt.Bind(index++, key);
    stmt.Bind(index++, value);
  }
  stmt.Bind(index, limit);
}

std::string DefaultJobId(std::mt19937_64& rng) { return absl::StrFormat("job-%016x", rng()); }

absl::Status CheckMutable(const Job& job, const JobMutation& mutation) {
  if (IsTerminalState(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job.job_id(), " is ", JobState_Name(job.state()), " (terminal): it cannot change"));
  }
  const auto& expected = mutation.expected_states;
  if (!expected.empty() &&
      std::find(expected.begin(), expected.end(), job.state()) == expected.end()) {
    std::vector<std::string> names;
    for (JobState s : expected) names.push_back(JobState_Name(s));
    return absl::FailedPreconditionError(absl::StrCat("job ", job.job_id(), " is ",
                                                      JobState_Name(job.state()), ", expected ",
                                                      absl::StrJoin(names, " or ")));
  }
  if (mutation.state.has_value() && !ValidStoredState(*mutation.state)) {
    return absl::InvalidArgumentError(
        absl::StrCat("job ", job.job_id(), ": cannot set state ", *mutation.state));
  }
  return absl::OkStatus();
}

void ApplyMutation(const JobMutation& m, absl::Time now, Job& job) {
  if (m.state) job.set_state(*m.state);
  if (m.generation) job.set_generation(*m.generation);
  if (m.projector_version) job.set_projector_version(*m.projector_version);
  if (m.best) *job.mutable_best() = *m.best;
  if (m.progress) job.set_progress(*m.progress);
  if (m.error) job.set_error(*m.error);
  if (m.error_code) job.set_error_code(*m.error_code);
  if (m.artifact_id) job.set_artifact_id(*m.artifact_id);
  if (m.artifact_sha256) job.set_artifact_sha256(*m.artifact_sha256);
  SetTimestamp(ToMicros(now), job.mutable_update_time());
}

absl::StatusOr<int64_t> QueryInt(SqliteDb& db, absl::string_view sql) {
  ASSIGN_OR_RETURN(std::string text, db.QueryText(sql));
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::DataLossError(absl::StrCat(db.path(), ": ", sql, " returned '", text, "'"));
  }
  return value;
}

// Creates the schema in a fresh file, or checks the version of an existing one.
absl::Status InitSchema(SqliteDb& db) {
  ASSIGN_OR_RETURN(SqliteTransaction txn, SqliteTransaction::Begin(&db));
  ASSIGN_OR_RETURN(int64_t has_version,
                   QueryInt(db,
                            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                            "name = 'schema_version'"));
  if (has_version == 0) {
    ASSIGN_OR_RETURN(int64_t tables,
                     QueryInt(db,
                              "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                              "name NOT LIKE 'sqlite_%'"));
    if (tables != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(db.path(),
                       " has tables but no schema_version: it is not a prunesvc job store; "
                       "point --state-dir at another directory"));
    }
    RETURN_IF_ERROR(db.Exec(kSchema));
    RETURN_IF_ERROR(db.Exec(absl::StrCat("INSERT INTO schema_version (version) VALUES (",
                                         SqliteJobStore::kSchemaVersion, ")")));
    return txn.Commit();
  }
  ASSIGN_OR_RETURN(int64_t rows, QueryInt(db, "SELECT count(*) FROM schema_version"));
  if (rows != 1) {
    return absl::DataLossError(
        absl::StrCat(db.path(), ": schema_version has ", rows, " rows, expected 1"));
  }
  ASSIGN_OR_RETURN(int64_t version, QueryInt(db, "SELECT version FROM schema_version"));
  if (version > SqliteJobStore::kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        db.path(), " has schema version ", version, ", newer than this binary supports (",
        SqliteJobStore::kSchemaVersion, "): run a newer prune-scheduler"));
  }
  if (version < 1) {
    return absl::FailedPreconditionError(absl::StrCat(db.path(), " has unknown schema version ",
                                                      version, " (this binary reads 1 to ",
                                                      SqliteJobStore::kSchemaVersion, ")"));
  }
  for (int64_t v = version; v < SqliteJobStore::kSchemaVersion; ++v) {
    absl::Status s = db.Exec(kMigrations[v - 1]);
    if (s.ok()) {
      s = db.Exec(absl::StrCat("UPDATE schema_version SET version = ", v + 1));
    }
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat(db.path(), ": migrating schema ", v, " → ", v + 1,
                                                 " failed (nothing was changed): ", s.message()));
    }
    spdlog::info("{}: migrated the job store from schema {} to {}", db.path(), v, v + 1);
  }
  return txn.Commit();
}

absl::StatusOr<std::unique_ptr<SqliteDb>> OpenDb(const std::string& path,
                                                 absl::Duration busy_timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<SqliteDb> db, SqliteDb::Open(path));
  RETURN_IF_ERROR(db->SetBusyTimeout(busy_timeout));
  ASSIGN_OR_RETURN(std::string mode, db->QueryText("PRAGMA journal_mode = WAL"));
  if (mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot enable WAL journaling (journal_mode is '", mode, "')"));
  }
  RETURN_IF_ERROR(db->Exec("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"));
  RETURN_IF_ERROR(InitSchema(*db));
  return db;
}

}  // namespace

bool IsTerminalState(JobState state) {
  return state == prune::v1::SUCCEEDED || state == prune::v1::FAILED ||
         state == prune::v1::CANCELLED;
}

absl::string_view BlobKindName(BlobKind kind) {
  switch (kind) {
    case BlobKind::kDataset:
      return "dataset";
    case BlobKind::kProjector:
      return "projector";
    case BlobKind::kArtifact:
      return "artifact";
    case BlobKind::kModel:
      return "model";
    case BlobKind::kModelFile:
      return "model_file";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Create(
    SqliteJobStoreOptions options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("state_dir is empty");
  if (options.clock == nullptr) return absl::InvalidArgumentError("clock is null");
  std::error_code ec;
  std::filesystem::create_directories(options.state_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("state dir ", options.state_dir, ": cannot create: ", ec.message()));
  }
  std::string path = (std::filesystem::path(options.state_dir) / kFileName).string();
  ASSIGN_OR_RETURN(std::unique_ptr<SqliteDb> db, OpenDb(path, options.busy_timeout));
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(std::move(options), std::move(db)));
  RETURN_IF_ERROR(store->LoadCacheMirror());
  return store;
}

absl::Status SqliteJobStore::LoadCacheMirror() {
  absl::MutexLock lock(&mu_);
  absl::MutexLock mirror_lock(&cache_mu_);
  // Oldest first; a value only where it and every newer one fit the budget.
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("SELECT key, CASE WHEN sum(length(value)) OVER (ORDER BY id DESC) "
                                "<= ? THEN value END FROM evaluation_cache ORDER BY id"));
  stmt.Bind(1, options_.cached_evaluation_memory_bytes);
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return absl::OkStatus();
    AppendMirrorLocked(stmt.Text(0), stmt.Blob(1));
  }
}

SqliteJobStore::CacheMirrorStats SqliteJobStore::cache_mirror_stats() {
  absl::MutexLock mirror_lock(&cache_mu_);
  return {.entries = int64_t(cached_order_.size()),
          .resident_entries = int64_t(cached_order_.size() - first_resident_),
          .resident_bytes = resident_bytes_};
}

void SqliteJobStore::AppendMirrorLocked(std::string key, std::string value) {
  const bool resident = !value.empty();
  auto [it, added] = cached_.try_emplace(std::move(key), std::move(value));
  if (!added) return;
  if (!resident && first_resident_ == cached_order_.size()) ++first_resident_;
  resident_bytes_ += int64_t(it->second.size());
  cached_order_.push_back(&it->first);
}

SqliteJobStore::SqliteJobStore(SqliteJobStoreOptions options, std::unique_ptr<SqliteDb> db)
    : options_(std::move(options)),
      path_(db->path()),
      db_(std::move(db)),
      rng_(std::random_device{}()) {}

std::string SqliteJobStore::NewJobIdLocked() {
  return options_.new_job_id ? options_.new_job_id() : DefaultJobId(rng_);
}

// ---------------------------------------------------------------------------------------------
// Jobs

absl::StatusOr<std::vector<Job>> SqliteJobStore::QueryJobsLocked(SqliteStatement& stmt) {
  std::vector<Job> jobs;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return jobs;
    ASSIGN_OR_RETURN(Job job, RowToJob(stmt));
    jobs.push_back(std::move(job));
  }
}

absl::StatusOr<std::optional<Job>> SqliteJobStore::FindJobLocked(absl::string_view job_id) {
  ASSIGN_OR_RETURN(SqliteStatement stmt, db_->Prepare(absl::StrCat("SELECT ", kJobColumns,
                                                                   " FROM jobs WHERE job_id = ?")));
  stmt.Bind(1, job_id);
  ASSIGN_OR_RETURN(std::vector<Job> jobs, QueryJobsLocked(stmt));
  if (jobs.empty()) return std::nullopt;
  return std::move(jobs[0]);
}

absl::StatusOr<Job> SqliteJobStore::GetJobLocked(absl::string_view job_id) {
  ASSIGN_OR_RETURN(std::optional<Job> job, FindJobLocked(job_id));
  if (!job.has_value()) return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
  return *std::move(job);
}

absl::StatusOr<std::optional<Job>> SqliteJobStore::FindByRequestIdLocked(
    absl::string_view tenant, absl::string_view request_id) {
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare(absl::StrCat("SELECT ", kJobColumns,
                                             " FROM jobs WHERE tenant = ? AND request_id = ?")));
  stmt.Bind(1, tenant).Bind(2, request_id);
  ASSIGN_OR_RETURN(std::vector<Job> jobs, QueryJobsLocked(stmt));
  if (jobs.empty()) return std::nullopt;
  return std::move(jobs[0]);
}

absl::StatusOr<std::string> SqliteJobStore::InsertJobLocked(absl::string_view tenant,
                                                            const JobSpec& spec) {
  int64_t now = ToMicros(options_.clock->Now());
  std::string bytes = spec.SerializeAsString();
  constexpr int kAttempts = 5;
  for (int attempt = 1;; ++attempt) {
    std::string job_id = NewJobIdLocked();
    ASSIGN_OR_RETURN(SqliteStatement stmt,
                     db_->Prepare("INSERT INTO jobs (job_id, tenant, request_id, spec, state, "
                                  "priority, create_time_us, update_time_us) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"));
    stmt.Bind(1, job_id).Bind(2, tenant).Bind(3, spec.request_id()).BindBlob(4, bytes);
    stmt.Bind(5, int64_t{prune::v1::QUEUED}).Bind(6, int64_t{spec.priority()});
    stmt.Bind(7, now).Bind(8, now);
    absl::Status status = stmt.Run();
    // The request id was checked in this transaction, so a conflict is a job id collision.
    if (absl::IsAlreadyExists(status) && attempt < kAttempts) continue;
    RETURN_IF_ERROR(status);
    for (const auto& [key, value] : spec.labels()) {
      ASSIGN_OR_RETURN(
          SqliteStatement label,
          db_->Prepare("INSERT INTO job_labels (job_id, key, value) VALUES (?, ?, ?)"));
      RETURN_IF_ERROR(label.Bind(1, job_id).Bind(2, key).Bind(3, value).Run());
    }
    return job_id;
  }
}

absl::Status SqliteJobStore::WriteJobLocked(const Job& job) {
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("UPDATE jobs SET state = ?, update_time_us = ?, generation = ?, "
                                "projector_version = ?, best = ?, progress = ?, error = ?, "
                                "error_code = ?, artifact_id = ?, artifact_sha256 = ?, "
                                "last_event_sequence = ? WHERE job_id = ?"));
  stmt.Bind(1, int64_t{job.state()}).Bind(2, ToMicros(FromTimestamp(job.update_time())));
  stmt.Bind(3, int64_t{job.generation()}).Bind(4, int64_t{job.projector_version()});
  if (job.has_best()) {
    stmt.BindBlob(5, job.best().SerializeAsString());
  } else {
    stmt.BindNull(5);
  }
  stmt.Bind(6, job.progress()).Bind(7, job.error()).Bind(8, int64_t{job.error_code()});
  stmt.Bind(9, job.artifact_id()).Bind(10, job.artifact_sha256());
  stmt.Bind(11, job.last_event_sequence()).Bind(12, job.job_id());
  return stmt.Run();
}

absl::StatusOr<std::vector<JobEvent>> SqliteJobStore::AppendEventsLocked(
    Job& job, const std::vector<JobEvent>& events) {
  std::vector<JobEvent> stored;
  stored.reserve(events.size());
  absl::Time now = options_.clock->Now();
  for (const JobEvent& in : events) {
    if (!in.job_id().empty() && in.job_id() != job.job_id()) {
      return absl::InvalidArgumentError(
          absl::StrCat("event for job ", in.job_id(), " appended to job ", job.job_id()));
    }
    JobEvent event = in;
    event.set_job_id(job.job_id());
    event.set_sequence(job.last_event_sequence() + 1);
    if (!event.has_time()) SetTimestamp(ToMicros(now), event.mutable_time());
    ASSIGN_OR_RETURN(SqliteStatement stmt,
                     db_->Prepare("INSERT INTO events (job_id, sequence, time_us, event) "
                                  "VALUES (?, ?, ?, ?)"));
    stmt.Bind(1, job.job_id()).Bind(2, event.sequence());
    stmt.Bind(3, ToMicros(FromTimestamp(event.time()))).BindBlob(4, event.SerializeAsString());
    RETURN_IF_ERROR(stmt.Run());
    job.set_last_event_sequence(event.sequence());
    stored.push_back(std::move(event));
  }
  return stored;
}

absl::Status SqliteJobStore::PutCheckpointLocked(absl::string_view job_id,
                                                 const Checkpoint& checkpoint) {
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("INSERT OR REPLACE INTO checkpoints "
                                "(job_id, generation, search_state, update_time_us) "
                                "VALUES (?, ?, ?, ?)"));
  stmt.Bind(1, job_id).Bind(2, int64_t{checkpoint.generation});
  stmt.Bind(3, checkpoint.search_state_json).Bind(4, ToMicros(options_.clock->Now()));
  RETURN_IF_ERROR(stmt.Run());
  if (checkpoint.log.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(SqliteStatement last,
                   db_->Prepare("SELECT COALESCE(MAX(sequence), 0) FROM checkpoint_log "
                                "WHERE job_id = ?"));
  last.Bind(1, job_id);
  ASSIGN_OR_RETURN(bool row, last.Step());
  int64_t sequence = row ? last.Int64(0) : 0;
  ASSIGN_OR_RETURN(SqliteStatement append,
                   db_->Prepare("INSERT INTO checkpoint_log (job_id, sequence, record) "
                                "VALUES (?, ?, ?)"));
  for (const std::string& record : checkpoint.log) {
    append.Reset();
    append.Bind(1, job_id).Bind(2, ++sequence).Bind(3, record);
    RETURN_IF_ERROR(append.Run());
  }
  return absl::OkStatus();
}

absl::StatusOr<CreateJobResult> SqliteJobStore::CreateJob(
    absl::string_view tenant, const JobSpec& spec, const std::vector<JobEvent>& initial_events) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteTransaction txn, SqliteTransaction::Begin(db_.get()));
  if (!spec.request_id().empty()) {
    ASSIGN_OR_RETURN(std::optional<Job> existing, FindByRequestIdLocked(tenant, spec.request_id()));
    if (existing.has_value()) return CreateJobResult{*std::move(existing), true};
  }
  ASSIGN_OR_RETURN(std::string job_id, InsertJobLocked(tenant, spec));
  ASSIGN_OR_RETURN(Job job, GetJobLocked(job_id));
  RETURN_IF_ERROR(AppendEventsLocked(job, initial_events).status());
  RETURN_IF_ERROR(WriteJobLocked(job));
  RETURN_IF_ERROR(txn.Commit());
  return CreateJobResult{std::move(job), false};
}

absl::StatusOr<Job> SqliteJobStore::GetJob(absl::string_view job_id) {
  absl::MutexLock lock(&mu_);
  return GetJobLocked(job_id);
}

absl::StatusOr<ListJobsPage> SqliteJobStore::ListJobs(const ListJobsQuery& query) {
  RETURN_IF_ERROR(ValidateListQuery(query));
  int32_t page_size =
      query.page_size == 0 ? kDefaultPageSize : std::min(query.page_size, kMaxPageSize);
  std::string fingerprint = FilterFingerprint(query);
  int64_t cursor = std::numeric_limits<int64_t>::max();
  if (!query.page_token.empty()) {
    ASSIGN_OR_RETURN(cursor, DecodePageToken(query.page_token, fingerprint));
  }

  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt, db_->Prepare(ListJobsSql(query)));
  // One row more than the page tells whether a next page exists.
  BindListJobs(query, cursor, int64_t{page_size} + 1, stmt);
  ListJobsPage page;
  int64_t last_id = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int32_t>(page.jobs.size()) == page_size) {
      page.next_page_token = EncodePageToken(last_id, fingerprint);
      break;
    }
    ASSIGN_OR_RETURN(Job job, RowToJob(stmt));
    page.jobs.push_back(std::move(job));
    last_id = stmt.Int64(kJobIdColumn);
  }
  return page;
}

struct SqliteJobStore::Writer {
  // A job's commit (mutation, events, checkpoint set) or, with cache_entries set instead, entries
  // for the evaluation cache.
  absl::string_view job_id;
  const JobMutation* mutation = nullptr;
  const std::vector<JobEvent>* events = nullptr;
  const std::optional<Checkpoint>* checkpoint = nullptr;
  const CacheEntries* cache_entries = nullptr;
  // Under mu_: the entries to mirror once the transaction committed (cache_entries', or the
  // checkpoint's), null when none were written.
  const CacheEntries* cache_written = nullptr;
  // Under writers_mu_: first in the queue (writes the next batch); written by a head.
  bool head = false;
  std::optional<absl::StatusOr<CommitResult>> result;
};

namespace {

// Commits written together at most (one transaction's size stays bounded).
constexpr size_t kMaxCommitBatch = 64;

}  // namespace

absl::StatusOr<CommitResult> SqliteJobStore::Commit(absl::string_view job_id,
                                                    const JobMutation& mutation,
                                                    const std::vector<JobEvent>& events,
                                                    const std::optional<Checkpoint>& checkpoint) {
  Writer w{.job_id = job_id, .mutation = &mutation, .events = &events, .checkpoint = &checkpoint};
  return Write(w);
}

absl::StatusOr<CommitResult> SqliteJobStore::Write(Writer& w) {
  std::vector<Writer*> batch;
  {
    absl::MutexLock lock(&writers_mu_);
    w.head = writers_.empty();
    writers_.push_back(&w);
    writers_mu_.Await(absl::Condition(
        +[](Writer* x) { return x->head || x->result.has_value(); }, &w));
    if (w.result.has_value()) return *std::move(w.result);  // a head wrote it
    const size_t n = std::min(writers_.size(), kMaxCommitBatch);
    batch.assign(writers_.begin(), writers_.begin() + n);
  }
  std::vector<absl::StatusOr<CommitResult>> results = WriteBatch(batch);
  absl::MutexLock lock(&writers_mu_);  // the waiters read their results under it
  for (size_t i = 0; i < batch.size(); ++i) batch[i]->result = std::move(results[i]);
  writers_.erase(writers_.begin(), writers_.begin() + batch.size());
  if (!writers_.empty()) writers_.front()->head = true;
  return *std::move(w.result);
}

std::vector<absl::StatusOr<CommitResult>> SqliteJobStore::WriteBatch(
    const std::vector<Writer*>& batch) {
  absl::MutexLock lock(&mu_);
  std::vector<absl::StatusOr<CommitResult>> results;
  absl::StatusOr<SqliteTransaction> txn = SqliteTransaction::Begin(db_.get());
  if (txn.ok()) {
    for (Writer* w : batch) results.push_back(CommitOneLocked(*w));
    const absl::Status committed = txn->Commit();
    if (committed.ok()) {
      absl::MutexLock mirror_lock(&cache_mu_);
      for (const Writer* w : batch) {
        if (w->cache_written != nullptr) MirrorCachedLocked(*w->cache_written);
      }
      return results;
    }
    txn = committed;
  }
  // Nothing of the batch was written.
  return std::vector<absl::StatusOr<CommitResult>>(batch.size(), txn.status());
}

absl::StatusOr<CommitResult> SqliteJobStore::CommitOneLocked(Writer& w) {
  if (w.cache_entries != nullptr) {
    RETURN_IF_ERROR(PutCachedInSavepointLocked(*w.cache_entries));
    w.cache_written = w.cache_entries;
    return CommitResult{};
  }
  RETURN_IF_ERROR(db_->Exec("SAVEPOINT one_commit"));
  absl::StatusOr<CommitResult> result = [&]() -> absl::StatusOr<CommitResult> {
    ASSIGN_OR_RETURN(Job job, GetJobLocked(w.job_id));
    RETURN_IF_ERROR(CheckMutable(job, *w.mutation));
    ApplyMutation(*w.mutation, options_.clock->Now(), job);
    CommitResult r;
    ASSIGN_OR_RETURN(r.events, AppendEventsLocked(job, *w.events));
    RETURN_IF_ERROR(WriteJobLocked(job));
    if (w.checkpoint->has_value()) {
      RETURN_IF_ERROR(PutCheckpointLocked(w.job_id, **w.checkpoint));
    }
    r.job = std::move(job);
    return r;
  }();
  if (result.ok()) {
    absl::Status released = db_->Exec("RELEASE one_commit");
    if (!released.ok()) result = std::move(released);
  }
  if (!result.ok()) {
    db_->Exec("ROLLBACK TO one_commit; RELEASE one_commit").IgnoreError();
    return result;
  }
  // The evaluations that ride along (an optimization: the commit stands without them).
  if (w.checkpoint->has_value() && !(*w.checkpoint)->cache_entries.empty()) {
    if (absl::Status s = PutCachedInSavepointLocked((*w.checkpoint)->cache_entries); s.ok()) {
      w.cache_written = &(*w.checkpoint)->cache_entries;
    } else {
      spdlog::warn("job={} evaluation cache entries not written (the commit stands): {}", w.job_id,
                   s.message());
    }
  }
  return result;
}

absl::Status SqliteJobStore::PutCachedInSavepointLocked(const CacheEntries& entries) {
  for (const auto& [key, value] : entries) {
    if (value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluation cache entry ", key, " has an empty value (not stored)"));
    }
  }
  RETURN_IF_ERROR(db_->Exec("SAVEPOINT cache_entries"));
  absl::Status s = PutCachedEvaluationsLocked(entries);
  if (s.ok()) s = db_->Exec("RELEASE cache_entries");
  if (!s.ok()) db_->Exec("ROLLBACK TO cache_entries; RELEASE cache_entries").IgnoreError();
  return s;
}

absl::StatusOr<std::vector<JobEvent>> SqliteJobStore::ReadEvents(absl::string_view job_id,
                                                                 int64_t after_sequence,
                                                                 int32_t limit) {
  if (limit < 0 || limit > kMaxEventLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("limit must be in [0, ", kMaxEventLimit, "], got ", limit));
  }
  if (limit == 0) limit = kDefaultEventLimit;
  // mu_ serialises every use of the connection, so the two reads see the same state.
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(GetJobLocked(job_id).status());
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("SELECT sequence, time_us, event FROM events WHERE job_id = ? "
                                "AND sequence > ? ORDER BY sequence LIMIT ?"));
  stmt.Bind(1, job_id).Bind(2, after_sequence).Bind(3, int64_t{limit});
  std::vector<JobEvent> events;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(JobEvent event, RowToEvent(job_id, stmt));
    events.push_back(std::move(event));
  }
  return events;
}

absl::StatusOr<std::optional<Checkpoint>> SqliteJobStore::LoadCheckpoint(absl::string_view job_id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(GetJobLocked(job_id).status());
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("SELECT generation, search_state, update_time_us FROM "
                                "checkpoints WHERE job_id = ?"));
  stmt.Bind(1, job_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::nullopt;
  Checkpoint c{.generation = static_cast<int32_t>(stmt.Int64(0)),
               .search_state_json = stmt.Text(1),
               .update_time = absl::FromUnixMicros(stmt.Int64(2))};
  ASSIGN_OR_RETURN(SqliteStatement log,
                   db_->Prepare("SELECT record FROM checkpoint_log WHERE job_id = ? "
                                "ORDER BY sequence"));
  log.Bind(1, job_id);
  while (true) {
    ASSIGN_OR_RETURN(bool more, log.Step());
    if (!more) break;
    c.log.push_back(log.Text(0));
  }
  return c;
}

absl::StatusOr<std::vector<Job>> SqliteJobStore::ListNonTerminalJobs() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      SqliteStatement stmt,
      db_->Prepare(absl::StrCat("SELECT ", kJobColumns,
                                " FROM jobs WHERE state NOT IN (?, ?, ?) ORDER BY id")));
  stmt.Bind(1, int64_t{prune::v1::SUCCEEDED}).Bind(2, int64_t{prune::v1::FAILED});
  stmt.Bind(3, int64_t{prune::v1::CANCELLED});
  return QueryJobsLocked(stmt);
}

absl::StatusOr<std::map<JobState, int64_t>> SqliteJobStore::CountJobsByState(
    absl::string_view tenant) {
  std::string sql = "SELECT state, count(*) FROM jobs";
  if (!tenant.empty()) absl::StrAppend(&sql, " WHERE tenant = ?");
  absl::StrAppend(&sql, " GROUP BY state");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt, db_->Prepare(sql));
  if (!tenant.empty()) stmt.Bind(1, tenant);
  std::map<JobState, int64_t> counts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return counts;
    int64_t state = stmt.Int64(0);
    if (!ValidStoredState(state)) {
      return absl::DataLossError(absl::StrCat(path_, ": a job has unknown state ", state));
    }
    counts[static_cast<JobState>(state)] = stmt.Int64(1);
  }
}

// ---------------------------------------------------------------------------------------------
// Blob index

absl::StatusOr<std::vector<BlobRecord>> SqliteJobStore::QueryBlobsLocked(SqliteStatement& stmt) {
  std::vector<BlobRecord> records;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return records;
    ASSIGN_OR_RETURN(BlobRecord record, RowToBlob(stmt));
    records.push_back(std::move(record));
  }
}

absl::StatusOr<PutBlobResult> SqliteJobStore::PutBlob(const BlobRecord& record) {
  BlobRecord stored = record;
  if (stored.content_id.empty()) stored.content_id = stored.blob_id;
  RETURN_IF_ERROR(ValidateBlobId(stored.blob_id));
  RETURN_IF_ERROR(ValidateBlobId(stored.content_id));
  if (stored.size_bytes < 0 || stored.num_samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob ", stored.blob_id, ": negative size or sample count"));
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteTransaction txn, SqliteTransaction::Begin(db_.get()));
  ASSIGN_OR_RETURN(SqliteStatement find,
                   db_->Prepare(absl::StrCat("SELECT ", kBlobColumns,
                                             " FROM blobs WHERE blob_id = ? AND tenant = ?")));
  find.Bind(1, stored.blob_id).Bind(2, stored.tenant);
  ASSIGN_OR_RETURN(std::vector<BlobRecord> existing, QueryBlobsLocked(find));
  if (!existing.empty()) return PutBlobResult{std::move(existing[0]), true};

  stored.create_time = absl::FromUnixMicros(ToMicros(options_.clock->Now()));
  ASSIGN_OR_RETURN(SqliteStatement insert,
                   db_->Prepare("INSERT INTO blobs (blob_id, tenant, kind, size_bytes, "
                                "create_time_us, num_samples, content_id, name) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"));
  insert.Bind(1, stored.blob_id).Bind(2, stored.tenant).Bind(3, BlobKindName(stored.kind));
  insert.Bind(4, stored.size_bytes).Bind(5, ToMicros(stored.create_time));
  insert.Bind(6, stored.num_samples).Bind(7, stored.content_id).Bind(8, stored.name);
  RETURN_IF_ERROR(insert.Run());
  RETURN_IF_ERROR(txn.Commit());
  return PutBlobResult{std::move(stored), false};
}

absl::StatusOr<BlobRecord> SqliteJobStore::GetBlob(absl::string_view tenant,
                                                   absl::string_view blob_id) {
  RETURN_IF_ERROR(ValidateBlobId(blob_id));
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare(absl::StrCat("SELECT ", kBlobColumns,
                                             " FROM blobs WHERE blob_id = ? AND tenant = ?")));
  stmt.Bind(1, blob_id).Bind(2, tenant);
  ASSIGN_OR_RETURN(std::vector<BlobRecord> records, QueryBlobsLocked(stmt));
  if (records.empty()) return absl::NotFoundError(absl::StrCat("blob ", blob_id, " not found"));
  return std::move(records[0]);
}

absl::StatusOr<std::vector<BlobRecord>> SqliteJobStore::ListBlobs(absl::string_view tenant,
                                                                  std::optional<BlobKind> kind) {
  std::string sql = absl::StrCat("SELECT ", kBlobColumns, " FROM blobs WHERE 1");
  if (!tenant.empty()) absl::StrAppend(&sql, " AND tenant = ?");
  if (kind.has_value()) absl::StrAppend(&sql, " AND kind = ?");
  absl::StrAppend(&sql, " ORDER BY create_time_us, blob_id, tenant");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt, db_->Prepare(sql));
  int index = 1;
  if (!tenant.empty()) stmt.Bind(index++, tenant);
  if (kind.has_value()) stmt.Bind(index++, BlobKindName(*kind));
  return QueryBlobsLocked(stmt);
}

absl::StatusOr<DeleteBlobResult> SqliteJobStore::DeleteBlob(absl::string_view tenant,
                                                            absl::string_view blob_id) {
  RETURN_IF_ERROR(ValidateBlobId(blob_id));
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteTransaction txn, SqliteTransaction::Begin(db_.get()));
  ASSIGN_OR_RETURN(SqliteStatement del, db_->Prepare("DELETE FROM blobs WHERE blob_id = ? AND "
                                                     "tenant = ? RETURNING content_id"));
  del.Bind(1, blob_id).Bind(2, tenant);
  ASSIGN_OR_RETURN(bool deleted, del.Step());
  if (!deleted) return absl::NotFoundError(absl::StrCat("blob ", blob_id, " not found"));
  DeleteBlobResult result{del.Text(0), 0};
  RETURN_IF_ERROR(del.Run());  // finish the statement before the next one
  ASSIGN_OR_RETURN(SqliteStatement count,
                   db_->Prepare("SELECT count(*) FROM blobs WHERE content_id = ?"));
  count.Bind(1, result.content_id);
  ASSIGN_OR_RETURN(bool row, count.Step());
  if (row) result.remaining_references = count.Int64(0);
  RETURN_IF_ERROR(count.Run());
  RETURN_IF_ERROR(txn.Commit());
  return result;
}

absl::StatusOr<int64_t> SqliteJobStore::TenantBlobBytes(absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("SELECT COALESCE(SUM(size_bytes), 0) FROM blobs WHERE tenant = ?"));
  stmt.Bind(1, tenant);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  return row ? stmt.Int64(0) : 0;
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

absl::Status SqliteJobStore::DeleteJob(absl::string_view job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Job job, GetJobLocked(job_id));
  if (!IsTerminalState(job.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is ", prune::v1::JobState_Name(job.state()),
                     ": only finished jobs can be deleted (cancel it first)"));
  }
  ASSIGN_OR_RETURN(SqliteTransaction txn, SqliteTransaction::Begin(db_.get()));
  for (const char* table : {"job_labels", "events", "checkpoint_log", "checkpoints", "jobs"}) {
    ASSIGN_OR_RETURN(SqliteStatement del,
                     db_->Prepare(absl::StrCat("DELETE FROM ", table, " WHERE job_id = ?")));
    del.Bind(1, job_id);
    RETURN_IF_ERROR(del.Run());
  }
  return txn.Commit();
}

absl::StatusOr<std::map<std::string, std::string>> SqliteJobStore::GetCachedEvaluations(
    const std::vector<std::string>& keys) {
  std::map<std::string, std::string> out;
  std::vector<const std::string*> in_table;  // stored, value not resident
  {
    absl::MutexLock mirror_lock(&cache_mu_);
    for (const std::string& key : keys) {
      auto it = cached_.find(key);
      if (it == cached_.end()) continue;
      if (it->second.empty()) {
        in_table.push_back(&key);
      } else {
        out[key] = it->second;
      }
    }
  }
  if (in_table.empty()) return out;
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("SELECT value FROM evaluation_cache WHERE key = ?"));
  for (const std::string* key_in_table : in_table) {
    const std::string& key = *key_in_table;
    stmt.Reset();
    stmt.Bind(1, key);
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (row) out[key] = stmt.Blob(0);
  }
  return out;
}

absl::Status SqliteJobStore::PutCachedEvaluations(const CacheEntries& entries) {
  if (entries.empty()) return absl::OkStatus();
  // Written with the commits queued beside it: one transaction, one fsync for all.
  Writer w{.cache_entries = &entries};
  return Write(w).status();
}

void SqliteJobStore::MirrorCachedLocked(const CacheEntries& entries) {
  for (const auto& [key, value] : entries) {
    auto it = cached_.find(key);
    if (it == cached_.end()) {
      AppendMirrorLocked(key, value);
    } else if (!it->second.empty() && value.size() > it->second.size()) {
      resident_bytes_ += int64_t(value.size()) - int64_t(it->second.size());
      it->second = value;
    }
  }
  const size_t keep = size_t(std::max<int64_t>(1, options_.max_cached_evaluations));
  while (cached_order_.size() > keep) {
    auto oldest = cached_.find(*cached_order_.front());
    resident_bytes_ -= int64_t(oldest->second.size());
    cached_.erase(oldest);
    cached_order_.pop_front();
    if (first_resident_ > 0) --first_resident_;
  }
  while (resident_bytes_ > options_.cached_evaluation_memory_bytes &&
         first_resident_ < cached_order_.size()) {
    std::string& value = cached_.find(*cached_order_[first_resident_++])->second;
    resident_bytes_ -= int64_t(value.size());
    std::string().swap(value);
  }
}

absl::Status SqliteJobStore::PutCachedEvaluationsLocked(const CacheEntries& entries) {
  ASSIGN_OR_RETURN(SqliteStatement put,
                   db_->Prepare("INSERT INTO evaluation_cache (key, value) VALUES (?, ?) "
                                "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
                                "WHERE length(excluded.value) > length(evaluation_cache.value)"));
  for (const auto& [key, value] : entries) {
    put.Reset();
    put.Bind(1, key).BindBlob(2, value);
    RETURN_IF_ERROR(put.Run());
  }
  // ids grow with insertion and the newest row is never deleted, so this keeps the newest
  // max_cached_evaluations entries.
  ASSIGN_OR_RETURN(SqliteStatement trim,
                   db_->Prepare("DELETE FROM evaluation_cache WHERE id <= "
                                "(SELECT max(id) FROM evaluation_cache) - ?"));
  trim.Bind(1, std::max<int64_t>(1, options_.max_cached_evaluations));
  return trim.Run();
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::ListJobsFinishedBefore(absl::Time t) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SqliteStatement stmt,
                   db_->Prepare("SELECT job_id FROM jobs WHERE state IN (?, ?, ?) AND "
                                "update_time_us < ? ORDER BY update_time_us"));
  stmt.Bind(1, int64_t{prune::v1::SUCCEEDED}).Bind(2, int64_t{prune::v1::FAILED});
  stmt.Bind(3, int64_t{prune::v1::CANCELLED}).Bind(4, ToMicros(t));
  std::vector<std::string> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) return ids;
    ids.push_back(stmt.Text(0));
  }
}

absl::StatusOr<std::set<std::pair<std::string, std::string>>> SqliteJobStore::ReferencedBlobs() {
  absl::MutexLock lock(&mu_);
  std::set<std::pair<std::string, std::string>> refs;
  ASSIGN_OR_RETURN(SqliteStatement jobs,
                   db_->Prepare("SELECT job_id, tenant, spec, artifact_id FROM jobs"));
  while (true) {
    ASSIGN_OR_RETURN(bool row, jobs.Step());
    if (!row) break;
    const std::string tenant = jobs.Text(1);
    prune::v1::JobSpec spec;
    if (!spec.ParseFromString(jobs.Blob(2))) {
      return absl::DataLossError(absl::StrCat("job ", jobs.Text(0), ": stored spec is corrupt"));
    }
    for (const std::string& id : {spec.dataset_id(), spec.eval_dataset_id(), jobs.Text(3)}) {
      if (!id.empty()) refs.insert({tenant, id});
    }
  }
  // Projectors: named by the jobs' ProjectorUpdated events (committed with their checkpoints).
  ASSIGN_OR_RETURN(SqliteStatement events,
                   db_->Prepare("SELECT e.job_id, j.tenant, e.event FROM events e JOIN jobs j "
                                "ON e.job_id = j.job_id"));
  while (true) {
    ASSIGN_OR_RETURN(bool row, events.Step());
    if (!row) break;
    JobEvent event;
    if (!event.ParseFromString(events.Blob(2))) {
      return absl::DataLossError(
          absl::StrCat("job ", events.Text(0), ": a stored event is corrupt"));
    }
    if (event.has_projector_updated() && !event.projector_updated().blob_id().empty()) {
      refs.insert({events.Text(1), event.projector_updated().blob_id()});
    }
  }
  return refs;
}

}  // namespace prunesvc::server
