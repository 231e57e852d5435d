#include "common/tls.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/auth_context.h"
#include "openssl/bio.h"
#include "openssl/objects.h"
#include "openssl/pem.h"
#include "openssl/x509.h"

namespace prunesvc {

absl::StatusOr<std::string> ReadCredentialFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& flag) {
  absl::StatusOr<std::string> read = ReadCredentialFile(path, flag);
  if (!read.ok()) return read.status();
  std::string pem = *std::move(read);
  if (!absl::StrContains(pem, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path, " is not PEM (no -----BEGIN line)"));
  }
  return pem;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files, bool require_client_cert, const std::string& flag_prefix) {
  if (files.plaintext()) {
    if (require_client_cert) {
      return absl::InvalidArgumentError(absl::StrCat("client certificates need TLS: give ",
                                                     flag_prefix, "cert, ", flag_prefix, "key and ",
                                                     flag_prefix, "ca"));
    }
    return grpc::InsecureServerCredentials();
  }
  if (files.cert.empty() || files.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag_prefix, "cert and ", flag_prefix, "key go together"));
  }
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  absl::StatusOr<std::string> cert = ReadPemFile(files.cert, flag_prefix + "cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile(files.key, flag_prefix + "key");
  if (!key.ok()) return key.status();
  pair.cert_chain = *cert;
  pair.private_key = *key;
  options.pem_key_cert_pairs.push_back(pair);
  if (require_client_cert) {
    if (files.ca.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag_prefix, "ca is required: it verifies the client certificates (mutual TLS)"));
    }
    absl::StatusOr<std::string> ca = ReadPemFile(files.ca, flag_prefix + "ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  } else {
    options.client_certificate_request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files, const std::string& flag_prefix) {
  if (files.plaintext()) return grpc::InsecureChannelCredentials();
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag_prefix, "cert and ", flag_prefix, "key go together"));
  }
  grpc::SslCredentialsOptions options;
  if (!files.ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(files.ca, flag_prefix + "ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
  }
  if (!files.cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile(files.cert, flag_prefix + "cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile(files.key, flag_prefix + "key");
    if (!key.ok()) return key.status();
    options.pem_cert_chain = *cert;
    options.pem_private_key = *key;
  }
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path, const std::string& flag) {
  absl::StatusOr<std::string> text = ReadCredentialFile(path, flag);
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(*text));
  bool printable = token.size() >= 16 && token.size() <= 4096;
  for (char c : token) printable = printable && c > ' ' && c <= '~';
  if (!printable) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", path,
                     " must hold one token of at least 16 printable characters without spaces"));
  }
  return token;
}

absl::StatusOr<std::string> CertificateCommonName(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return absl::ResourceExhaustedError("BIO_new_mem_buf failed");
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (cert == nullptr) return absl::InvalidArgumentError("not a PEM certificate");
  char name[256] = {0};
  const int n =
      X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name, sizeof(name));
  X509_free(cert);
  if (n <= 0) return absl::InvalidArgumentError("the certificate has no subject common name");
  return std::string(name, size_t(n));
}

std::string PeerCommonName(const grpc::AuthContext& auth) {
  if (!auth.IsPeerAuthenticated()) return "";
  for (const grpc::string_ref& v : auth.FindPropertyValues("x509_common_name")) {
    return std::string(v.data(), v.size());
  }
  return "";
}

namespace {

class PeerNameProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit PeerNameProcessor(std::string name) : name_(std::move(name)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata&, grpc::AuthContext* context, OutputMetadata*,
                       OutputMetadata*) override {
    const std::string peer = context == nullptr ? "" : PeerCommonName(*context);
    if (peer == name_) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat("only the scheduler (certificate common name \"", name_,
                                     "\") may call this worker; the caller is \"", peer, "\""));
  }

 private:
  const std::string name_;
};

}  // namespace

std::shared_ptr<grpc::AuthMetadataProcessor> RequirePeerCommonName(std::string name) {
  return std::make_shared<PeerNameProcessor>(std::move(name));
}

}  // namespace prunesvc
