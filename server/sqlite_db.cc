#include "server/sqlite_db.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace prunesvc::server {

absl::Status SqliteError(int rc, absl::string_view what, absl::string_view message) {
  std::string text = absl::StrCat(what, ": ", message, " (", sqlite3_errstr(rc), ")");
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(text);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(text);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(text);
    case SQLITE_CONSTRAINT:
      return absl::AlreadyExistsError(text);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(text);
    default:
      return absl::InternalError(text);
  }
}

// ---------------------------------------------------------------------------------------------
// SqliteStatement

SqliteStatement::SqliteStatement(SqliteDb* owner, sqlite3* db, sqlite3_stmt* stmt, std::string sql)
    : owner_(owner), db_(db), stmt_(stmt), sql_(std::move(sql)) {}

SqliteStatement::SqliteStatement(SqliteStatement&& other) noexcept
    : owner_(other.owner_),
      db_(other.db_),
      stmt_(std::exchange(other.stmt_, nullptr)),
      sql_(std::move(other.sql_)),
      bind_rc_(other.bind_rc_) {}

SqliteStatement::~SqliteStatement() {
  if (stmt_ != nullptr) owner_->Recycle(std::move(sql_), stmt_);
}

absl::Status SqliteStatement::Error(int rc) const {
  const char* file = sqlite3_db_filename(db_, "main");
  return SqliteError(rc, absl::StrCat(file != nullptr ? file : "", ": ", sql_.substr(0, 80)),
                     sqlite3_errmsg(db_));
}

SqliteStatement& SqliteStatement::Bind(int index, int64_t value) {
  int rc = sqlite3_bind_int64(stmt_, index, value);
  if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  return *this;
}

SqliteStatement& SqliteStatement::Bind(int index, double value) {
  int rc = sqlite3_bind_double(stmt_, index, value);
  if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  return *this;
}

SqliteStatement& SqliteStatement::Bind(int index, absl::string_view text) {
  int rc =
      sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  return *this;
}

SqliteStatement& SqliteStatement::BindBlob(int index, absl::string_view bytes) {
  // A zero-length blob with a null pointer would bind NULL; point at a static byte instead.
  static const char kEmpty = 0;
  const char* data = bytes.empty() ? &kEmpty : bytes.data();
  int rc = sqlite3_bind_blob64(stmt_, index, data, bytes.size(), SQLITE_TRANSIENT);
  if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  return *this;
}

SqliteStatement& SqliteStatement::BindNull(int index) {
  int rc = sqlite3_bind_null(stmt_, index);
  if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  return *this;
}

absl::StatusOr<bool> SqliteStatement::Step() {
  if (bind_rc_ != SQLITE_OK) return Error(bind_rc_);
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return Error(rc);
}

absl::Status SqliteStatement::Run() {
  absl::StatusOr<bool> row = Step();
  if (!row.ok()) return row.status();
  if (*row) return absl::InternalError(absl::StrCat(sql_.substr(0, 80), ": unexpected row"));
  return absl::OkStatus();
}

void SqliteStatement::Reset() {
  sqlite3_reset(stmt_);
  bind_rc_ = 0;
}

int64_t SqliteStatement::Int64(int column) const { return sqlite3_column_int64(stmt_, column); }

double SqliteStatement::Double(int column) const { return sqlite3_column_double(stmt_, column); }

std::string SqliteStatement::Text(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  int size = sqlite3_column_bytes(stmt_, column);
  return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text), size);
}

std::string SqliteStatement::Blob(int column) const {
  const void* data = sqlite3_column_blob(stmt_, column);
  int size = sqlite3_column_bytes(stmt_, column);
  return data == nullptr ? std::string() : std::string(static_cast<const char*>(data), size);
}

bool SqliteStatement::IsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

// ---------------------------------------------------------------------------------------------
// SqliteDb

absl::StatusOr<std::unique_ptr<SqliteDb>> SqliteDb::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = SqliteError(rc, absl::StrCat("open ", path),
                                      db != nullptr ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return status;
  }
  sqlite3_extended_result_codes(db, 1);
  return std::unique_ptr<SqliteDb>(new SqliteDb(db, path));
}

SqliteDb::~SqliteDb() {
  for (auto& [sql, stmts] : idle_) {
    for (sqlite3_stmt* s : stmts) sqlite3_finalize(s);
  }
  sqlite3_close(db_);
}

namespace {

// Idle statements kept per SQL text (enough for the statements one store call holds at once) and
// in all: SQL built from a request (ListJobs' state and label filters) has many texts.
constexpr size_t kIdlePerSql = 4;
constexpr size_t kMaxIdle = 256;

}  // namespace

void SqliteDb::Recycle(std::string sql, sqlite3_stmt* stmt) {
  auto it = idle_.find(sql);
  const bool room =
      idle_count_ < kMaxIdle && (it == idle_.end() || it->second.size() < kIdlePerSql);
  if (!room) {
    sqlite3_finalize(stmt);
    return;
  }
  // A reset releases the statement's read of the database (as finalizing would); its error code
  // repeats the last step's, already reported.
  sqlite3_reset(stmt);
  sqlite3_clear_bindings(stmt);
  if (it == idle_.end()) it = idle_.emplace(std::move(sql), std::vector<sqlite3_stmt*>()).first;
  it->second.push_back(stmt);
  ++idle_count_;
}

absl::Status SqliteDb::Exec(absl::string_view sql) {
  char* message = nullptr;
  int rc = sqlite3_exec(db_, std::string(sql).c_str(), nullptr, nullptr, &message);
  if (rc == SQLITE_OK) return absl::OkStatus();
  absl::Status status = SqliteError(rc, absl::StrCat(path_, ": ", sql.substr(0, 80)),
                                    message != nullptr ? message : sqlite3_errmsg(db_));
  sqlite3_free(message);
  return status;
}

absl::StatusOr<SqliteStatement> SqliteDb::Prepare(absl::string_view sql) {
  auto idle = idle_.find(sql);
  if (idle != idle_.end() && !idle->second.empty()) {
    sqlite3_stmt* stmt = idle->second.back();
    idle->second.pop_back();
    if (idle->second.empty()) idle_.erase(idle);  // the map holds idle statements only
    --idle_count_;
    return SqliteStatement(this, db_, stmt, std::string(sql));
  }
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return SqliteError(rc, absl::StrCat(path_, ": prepare ", sql.substr(0, 80)),
                       sqlite3_errmsg(db_));
  }
  if (stmt == nullptr) {  // only whitespace or a comment: nothing to run
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": prepare \"", sql.substr(0, 80), "\": no statement"));
  }
  return SqliteStatement(this, db_, stmt, std::string(sql));
}

absl::StatusOr<std::string> SqliteDb::QueryText(absl::string_view sql) {
  absl::StatusOr<SqliteStatement> stmt = Prepare(sql);
  if (!stmt.ok()) return stmt.status();
  absl::StatusOr<bool> row = stmt->Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::InternalError(absl::StrCat(sql, ": no row"));
  return stmt->Text(0);
}

absl::Status SqliteDb::SetBusyTimeout(absl::Duration timeout) {
  int rc = sqlite3_busy_timeout(db_, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (rc != SQLITE_OK) return SqliteError(rc, "busy_timeout", sqlite3_errmsg(db_));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// SqliteTransaction

absl::StatusOr<SqliteTransaction> SqliteTransaction::Begin(SqliteDb* db) {
  absl::Status status = db->Exec("BEGIN IMMEDIATE");
  if (!status.ok()) return status;
  return SqliteTransaction(db);
}

SqliteTransaction::SqliteTransaction(SqliteTransaction&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)) {}

SqliteTransaction::~SqliteTransaction() {
  // A failed ROLLBACK (e.g. the COMMIT already ended the transaction) leaves nothing to undo.
  if (db_ != nullptr) db_->Exec("ROLLBACK").IgnoreError();
}

absl::Status SqliteTransaction::Commit() {
  SqliteDb* db = std::exchange(db_, nullptr);
  absl::Status status = db->Exec("COMMIT");
  // A failed COMMIT (e.g. SQLITE_FULL) may leave the transaction open: roll it back so the
  // connection stays usable.
  if (!status.ok()) db->Exec("ROLLBACK").IgnoreError();
  return status;
}

}  // namespace prunesvc::server
