#include "common/model_manifest.h"

#include <filesystem>
#include <fstream>

#include "common/sha256.h"
#include "gtest/gtest.h"

namespace prunesvc {
namespace {

namespace fs = std::filesystem;

std::string Hex(char c) { return std::string(64, c); }

ModelManifest Valid() {
  ModelManifest m;
  m.name = "tiny";
  m.files = {{"model.safetensors", 10, Hex('b')}, {"config.json", 2, Hex('a')}};
  return m;
}

TEST(ModelManifestTest, CanonicalRoundTrip) {
  ModelManifest m = Valid();
  ASSERT_TRUE(ValidateModelManifest(m).ok());
  EXPECT_EQ(m.files[0].path, "config.json");  // sorted
  const std::string text = SerializeModelManifest(m);
  EXPECT_EQ(text, "{\"files\":[{\"path\":\"config.json\",\"sha256\":\"" + Hex('a') +
                      "\",\"size\":2},{\"path\":\"model.safetensors\",\"sha256\":\"" + Hex('b') +
                      "\",\"size\":10}],\"format\":\"prunesvc-model/v1\",\"name\":\"tiny\"}");
  absl::StatusOr<ModelManifest> back = ParseModelManifest(text, "m");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(back->total_bytes(), 12);
  // Another order of the same files: the same bytes, so the same model id.
  ModelManifest reordered = Valid();
  std::swap(reordered.files[0], reordered.files[1]);
  ASSERT_TRUE(ValidateModelManifest(reordered).ok());
  EXPECT_EQ(SerializeModelManifest(reordered), text);
}

TEST(ModelManifestTest, PathsThatCouldEscapeAreRefused) {
  for (const char* bad :
       {"", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/.", "a\\b", "a\nb", "a/"}) {
    EXPECT_FALSE(ValidateModelPath(bad).ok()) << bad;
  }
  EXPECT_FALSE(ValidateModelPath(std::string(1025, 'a')).ok());
  EXPECT_FALSE(ValidateModelPath(std::string(256, 'a')).ok());
  for (const char* good : {"config.json", "a/b/c.bin", "..a", "a..", ".hidden"}) {
    EXPECT_TRUE(ValidateModelPath(good).ok()) << good;
  }
}

TEST(ModelManifestTest, InvariantsNameTheEntry) {
  struct Case {
    std::function<void(ModelManifest&)> mutate;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](ModelManifest& m) { m.files.clear(); }, "files: is empty"},
      {[](ModelManifest& m) { m.files[1].path = "weights"; }, "no config.json"},
      {[](ModelManifest& m) { m.files[1].path = "../weights"; }, "files[1].path"},
      {[](ModelManifest& m) { m.files[0].sha256 = Hex('B'); }, "files[0].sha256"},
      {[](ModelManifest& m) { m.files[0].sha256 = "sha256:" + Hex('b'); }, "files[0].sha256"},
      {[](ModelManifest& m) { m.files[0].size = -1; }, "files[0].size: is negative"},
      {[](ModelManifest& m) { m.files[0].path = "config.json"; }, "listed twice"},
      {[](ModelManifest& m) {
         m.files.push_back({"config.json/x", 1, Hex('c')});
       },
       "both a file and a directory"},
      {[](ModelManifest& m) { m.name = std::string(257, 'n'); }, "name: at most"},
      {[](ModelManifest& m) { m.name = "a\tb"; }, "name: holds a control"},
      {[](ModelManifest& m) {
         m.files[0].size = std::numeric_limits<int64_t>::max();
         m.files[1].size = 5;
       },
       "add up past"},
  };
  for (const Case& c : cases) {
    ModelManifest m = Valid();
    c.mutate(m);
    absl::Status s = ValidateModelManifest(m);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << c.expect;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s.message();
  }
}

TEST(ModelManifestTest, MalformedJsonIsRefusedWithItsName) {
  const std::string good = SerializeModelManifest([] {
    ModelManifest m = Valid();
    (void)ValidateModelManifest(m);
    return m;
  }());
  struct Case {
    std::string text;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"", "not valid JSON"},
      {"[]", "not a JSON object"},
      {"{\"files\":[],\"format\":\"other\"}", "format: must be"},
      {"{\"format\":\"prunesvc-model/v1\"}", "files: must be an array"},
      {"{\"format\":\"prunesvc-model/v1\",\"files\":[1]}", "files[0]: must be an object"},
      {"{\"format\":\"prunesvc-model/v1\",\"files\":[{\"path\":1}]}", "path: must be a string"},
      {"{\"format\":\"prunesvc-model/v1\",\"files\":[{\"path\":\"config.json\",\"sha256\":\"" +
           Hex('a') + "\",\"size\":1.5}]}",
       "size: must be an integer"},
      {"{\"format\":\"prunesvc-model/v1\",\"files\":[{\"path\":\"config.json\",\"sha256\":\"" +
           Hex('a') + "\",\"size\":18446744073709551615}]}",
       "size: too large"},
      {"{\"format\":\"prunesvc-model/v1\",\"extra\":1,\"files\":[]}", "unknown field \"extra\""},
      {"{\"format\":\"prunesvc-model/v1\",\"name\":3,\"files\":[]}", "name: must be a string"},
      {good.substr(0, good.size() - 1), "not valid JSON"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ModelManifest> m = ParseModelManifest(c.text, "manifest X");
    ASSERT_FALSE(m.ok()) << c.text;
    EXPECT_TRUE(absl::IsInvalidArgument(m.status()));
    EXPECT_NE(m.status().message().find("manifest X"), std::string::npos) << m.status();
    EXPECT_NE(m.status().message().find(c.expect), std::string::npos) << m.status();
  }
}

TEST(ModelManifestTest, DirectoryIsHashedFileByFileFollowingLinks) {
  const fs::path dir = fs::path(::testing::TempDir()) / "manifest-dir";
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  std::ofstream(dir / "config.json") << "{}";
  std::ofstream(dir / "sub" / "w.bin") << std::string(3 << 20, 'w');  // several read blocks
  const fs::path blob = fs::path(::testing::TempDir()) / "manifest-blob";
  std::ofstream(blob) << "linked";
  fs::remove(dir / "link");
  fs::create_symlink(blob, dir / "link");  // a HuggingFace cache snapshot links into blobs/
  int64_t last_done = 0, last_total = 0;
  absl::StatusOr<ModelManifest> m = ManifestOfDirectory(
      dir.string(), "n",
      [&](int64_t done, int64_t total) { last_done = done, last_total = total; });
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->files.size(), 3u);
  EXPECT_EQ(m->files[0].path, "config.json");
  EXPECT_EQ(m->files[0].sha256, Sha256Hex("{}"));
  EXPECT_EQ(m->files[1].path, "link");
  EXPECT_EQ(m->files[1].sha256, Sha256Hex("linked"));
  EXPECT_EQ(m->files[2].path, "sub/w.bin");
  EXPECT_EQ(m->files[2].sha256, Sha256Hex(std::string(3 << 20, 'w')));
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, 2 + 6 + (3 << 20));
  // Not a model: no config.json; not a directory.
  fs::remove(dir / "config.json");
  EXPECT_NE(ManifestOfDirectory(dir.string(), "", nullptr).status().message().find("config.json"),
            std::string::npos);
  EXPECT_FALSE(ManifestOfDirectory((dir / "link").string(), "", nullptr).ok());
}

TEST(ModelManifestTest, BlobUris) {
  const std::string id = "sha256:" + Hex('c');
  EXPECT_EQ(BlobModelUri(id), "blob://" + id);
  EXPECT_TRUE(IsBlobModelUri("blob://x"));
  EXPECT_FALSE(IsBlobModelUri("file:///x"));
  absl::StatusOr<std::string> back = BlobModelId("blob://" + id, "model_uri");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, id);
  for (const std::string& bad :
       std::vector<std::string>{"blob://", "blob://sha256:abc", "blob://md5:" + Hex('c'),
                                "blob://sha256:" + Hex('C'), "file:///x"}) {
    absl::StatusOr<std::string> r = BlobModelId(bad, "model_uri");
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << bad;
    EXPECT_NE(r.status().message().find("model_uri"), std::string::npos);
  }
}

}  // namespace
}  // namespace prunesvc
