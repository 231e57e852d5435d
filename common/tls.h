// gRPC transport credentials from PEM files, shared by the scheduler, the workers and the
// clients (docs/operations.md "TLS and tokens").
//
// A TlsFiles with every path empty means plain text (the loopback default of the demo); a
// server needs `cert` and `key`, and `ca` when it requires client certificates (mutual TLS);
// a client needs `ca` to verify the server, and `cert` + `key` when it presents its own.
// Files are read once, when the credentials are made: rotating a certificate means restarting
// the process (Kubernetes does on a Secret change with the usual rollout annotation).
//
// Thread-safe (free functions; the returned credentials are immutable).
#ifndef PRUNESVC_COMMON_TLS_H_
#define PRUNESVC_COMMON_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace prunesvc {

struct TlsFiles {
  std::string cert;  // PEM certificate chain (this side's)
  std::string key;   // PEM private key of `cert`
  std::string ca;    // PEM roots that verify the other side
  bool plaintext() const { return cert.empty() && key.empty() && ca.empty(); }
};

// Server credentials: plain text when `files` is empty; TLS with `cert` + `key`; when
// `require_client_cert`, clients must present a certificate `ca` verifies (mutual TLS).
// INVALID_ARGUMENT naming the flag (`flag_prefix` + "cert" etc.) for a missing or unreadable
// file, a key without a certificate, or mutual TLS without a CA.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, bool require_client_cert, const std::string& flag_prefix = "--tls-");

// Channel credentials: plain text when `files` is empty; otherwise TLS verifying the server
// against `ca` (the system roots when empty) and presenting `cert` + `key` when given.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files, const std::string& flag_prefix = "--tls-");

// A credential file's bytes (a certificate, a key, a tokens file); INVALID_ARGUMENT
// "FLAG: cannot read PATH" otherwise.
absl::StatusOr<std::string> ReadCredentialFile(const std::string& path, const std::string& flag);

// The file's bytes, which must be PEM; INVALID_ARGUMENT naming FLAG and PATH otherwise.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& flag);

// The subject common name of the first certificate in `pem` (OpenSSL); INVALID_ARGUMENT when it
// does not parse or has none.
absl::StatusOr<std::string> CertificateCommonName(const std::string& pem);

// A token file (a worker token, a client token): one token of at least 16 printable characters
// without spaces; surrounding white space and the final newline are ignored. INVALID_ARGUMENT
// naming `flag` and the path otherwise.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path, const std::string& flag);

// The common name of the peer's verified client certificate, "" when it presented none (or the
// connection is plain text).
std::string PeerCommonName(const grpc::AuthContext& auth);

// A processor for mutual-TLS server credentials that admits only calls whose verified client
// certificate has common name `name` (UNAUTHENTICATED otherwise): how a worker accepts its
// scheduler and no other holder of a certificate from the same CA.
std::shared_ptr<grpc::AuthMetadataProcessor> RequirePeerCommonName(std::string name);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_TLS_H_
