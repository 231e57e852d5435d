#include "client/archive_util.h"

#include <archive.h>
#include <archive_entry.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::client {
namespace {

// gmock's string matchers on absl::string_view (Status::message()) as well as std::string.
::testing::Matcher<absl::string_view> HasSubstr(const std::string& s) {
  return ::testing::ResultOf([](absl::string_view v) { return std::string(v); },
                             ::testing::HasSubstr(s));
}
::testing::Matcher<absl::string_view> StartsWith(const std::string& s) {
  return ::testing::ResultOf([](absl::string_view v) { return std::string(v); },
                             ::testing::StartsWith(s));
}

namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const fs::path p = fs::path(::testing::TempDir()) / absl::StrCat("archive_util_", name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void WriteFile(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Entry names of an in-memory tar, in order.
std::vector<std::string> TarNames(const std::string& tar) {
  std::vector<std::string> names;
  archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  EXPECT_EQ(archive_read_open_memory(a, tar.data(), tar.size()), ARCHIVE_OK);
  archive_entry* e;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) names.push_back(archive_entry_pathname(e));
  archive_read_free(a);
  return names;
}

struct Entry {
  std::string name;
  std::string data;
  int type = AE_IFREG;
  std::string link;  // symlink target, or hardlink target when type == 0
};

void WriteTar(const std::string& path, const std::vector<Entry>& entries) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const Entry& x : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, x.name.c_str());
    archive_entry_set_perm(e, 0644);
    if (x.type == 0) {
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_hardlink(e, x.link.c_str());
      archive_entry_set_size(e, 0);
    } else {
      archive_entry_set_filetype(e, x.type);
      if (x.type == AE_IFLNK) archive_entry_set_symlink(e, x.link.c_str());
      archive_entry_set_size(e, x.type == AE_IFREG ? x.data.size() : 0);
    }
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
    if (x.type == AE_IFREG && !x.data.empty()) archive_write_data(a, x.data.data(), x.data.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}

std::string MakeDataset(const std::string& name) {
  const std::string dir = FreshDir(name);
  WriteFile(fs::path(dir) / "samples.jsonl", "{\"id\": 1}\n");
  WriteFile(fs::path(dir) / "images/b.png", std::string(3000, 'b'));
  WriteFile(fs::path(dir) / "images/a.png", "aaa");
  WriteFile(fs::path(dir) / "README", "");
  return dir;
}

TEST(PackDirectoryTest, DeterministicAndSorted) {
  const std::string dir = MakeDataset("pack");
  auto first = PackDirectoryToTar(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  fs::last_write_time(fs::path(dir) / "images/a.png",
                      fs::file_time_type::clock::now() - std::chrono::hours(5));
  auto second = PackDirectoryToTar(dir);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*first, *second);
  EXPECT_THAT(TarNames(*first),
              ::testing::ElementsAre("README", "images/a.png", "images/b.png", "samples.jsonl"));
}

TEST(PackDirectoryTest, RoundTripsThroughSafeUnpack) {
  const std::string dir = MakeDataset("roundtrip");
  auto tar = PackDirectoryToTar(dir);
  ASSERT_TRUE(tar.ok());
  const std::string tar_path = FreshDir("roundtrip_tar") + "/d.tar";
  WriteFile(tar_path, *tar);
  const std::string out = FreshDir("roundtrip_out");
  ASSERT_TRUE(UnpackTarSafely(tar_path, out).ok());
  for (const char* f : {"samples.jsonl", "images/a.png", "images/b.png", "README"}) {
    EXPECT_EQ(ReadAll(fs::path(out) / f), ReadAll(fs::path(dir) / f)) << f;
  }
}

TEST(PackDirectoryTest, NeedsSamplesJsonlAtTheRoot) {
  const std::string dir = FreshDir("nosamples");
  WriteFile(fs::path(dir) / "sub/samples.jsonl", "{}\n");
  EXPECT_EQ(PackDirectoryToTar(dir).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackDirectoryToTar(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(UnpackTest, RefusesEntriesThatEscape) {
  const std::vector<std::pair<std::string, std::vector<Entry>>> cases = {
      {"dotdot", {{"ok.txt", "x"}, {"../evil.txt", "x"}}},
      {"nested_dotdot", {{"a/../../evil.txt", "x"}}},
      {"absolute", {{"/tmp/evil.txt", "x"}}},
      {"symlink", {{"link", "", AE_IFLNK, "/etc/passwd"}}},
      {"hardlink", {{"ok.txt", "x"}, {"hard", "", 0, "ok.txt"}}},
      {"fifo", {{"pipe", "", AE_IFIFO}}},
  };
  for (const auto& [name, entries] : cases) {
    const std::string base = FreshDir("unsafe_" + name);
    const std::string tar = base + "/t.tar";
    WriteTar(tar, entries);
    fs::create_directories(base + "/out/inner");
    absl::Status s = UnpackTarSafely(tar, base + "/out/inner");
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << name << ": " << s;
    EXPECT_FALSE(fs::exists(base + "/out/evil.txt")) << name;
    EXPECT_FALSE(fs::exists(base + "/evil.txt")) << name;
  }
}

TEST(UnpackTest, CorruptTarIsDataLoss) {
  const std::string base = FreshDir("corrupt");
  WriteFile(base + "/t.tar", std::string(700, 'z'));
  EXPECT_EQ(UnpackTarSafely(base + "/t.tar", base).code(), absl::StatusCode::kDataLoss);
}

TEST(Sha256Test, AcceptsBareAndPrefixedDigests) {
  const std::string dir = FreshDir("sha");
  WriteFile(dir + "/abc", "abc");
  const std::string hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  auto got = Sha256File(dir + "/abc");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, hex);
  EXPECT_TRUE(VerifyFileSha256(dir + "/abc", hex).ok());
  EXPECT_TRUE(VerifyFileSha256(dir + "/abc", "sha256:" + hex).ok());
  EXPECT_TRUE(
      VerifyFileSha256(dir + "/abc",
                       "SHA256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
          .ok());
  EXPECT_EQ(VerifyFileSha256(dir + "/abc", std::string(64, '0')).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(BareSha256(" sha256:ABC "), "abc");
  EXPECT_EQ(Sha256File(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(ManifestTest, ChecksEveryFile) {
  const std::string dir = FreshDir("manifest");
  WriteFile(dir + "/policy.json", "{}");
  WriteFile(dir + "/model/w.bin", "weights");
  auto h1 = Sha256File(dir + "/model/w.bin");
  auto h2 = Sha256File(dir + "/policy.json");
  WriteFile(dir + "/MANIFEST.sha256", absl::StrCat(*h1, "  model/w.bin\n", *h2, "  policy.json\n"));
  EXPECT_TRUE(VerifyManifest(dir).ok()) << VerifyManifest(dir);

  WriteFile(dir + "/extra.txt", "x");
  EXPECT_THAT(VerifyManifest(dir).message(), HasSubstr("extra.txt"));
  fs::remove(dir + "/extra.txt");

  WriteFile(dir + "/policy.json", "{\"tampered\": 1}");
  absl::Status s = VerifyManifest(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("policy.json"));

  WriteFile(dir + "/MANIFEST.sha256", "nonsense\n");
  EXPECT_EQ(VerifyManifest(dir).code(), absl::StatusCode::kDataLoss);
  WriteFile(dir + "/MANIFEST.sha256", absl::StrCat(*h1, "  ../w.bin\n"));
  EXPECT_EQ(VerifyManifest(dir).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace prunesvc::client
