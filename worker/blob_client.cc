#include "worker/blob_client.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/job_spec_proto.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "prune/v1/worker.grpc.pb.h"

namespace prunesvc::worker {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;

constexpr size_t kChunkBytes = 1 << 20;

std::chrono::system_clock::time_point Deadline(int64_t bytes, int min_seconds) {
  // At least `min_seconds`, plus a second per 10 MiB (a slow link still finishes).
  const int64_t seconds = min_seconds + bytes / (10 << 20);
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

class GrpcBlobClient : public BlobClient {
 public:
  GrpcBlobClient(std::shared_ptr<grpc::Channel> channel,
                 std::function<void(grpc::ClientContext&)> decorate, int min_seconds)
      : stub_(pb::WorkerRegistry::NewStub(channel)),
        decorate_(std::move(decorate)),
        min_seconds_(min_seconds) {}

  absl::Status Fetch(const std::string& id, const std::string& path) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(0, min_seconds_ * 10));
    if (decorate_) decorate_(ctx);
    pb::FetchBlobRequest req;
    req.set_blob_id(id);
    std::unique_ptr<grpc::ClientReader<pb::FetchBlobResponse>> reader = stub_->FetchBlob(&ctx, req);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat(path, ": cannot create"));
    pb::FetchBlobResponse chunk;
    int64_t total = -1, got = 0;
    while (reader->Read(&chunk)) {
      if (total < 0) total = chunk.total_size();
      out.write(chunk.data().data(), std::streamsize(chunk.data().size()));
      got += int64_t(chunk.data().size());
    }
    RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
    if (total >= 0 && got != total) {
      return absl::DataLossError(
          absl::StrCat("blob ", id, ": received ", got, " of ", total, " bytes"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Put(const std::string& path) override {
    ASSIGN_OR_RETURN(std::string id, FileContentId(path));
    std::error_code ec;
    const int64_t size = int64_t(fs::file_size(path, ec));
    if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(size, min_seconds_));
    if (decorate_) decorate_(ctx);
    pb::PutBlobResponse resp;
    std::unique_ptr<grpc::ClientWriter<pb::PutBlobRequest>> writer = stub_->PutBlob(&ctx, &resp);
    std::ifstream in(path, std::ios::binary);
    std::vector<char> buf(kChunkBytes);
    pb::PutBlobRequest head;
    head.set_blob_id(id);
    head.set_size_bytes(size);
    bool ok = writer->Write(head);
    while (ok && in) {
      in.read(buf.data(), std::streamsize(buf.size()));
      if (in.gcount() == 0) break;
      pb::PutBlobRequest req;
      req.set_data(buf.data(), size_t(in.gcount()));
      ok = writer->Write(req);
    }
    writer->WritesDone();
    RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
    if (resp.blob_id() != id) {
      return absl::DataLossError(
          absl::StrCat("PutBlob stored ", resp.blob_id(), " for a file whose sha256 is ", id));
    }
    return id;
  }

 private:
  std::unique_ptr<pb::WorkerRegistry::Stub> stub_;
  const std::function<void(grpc::ClientContext&)> decorate_;
  const int min_seconds_;
};

}  // namespace

std::unique_ptr<BlobClient> NewGrpcBlobClient(std::shared_ptr<grpc::Channel> channel,
                                              std::function<void(grpc::ClientContext&)> decorate,
                                              int min_deadline_seconds) {
  return std::make_unique<GrpcBlobClient>(std::move(channel), std::move(decorate),
                                          min_deadline_seconds);
}

absl::StatusOr<std::string> FileContentId(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  Sha256 h;
  std::vector<char> buf(kChunkBytes);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    if (in.gcount() > 0) h.Update(std::string_view(buf.data(), size_t(in.gcount())));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return absl::StrCat("sha256:", DigestHex(h.Final()));
}

absl::StatusOr<std::unique_ptr<BlobCache>> BlobCache::Create(const std::string& dir,
                                                             BlobClient* client) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  return std::unique_ptr<BlobCache>(new BlobCache(dir, client));
}

absl::StatusOr<std::string> BlobCache::Get(const std::string& id, bool verify_bytes) {
  if (!IsContentId(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob id \"", id.substr(0, 80), "\" is not sha256:<64 lowercase hex>"));
  }
  const std::string path = absl::StrCat(dir_, "/", id.substr(7));
  absl::MutexLock lock(&mu_);
  if (fs::exists(path)) return path;
  if (client_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("blob ", id, " is not cached and this worker has no scheduler to fetch from"));
  }
  const std::string tmp = absl::StrCat(path, ".tmp-", getpid());
  absl::Status fetched = client_->Fetch(id, tmp);
  if (fetched.ok() && verify_bytes) {
    absl::StatusOr<std::string> actual = FileContentId(tmp);
    if (!actual.ok()) {
      fetched = actual.status();
    } else if (*actual != id) {
      fetched = absl::DataLossError(absl::StrCat("blob ", id, " arrived as ", *actual));
    }
  }
  std::error_code ec;
  if (!fetched.ok()) {
    fs::remove(tmp, ec);
    return fetched;
  }
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  return path;
}

absl::StatusOr<std::string> BlobCache::Put(const std::string& path) {
  if (client_ == nullptr) {
    return absl::FailedPreconditionError("this worker has no scheduler to upload blobs to");
  }
  return client_->Put(path);
}

}  // namespace prunesvc::worker
