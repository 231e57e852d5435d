#include "server/auth.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tls.h"

namespace prunesvc::server {
namespace {

constexpr size_t kMinTokenChars = 16;
constexpr size_t kMaxTenantChars = 64;

bool ValidToken(absl::string_view t) {
  if (t.size() < kMinTokenChars || t.size() > 4096) return false;
  for (char c : t) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

bool ValidTenant(absl::string_view t) {
  if (t.empty() || t.size() > kMaxTenantChars) return false;
  for (char c : t) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

// "N" with an optional K/M/G/T (binary) suffix; nullopt when it is not one.
std::optional<int64_t> ParseCount(absl::string_view v, bool allow_suffix) {
  int shift = 0;
  if (allow_suffix && !v.empty()) {
    switch (absl::ascii_toupper(static_cast<unsigned char>(v.back()))) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        break;
    }
    if (shift > 0) v.remove_suffix(1);
  }
  int64_t n = 0;
  if (v.empty() || !absl::SimpleAtoi(v, &n) || n < 0) return std::nullopt;
  if (shift > 0 && n > (INT64_MAX >> shift)) return std::nullopt;
  return n << shift;
}

absl::Status LineError(absl::string_view file, int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ":", line, ": ", what));
}

// Sets `slot` from a quota field, refusing a second, different value for the tenant.
absl::Status SetQuota(std::optional<int64_t>& slot, int64_t value, absl::string_view key,
                      absl::string_view tenant, absl::string_view file, int line) {
  if (slot.has_value() && *slot != value) {
    return LineError(file, line,
                     absl::StrCat(key, "=", value, " for tenant ", tenant,
                                  " differs from the value an earlier line gave (", *slot, ")"));
  }
  slot = value;
  return absl::OkStatus();
}

bool ConstantTimeEqual(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<TokenTable> ParseTokens(absl::string_view text, absl::string_view filename) {
  TokenTable table;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (absl::StrContains(line, '\0')) return LineError(filename, line_no, "contains a NUL byte");
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    // SkipWhitespace drops empty pieces; tabs separate fields too.
    std::vector<absl::string_view> fields;
    for (absl::string_view piece : f) {
      for (absl::string_view p : absl::StrSplit(piece, '\t', absl::SkipEmpty())) {
        fields.push_back(p);
      }
    }
    if (fields.size() < 3) {
      return LineError(filename, line_no,
                       "expected TOKEN TENANT ROLE [max_queued_jobs=N] [max_running_jobs=N] "
                       "[max_stored_bytes=N]");
    }
    if (!ValidToken(fields[0])) {
      return LineError(filename, line_no,
                       absl::StrCat("the token must be at least ", kMinTokenChars,
                                    " printable characters without spaces"));
    }
    if (!ValidTenant(fields[1])) {
      return LineError(filename, line_no,
                       absl::StrCat("tenant \"", fields[1].substr(0, 80), "\" must be 1-",
                                    kMaxTenantChars, " of [A-Za-z0-9._-]"));
    }
    TokenTable::Entry entry;
    entry.tenant = std::string(fields[1]);
    entry.line = line_no;
    if (fields[2] == "user") {
      entry.role = Role::kUser;
    } else if (fields[2] == "admin") {
      entry.role = Role::kAdmin;
    } else {
      return LineError(filename, line_no,
                       absl::StrCat("role \"", fields[2].substr(0, 80), "\" is not user or admin"));
    }
    for (size_t i = 3; i < fields.size(); ++i) {
      std::pair<absl::string_view, absl::string_view> kv =
          absl::StrSplit(fields[i], absl::MaxSplits('=', 1));
      const bool bytes = kv.first == "max_stored_bytes";
      std::optional<int64_t> n = ParseCount(kv.second, bytes);
      TenantQuota& q = table.quotas[entry.tenant];
      std::optional<int64_t>* slot = kv.first == "max_queued_jobs"    ? &q.max_queued_jobs
                                     : kv.first == "max_running_jobs" ? &q.max_running_jobs
                                     : bytes                          ? &q.max_stored_bytes
                                                                      : nullptr;
      if (slot == nullptr) {
        return LineError(filename, line_no,
                         absl::StrCat("unknown field \"", fields[i].substr(0, 80),
                                      "\" (max_queued_jobs, max_running_jobs, max_stored_bytes)"));
      }
      if (!n.has_value()) {
        return LineError(filename, line_no,
                         absl::StrCat(kv.first, ": \"", kv.second.substr(0, 80),
                                      "\" is not a non-negative integer",
                                      bytes ? " (K, M, G, T suffixes allowed)" : ""));
      }
      RETURN_IF_ERROR(SetQuota(*slot, *n, kv.first, entry.tenant, filename, line_no));
    }
    const std::string hash = Sha256Hex(std::string_view(fields[0].data(), fields[0].size()));
    auto [it, inserted] = table.by_hash.emplace(hash, entry);
    if (!inserted) {
      return LineError(filename, line_no,
                       absl::StrCat("the same token as line ", it->second.line,
                                    " (every credential needs its own token)"));
    }
  }
  return table;
}

std::string BearerToken(const grpc::ServerContextBase& ctx) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return "";
  absl::string_view v(it->second.data(), it->second.size());
  v = absl::StripAsciiWhitespace(v);
  if (v.size() < 7 || !absl::EqualsIgnoreCase(v.substr(0, 7), "bearer ")) return "";
  return std::string(absl::StripAsciiWhitespace(v.substr(7)));
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(AuthOptions options) {
  std::unique_ptr<Authenticator> a(new Authenticator(std::move(options)));
  RETURN_IF_ERROR(a->Reload());
  return a;
}

absl::Status Authenticator::Reload() {
  std::shared_ptr<const TokenTable> tokens;
  if (enabled()) {
    ASSIGN_OR_RETURN(std::string text, ReadCredentialFile(options_.tokens_file, "--auth-tokens"));
    ASSIGN_OR_RETURN(TokenTable table, ParseTokens(text, options_.tokens_file));
    if (table.by_hash.empty()) {
      spdlog::warn("--auth-tokens {} holds no token: every client call is refused",
                   options_.tokens_file);
    }
    tokens = std::make_shared<const TokenTable>(std::move(table));
  }
  std::string worker_hash;
  if (workers_need_token()) {
    ASSIGN_OR_RETURN(std::string token,
                     ReadTokenFile(options_.worker_token_file, "--worker-token-file"));
    worker_hash = Sha256Hex(token);
  }
  absl::MutexLock lock(&mu_);
  tokens_ = std::move(tokens);
  worker_token_hash_ = std::move(worker_hash);
  return absl::OkStatus();
}

absl::StatusOr<Principal> Authenticator::Authenticate(const grpc::ServerContextBase& ctx) const {
  if (!enabled()) return Principal{"", Role::kAdmin};
  const std::string token = BearerToken(ctx);
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "no credentials: send the metadata 'authorization: Bearer <token>' (prunectl --token or "
        "PRUNESVC_TOKEN)");
  }
  std::shared_ptr<const TokenTable> tokens;
  {
    absl::MutexLock lock(&mu_);
    tokens = tokens_;
  }
  auto it = tokens->by_hash.find(Sha256Hex(token));
  if (it == tokens->by_hash.end()) {
    return absl::UnauthenticatedError("invalid token (unknown or revoked)");
  }
  return Principal{it->second.tenant, it->second.role};
}

absl::Status Authenticator::AuthenticateWorker(const grpc::ServerContextBase& ctx) const {
  if (!workers_need_token()) return absl::OkStatus();
  const std::string token = BearerToken(ctx);
  std::string expected;
  {
    absl::MutexLock lock(&mu_);
    expected = worker_token_hash_;
  }
  if (token.empty() || !ConstantTimeEqual(Sha256Hex(token), expected)) {
    return absl::UnauthenticatedError(
        "invalid or missing worker token (prune-worker --worker-token-file must hold the "
        "scheduler's --worker-token-file token)");
  }
  return absl::OkStatus();
}

TenantQuota Authenticator::QuotaOf(const std::string& tenant) const {
  TenantQuota q = options_.defaults;
  std::shared_ptr<const TokenTable> tokens;
  {
    absl::MutexLock lock(&mu_);
    tokens = tokens_;
  }
  if (tokens != nullptr) {
    auto it = tokens->quotas.find(tenant);
    if (it != tokens->quotas.end()) {
      if (it->second.max_queued_jobs) q.max_queued_jobs = it->second.max_queued_jobs;
      if (it->second.max_running_jobs) q.max_running_jobs = it->second.max_running_jobs;
      if (it->second.max_stored_bytes) q.max_stored_bytes = it->second.max_stored_bytes;
    }
  }
  return q;
}

}  // namespace prunesvc::server
