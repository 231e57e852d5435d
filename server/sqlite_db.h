// A minimal RAII layer over SQLite's C API (Debian's libsqlite3): a connection, prepared
// statements with typed binds and columns, and a scoped write transaction. Every failure becomes an
// absl::Status carrying SQLite's message and a canonical code (busy → UNAVAILABLE, disk full →
// RESOURCE_EXHAUSTED, corrupt / not a database → DATA_LOSS, constraint → ALREADY_EXISTS, else
// INTERNAL).
// Thread-compatible: a SqliteDb and its statements must be used by one thread at a time (the
// owner serialises with its own mutex; the connection is opened with SQLITE_OPEN_NOMUTEX), and a
// statement must not outlive its SqliteDb.
//
// Prepared statements are reused: a SqliteStatement that ends goes back to its SqliteDb, reset
// and with its binds cleared, and the next Prepare of the same SQL text takes it instead of
// compiling the SQL again (a few idle statements per text, and at most 256 in all, are kept).
#ifndef PRUNESVC_SERVER_SQLITE_DB_H_
#define PRUNESVC_SERVER_SQLITE_DB_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct sqlite3;
struct sqlite3_stmt;

namespace prunesvc::server {

// Maps an SQLite result code (primary or extended) to a Status: "<what>: <message> (<code name>)".
absl::Status SqliteError(int rc, absl::string_view what, absl::string_view message);

class SqliteDb;

class SqliteStatement {
 public:
  SqliteStatement(SqliteStatement&& other) noexcept;
  SqliteStatement& operator=(SqliteStatement&&) = delete;
  SqliteStatement(const SqliteStatement&) = delete;
  ~SqliteStatement();

  // Binds are 1-based, as in SQLite. Text and blobs are copied (SQLITE_TRANSIENT).
  SqliteStatement& Bind(int index, int64_t value);
  SqliteStatement& Bind(int index, int32_t value) { return Bind(index, int64_t{value}); }
  SqliteStatement& Bind(int index, double value);
  SqliteStatement& Bind(int index, absl::string_view text);
  SqliteStatement& BindBlob(int index, absl::string_view bytes);
  SqliteStatement& BindNull(int index);

  // true: a row is available; false: done. A bind error surfaces here.
  absl::StatusOr<bool> Step();
  // Steps to completion, expecting no row (INSERT / UPDATE / DELETE).
  absl::Status Run();
  // Rewinds for another run with new binds (those not rebound keep their values).
  void Reset();

  // Columns are 0-based, read from the current row; Text and Blob return copies.
  int64_t Int64(int column) const;
  double Double(int column) const;
  std::string Text(int column) const;
  std::string Blob(int column) const;
  bool IsNull(int column) const;

 private:
  friend class SqliteDb;
  SqliteStatement(SqliteDb* owner, sqlite3* db, sqlite3_stmt* stmt, std::string sql);
  absl::Status Error(int rc) const;

  SqliteDb* owner_;  // takes the statement back when it ends
  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string sql_;
  int bind_rc_ = 0;  // first bind failure, reported by Step()
};

class SqliteDb {
 public:
  // Opens (creating if missing) the database file at `path` read-write.
  static absl::StatusOr<std::unique_ptr<SqliteDb>> Open(const std::string& path);
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // Runs one or more statements without results.
  absl::Status Exec(absl::string_view sql);
  absl::StatusOr<SqliteStatement> Prepare(absl::string_view sql);
  // Runs a single-row, single-column query (e.g. a PRAGMA) and returns the value as text.
  absl::StatusOr<std::string> QueryText(absl::string_view sql);
  absl::Status SetBusyTimeout(absl::Duration timeout);

  const std::string& path() const { return path_; }
  // Prepared statements kept for reuse (at most 256; 4 per SQL text).
  size_t idle_statements() const { return idle_count_; }

 private:
  friend class SqliteStatement;
  SqliteDb(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  // Keeps `stmt` (reset, binds cleared) for the next Prepare of `sql`, or finalizes it.
  void Recycle(std::string sql, sqlite3_stmt* stmt);

  sqlite3* const db_;
  const std::string path_;
  // Idle prepared statements by SQL text, idle_count_ of them in all.
  absl::flat_hash_map<std::string, std::vector<sqlite3_stmt*>> idle_;
  size_t idle_count_ = 0;
};

// BEGIN IMMEDIATE on construction (through Begin), ROLLBACK on destruction unless committed. An
// immediate transaction takes the write lock up front, so read-then-write sequences inside it
// (e.g. "next sequence = last + 1") cannot race with another connection.
class SqliteTransaction {
 public:
  static absl::StatusOr<SqliteTransaction> Begin(SqliteDb* db);
  SqliteTransaction(SqliteTransaction&& other) noexcept;
  SqliteTransaction& operator=(SqliteTransaction&&) = delete;
  ~SqliteTransaction();

  absl::Status Commit();

 private:
  explicit SqliteTransaction(SqliteDb* db) : db_(db) {}
  SqliteDb* db_;  // null once committed, rolled back or moved from
};

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_SQLITE_DB_H_
