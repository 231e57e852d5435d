// Who is calling: bearer tokens for the client API, the worker token for the worker-facing
// services, and the per-tenant quotas (docs/operations.md "TLS and tokens").
//
// The tokens file (--auth-tokens) has one credential per line:
//
//   # comment
//   TOKEN TENANT ROLE [max_queued_jobs=N] [max_running_jobs=N] [max_stored_bytes=N[KMGT]]
//
// TOKEN is at least 16 printable characters without spaces; TENANT is 1-64 of [A-Za-z0-9._-];
// ROLE is `user` (its own tenant's jobs, datasets and artifacts) or `admin` (every tenant's
// jobs, and the workers). The quota fields override the scheduler's per-tenant defaults for the
// line's tenant; two lines that give one tenant different values for a quota are an error.
// Tokens are kept as their SHA-256, never in the clear; a lookup hashes the presented token.
//
// Without --auth-tokens the scheduler runs open (the loopback demo): every caller is the admin
// of the anonymous tenant "". With it, a call without a valid `authorization: Bearer <token>`
// is UNAUTHENTICATED.
//
// Reload: Reload() re-reads both files (SIGHUP in prune-scheduler). A file that no longer
// parses keeps the previous credentials (and the error is returned and logged): a typo must
// not lock every team out or open the service.
//
// Thread-safe: Authenticate and QuotaOf may run on any thread while Reload swaps the tables.
#ifndef PRUNESVC_SERVER_AUTH_H_
#define PRUNESVC_SERVER_AUTH_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_context.h"

namespace prunesvc::server {

enum class Role { kUser, kAdmin };

// The authenticated caller of a client RPC.
struct Principal {
  std::string tenant;
  Role role = Role::kUser;
  bool admin() const { return role == Role::kAdmin; }
};

// Per-tenant limits; nullopt = the scheduler's default for that quota. 0 = unlimited.
struct TenantQuota {
  std::optional<int64_t> max_queued_jobs;
  std::optional<int64_t> max_running_jobs;
  std::optional<int64_t> max_stored_bytes;
};

// The parsed tokens file.
struct TokenTable {
  struct Entry {
    std::string tenant;
    Role role = Role::kUser;
    int line = 0;
  };
  std::map<std::string, Entry> by_hash;       // sha256 hex of the token → its entry
  std::map<std::string, TenantQuota> quotas;  // tenants whose lines set a quota
};

// Parses a tokens file's text; errors read "FILE:LINE: what is wrong".
absl::StatusOr<TokenTable> ParseTokens(absl::string_view text, absl::string_view filename);

struct AuthOptions {
  std::string tokens_file;        // --auth-tokens; empty = open (tenant "", admin)
  std::string worker_token_file;  // --worker-token-file; empty = workers need no token
  TenantQuota defaults;           // from the flags; every field set (0 = unlimited)
};

class Authenticator {
 public:
  // Reads the files; an error names the file and line.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(AuthOptions options);

  // The caller of a client RPC, from its `authorization` metadata. UNAUTHENTICATED (without
  // saying whether the token exists) when missing or unknown.
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& ctx) const;
  // A worker-facing RPC (register, heartbeat, blobs) carries the worker token.
  absl::Status AuthenticateWorker(const grpc::ServerContextBase& ctx) const;
  // `tenant`'s limits with the defaults filled in.
  TenantQuota QuotaOf(const std::string& tenant) const;

  // Re-reads the files (SIGHUP); on error the previous credentials stay.
  absl::Status Reload();

  bool enabled() const { return !options_.tokens_file.empty(); }
  bool workers_need_token() const { return !options_.worker_token_file.empty(); }

 private:
  explicit Authenticator(AuthOptions options) : options_(std::move(options)) {}

  // Constant after construction.
  const AuthOptions options_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> tokens_ ABSL_GUARDED_BY(mu_);
  std::string worker_token_hash_ ABSL_GUARDED_BY(mu_);
};

// The bearer token of `ctx`'s `authorization` metadata; "" when there is none.
std::string BearerToken(const grpc::ServerContextBase& ctx);

}  // namespace prunesvc::server

#endif  // PRUNESVC_SERVER_AUTH_H_
