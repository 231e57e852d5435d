#include "server/blob_store.h"

#include <sys/stat.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store_test_util.h"

namespace prunesvc::server {
namespace {

using ::testing::HasSubstr;

std::string Content(size_t size) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + 7) % 251);
  return s;
}

size_t CountFiles(const std::string& dir) {
  size_t n = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) ++n;
  }
  return n;
}

class BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = FileBlobStore::Create({.root = dir_.Sub("blobs"), .default_max_bytes = 1 << 20});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // Writes `data` in chunks of `chunk` bytes and commits.
  absl::StatusOr<BlobCommitResult> Put(const std::string& data, size_t chunk = 1000) {
    auto writer = store_->NewWriter();
    if (!writer.ok()) return writer.status();
    for (size_t off = 0; off < data.size(); off += chunk) {
      absl::Status status = (*writer)->Append(absl::string_view(data).substr(off, chunk));
      if (!status.ok()) return status;
    }
    return (*writer)->Commit();
  }

  std::string Blobs() const { return dir_.Sub("blobs") + "/sha256"; }

  ScopedTempDir dir_;
  std::unique_ptr<FileBlobStore> store_;
};

TEST_F(BlobStoreTest, RoundTrip) {
  std::string data = Content(10'000);
  std::string id = BlobIdFromHex(Sha256Hex(data));
  auto put = Put(data, 777);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->blob_id, id);
  EXPECT_EQ(put->size_bytes, 10'000);
  EXPECT_FALSE(put->already_present);

  std::string hex = id.substr(7);
  std::string path = store_->PathOf(id);
  EXPECT_EQ(path, Blobs() + "/" + hex.substr(0, 2) + "/" + hex);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0444u);
  EXPECT_EQ(CountFiles(store_->TempDir()), 0u);

  EXPECT_EQ(*store_->Has(id), true);
  EXPECT_EQ(*store_->Size(id), 10'000);
  auto reader = store_->Open(id);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->size(), 10'000);
  std::string back;
  for (int64_t off = 0;;) {
    auto chunk = (*reader)->Read(off, 4096);
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (chunk->empty()) break;
    off += static_cast<int64_t>(chunk->size());
    back += *chunk;
  }
  EXPECT_EQ(back, data);
  EXPECT_EQ(*(*reader)->Read(9'990, 100), data.substr(9'990));  // resume near the end
  EXPECT_EQ((*reader)->Read(10'001, 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*reader)->Read(-1, 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*reader)->Read(0, 0).status().code(), absl::StatusCode::kInvalidArgument);

  // An empty blob is a blob too.
  auto empty = Put("");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->blob_id, BlobIdFromHex(Sha256Hex("")));
  EXPECT_EQ(*store_->Size(empty->blob_id), 0);
}

TEST_F(BlobStoreTest, SecondIdenticalBlobIsAlreadyPresent) {
  std::string data = Content(5000);
  ASSERT_TRUE(Put(data).ok());
  auto again = Put(data, 3);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->already_present);
  EXPECT_EQ(CountFiles(Blobs()), 1u);
  EXPECT_EQ(CountFiles(store_->TempDir()), 0u);
}

TEST_F(BlobStoreTest, HashMismatchStoresNothing) {
  std::string data = Content(3000);
  std::string wrong = BlobIdFromHex(Sha256Hex("something else"));
  auto writer = store_->NewWriter();
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append(data).ok());
  auto result = (*writer)->Commit(wrong);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("does not match"));
  EXPECT_EQ(CountFiles(Blobs()), 0u);
  EXPECT_EQ(CountFiles(store_->TempDir()), 0u);
  EXPECT_FALSE(*store_->Has(BlobIdFromHex(Sha256Hex(data))));
  EXPECT_EQ((*writer)->Append("x").code(), absl::StatusCode::kFailedPrecondition);

  // The right expectation commits.
  writer = store_->NewWriter();
  ASSERT_TRUE((*writer)->Append(data).ok());
  result = (*writer)->Commit(BlobIdFromHex(Sha256Hex(data)));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ((*writer)->Commit().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(BlobStoreTest, SizeLimitIsEnforcedWhileStreaming) {
  auto writer = store_->NewWriter(10);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append("123456").ok());
  ASSERT_TRUE((*writer)->Append("7890").ok());  // exactly the limit is fine
  absl::Status over = (*writer)->Append("x");
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.message(), HasSubstr("limit of 10 bytes"));
  EXPECT_EQ(CountFiles(store_->TempDir()), 0u);
  EXPECT_EQ((*writer)->Append("x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*writer)->Commit().status().code(), absl::StatusCode::kFailedPrecondition);

  // The store's default limit applies when the writer sets none.
  writer = store_->NewWriter();
  ASSERT_TRUE(writer.ok());
  EXPECT_EQ((*writer)->Append(std::string((1 << 20) + 1, 'a')).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CountFiles(Blobs()), 0u);
}

TEST_F(BlobStoreTest, AbortAndDestructionRemoveTheTempFile) {
  {
    auto writer = store_->NewWriter();
    ASSERT_TRUE((*writer)->Append("partial").ok());
    EXPECT_EQ(CountFiles(store_->TempDir()), 1u);
    (*writer)->Abort();
    (*writer)->Abort();  // idempotent
    EXPECT_EQ(CountFiles(store_->TempDir()), 0u);
  }
  {
    auto writer = store_->NewWriter();
    ASSERT_TRUE((*writer)->Append("dropped").ok());
  }
  EXPECT_EQ(CountFiles(store_->TempDir()), 0u);
  EXPECT_EQ(CountFiles(Blobs()), 0u);
}

TEST_F(BlobStoreTest, ConcurrentIdenticalWritesStoreOneBlob) {
  std::string data = Content(200'000);
  constexpr int kThreads = 8;
  std::vector<absl::StatusOr<BlobCommitResult>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { results[t] = Put(data, 4096 + t); });
  }
  for (auto& thread : threads) thread.join();
  int fresh = 0;
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->blob_id, BlobIdFromHex(Sha256Hex(data)));
    fresh += r->already_present ? 0 : 1;
  }
  EXPECT_EQ(fresh, 1);
  EXPECT_EQ(CountFiles(Blobs()), 1u);
  EXPECT_EQ(CountFiles(store_->TempDir()), 0u);
  auto reader = store_->Open(results[0]->blob_id);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(*(*reader)->Read(0, 1 << 20), data);
}

TEST_F(BlobStoreTest, BadIdsAreRejectedBeforeAnyPathIsBuilt) {
  std::string hex = Sha256Hex("x");
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  const std::vector<std::string> bad = {
      "",
      "../x",
      "sha256:../../../etc/passwd",
      "sha256:" + upper,
      "SHA256:" + hex,
      "sha256:" + hex.substr(1),
      "sha256:" + hex + "0",
      "sha256:" + hex.substr(0, 62) + "/a",
      "sha256:" + hex.substr(0, 63) + std::string(1, '\0'),
      "md5:" + hex,
      hex,
  };
  for (const std::string& id : bad) {
    SCOPED_TRACE(id);
    EXPECT_EQ(ValidateBlobId(id).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Open(id).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Has(id).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Size(id).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->Delete(id).code(), absl::StatusCode::kInvalidArgument);
    auto writer = store_->NewWriter();
    ASSERT_TRUE((*writer)->Append("x").ok());
    EXPECT_EQ((*writer)->Commit(id).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(ValidateBlobId("sha256:" + hex).ok());
  EXPECT_EQ(CountFiles(dir_.path()), 0u);
}

TEST_F(BlobStoreTest, DeleteKeepsOpenReadersWorking) {
  std::string data = Content(100);
  auto put = Put(data);
  ASSERT_TRUE(put.ok());
  auto reader = store_->Open(put->blob_id);
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(store_->Delete(put->blob_id).ok());
  EXPECT_FALSE(*store_->Has(put->blob_id));
  EXPECT_EQ(store_->Size(put->blob_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Open(put->blob_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete(put->blob_id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*(*reader)->Read(0, 1000), data);
}

TEST_F(BlobStoreTest, CreateRemovesStaleTempFilesAndKeepsBlobs) {
  auto put = Put("kept");
  ASSERT_TRUE(put.ok());
  std::ofstream(store_->TempDir() + "/blob-crashed") << "half a blob";
  store_.reset();
  auto store = FileBlobStore::Create({.root = dir_.Sub("blobs")});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(CountFiles((*store)->TempDir()), 0u);
  EXPECT_TRUE(*(*store)->Has(put->blob_id));
}

}  // namespace
}  // namespace prunesvc::server
