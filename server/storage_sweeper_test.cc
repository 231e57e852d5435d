// The storage sweep (issue 16) on a real SQLite store and a real FileBlobStore: retention,
// unreferenced projector/artifact records, orphan files, and what it must never remove.
#include "server/storage_sweeper.h"

#include <string>

#include "common/clock.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "server/sqlite_job_store.h"
#include "server/store_test_util.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;

class StorageSweeperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = SqliteJobStore::Create({.state_dir = dir_.Sub("state"), .clock = &clock_});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto blobs = FileBlobStore::Create({.root = dir_.Sub("state/blobs")});
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = *std::move(blobs);
  }

  // Stores `bytes` as a blob file and indexes it for tenant "t" as `kind`; its id.
  std::string PutBlob(const std::string& bytes, BlobKind kind) {
    auto w = blobs_->NewWriter();
    EXPECT_TRUE(w.ok());
    EXPECT_TRUE((*w)->Append(bytes).ok());
    auto c = (*w)->Commit();
    EXPECT_TRUE(c.ok()) << c.status();
    BlobRecord r{.blob_id = c->blob_id, .kind = kind, .size_bytes = c->size_bytes, .tenant = "t"};
    EXPECT_TRUE(store_->PutBlob(r).ok());
    return c->blob_id;
  }
  std::string StoreFileOnly(const std::string& bytes) {
    auto w = blobs_->NewWriter();
    EXPECT_TRUE((*w)->Append(bytes).ok());
    return (*w)->Commit()->blob_id;
  }
  // A job of tenant "t" on `dataset`, ended as `state` with `artifact` and one projector.
  std::string Job(const std::string& dataset, pb::JobState state, const std::string& artifact,
                  const std::string& projector) {
    pb::JobSpec spec;
    spec.set_model_uri("file:///m");
    spec.set_dataset_id(dataset);
    pb::JobEvent queued;
    queued.mutable_state_changed()->set_to(pb::QUEUED);
    auto created = store_->CreateJob("t", spec, {queued});
    EXPECT_TRUE(created.ok());
    const std::string id = created->job.job_id();
    pb::JobEvent p;
    p.mutable_projector_updated()->set_version(1);
    p.mutable_projector_updated()->set_blob_id(projector);
    JobMutation m;
    m.state = pb::SEARCHING;
    EXPECT_TRUE(store_->Commit(id, m, {p}, std::nullopt).ok());
    if (state != pb::SEARCHING) {
      JobMutation end;
      end.state = state;
      end.artifact_id = artifact;
      EXPECT_TRUE(store_->Commit(id, end, {}, std::nullopt).ok());
    }
    return id;
  }

  ScopedTempDir dir_;
  FakeClock clock_{absl::Now()};
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<FileBlobStore> blobs_;
};

TEST_F(StorageSweeperTest, KeepsWhatJobsReferenceAndRemovesTheRest) {
  const std::string dataset = PutBlob("dataset", BlobKind::kDataset);
  const std::string lonely_dataset = PutBlob("unused dataset", BlobKind::kDataset);
  const std::string live_projector = PutBlob("live projector", BlobKind::kProjector);
  const std::string old_projector = PutBlob("old projector", BlobKind::kProjector);
  const std::string old_artifact = PutBlob("old artifact", BlobKind::kArtifact);
  const std::string kept_artifact = PutBlob("kept artifact", BlobKind::kArtifact);
  const std::string stray_projector = PutBlob("projector of no job", BlobKind::kProjector);
  const std::string orphan_file = StoreFileOnly("crash leftover");

  const std::string live = Job(dataset, pb::SEARCHING, "", live_projector);
  const std::string old = Job(dataset, pb::SUCCEEDED, old_artifact, old_projector);
  clock_.Advance(absl::Hours(30));
  const std::string recent = Job(dataset, pb::SUCCEEDED, kept_artifact, old_projector);

  // Within the grace period nothing unreferenced goes (it may be being written right now).
  SweepOptions o{.retain = absl::Hours(24), .grace = absl::Hours(1)};
  auto r = SweepStorage(*store_, *blobs_, o, absl::Now());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->jobs_deleted, 0);  // store time (fake) is not yet 24 h past `old` for this `now`
  EXPECT_EQ(r->records_deleted, 0);
  EXPECT_EQ(r->files_deleted, 0);

  // 40 hours on: `old` is past retention; unreferenced records and files past the grace.
  r = SweepStorage(*store_, *blobs_, o, absl::Now() + absl::Hours(40));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->jobs_deleted, 1);
  EXPECT_EQ(store_->GetJob(old).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->GetJob(live).ok());
  EXPECT_TRUE(store_->GetJob(recent).ok());
  // Records: the old artifact and the stray projector go; the projector `recent` also used stays.
  EXPECT_EQ(r->records_deleted, 2);
  for (const std::string& gone : {old_artifact, stray_projector}) {
    EXPECT_EQ(store_->GetBlob("t", gone).status().code(), absl::StatusCode::kNotFound) << gone;
    EXPECT_FALSE(*blobs_->Has(gone)) << gone;
  }
  for (const std::string& kept :
       {dataset, lonely_dataset, live_projector, old_projector, kept_artifact}) {
    EXPECT_TRUE(store_->GetBlob("t", kept).ok()) << kept;
    EXPECT_TRUE(*blobs_->Has(kept)) << kept;
  }
  EXPECT_FALSE(*blobs_->Has(orphan_file));
  EXPECT_EQ(r->files_deleted, 3);
  EXPECT_GT(r->bytes_freed, 0);

  // Idempotent.
  r = SweepStorage(*store_, *blobs_, o, absl::Now() + absl::Hours(40));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->jobs_deleted + r->records_deleted + r->files_deleted, 0);
}

// Uploaded models (issue 19) are their owner's, like datasets: no sweep removes them however old,
// and once their records are deleted (DeleteModel) the next sweep frees the bytes.
TEST_F(StorageSweeperTest, ModelsStayUntilDeletedThenTheirBytesGo) {
  const std::string manifest = PutBlob("{\"manifest\": 1}", BlobKind::kModel);
  const std::string file = PutBlob("weights", BlobKind::kModelFile);
  SweepOptions o{.retain = absl::Hours(24), .grace = absl::Hours(1)};
  auto r = SweepStorage(*store_, *blobs_, o, absl::Now() + absl::Hours(1000));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->records_deleted, 0);
  EXPECT_EQ(r->files_deleted, 0);
  for (const std::string& kept : {manifest, file}) {
    EXPECT_TRUE(store_->GetBlob("t", kept).ok()) << kept;
    EXPECT_TRUE(*blobs_->Has(kept)) << kept;
  }
  ASSERT_TRUE(store_->DeleteBlob("t", manifest).ok());
  ASSERT_TRUE(store_->DeleteBlob("t", file).ok());
  r = SweepStorage(*store_, *blobs_, o, absl::Now() + absl::Hours(1000));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->files_deleted, 2);
  EXPECT_FALSE(*blobs_->Has(manifest));
  EXPECT_FALSE(*blobs_->Has(file));
}

TEST_F(StorageSweeperTest, RetentionZeroKeepsFinishedJobs) {
  const std::string dataset = PutBlob("dataset", BlobKind::kDataset);
  const std::string artifact = PutBlob("artifact", BlobKind::kArtifact);
  const std::string projector = PutBlob("projector", BlobKind::kProjector);
  const std::string job = Job(dataset, pb::SUCCEEDED, artifact, projector);
  auto r = SweepStorage(*store_, *blobs_, {.retain = absl::ZeroDuration()},
                        absl::Now() + absl::Hours(24 * 365));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->jobs_deleted + r->records_deleted + r->files_deleted, 0);
  EXPECT_TRUE(store_->GetJob(job).ok());
  EXPECT_TRUE(*blobs_->Has(artifact));
}

}  // namespace
}  // namespace prunesvc::server
