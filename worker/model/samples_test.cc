#include "worker/model/samples.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path MakeTempDir(const std::string& tag) {
  std::string templ = (fs::path(::testing::TempDir()) / ("samples_" + tag + "_XXXXXX")).string();
  EXPECT_NE(mkdtemp(templ.data()), nullptr);
  return fs::path(templ);
}

void WriteFile(const fs::path& path, const std::string& data) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

struct Entry {
  std::string name;
  std::string data;
  enum Kind { kFile, kSymlink, kDir, kHardlink, kCharDevice, kFifo } kind = kFile;
  std::string target;          // for symlinks and hard links
  int64_t declared_size = -1;  // header size override (only with empty data and no writes)
};

// Writes a tar with libarchive's writer; `gzip` adds a gzip filter.
void WriteTar(const fs::path& path, const std::vector<Entry>& entries, bool gzip) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const Entry& e : entries) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.name.c_str());
    archive_entry_set_perm(entry, 0644);
    if (e.kind == Entry::kSymlink) {
      archive_entry_set_filetype(entry, AE_IFLNK);
      archive_entry_set_symlink(entry, e.target.c_str());
      archive_entry_set_size(entry, 0);
    } else if (e.kind == Entry::kDir) {
      archive_entry_set_filetype(entry, AE_IFDIR);
      archive_entry_set_size(entry, 0);
    } else if (e.kind == Entry::kHardlink) {
      archive_entry_set_filetype(entry, AE_IFREG);
      archive_entry_set_hardlink(entry, e.target.c_str());
      archive_entry_set_size(entry, 0);
    } else if (e.kind == Entry::kCharDevice || e.kind == Entry::kFifo) {
      archive_entry_set_filetype(entry, e.kind == Entry::kFifo ? AE_IFIFO : AE_IFCHR);
      archive_entry_set_rdev(entry, e.kind == Entry::kFifo ? 0 : makedev(1, 3));
      archive_entry_set_size(entry, 0);
    } else {
      archive_entry_set_filetype(entry, AE_IFREG);
      archive_entry_set_size(entry, static_cast<la_int64_t>(e.data.size()));
    }
    ASSERT_EQ(archive_write_header(a, entry), ARCHIVE_OK) << e.name;
    if (!e.data.empty()) {
      ASSERT_EQ(archive_write_data(a, e.data.data(), e.data.size()),
                static_cast<la_ssize_t>(e.data.size()));
    }
    archive_entry_free(entry);
  }
  archive_write_close(a);
  archive_write_free(a);
}

// A set exercising the tolerated quirks: BOM, CRLF, blank lines, unknown fields, "./" paths,
// an image shared by two samples, unicode.
const char kJsonl[] =
    "\xEF\xBB\xBF{\"id\": \"q1\", \"image\": \"images/0001.png\", \"question\": \"What colour?\", "
    "\"options\": [\"red\", \"blue\", \"green\"], \"answer\": \"B\", \"type\": \"colour\"}\r\n"
    "\n"
    "   \n"
    "{\"id\": \"q2\", \"image\": \"./images//0002.png\", \"question\": \"Wie viele? 東京 😀\", "
    "\"answer\": \"three\", \"extra\": {\"ignored\": [1, 2]}}\n"
    "{\"id\": \"q3\", \"image\": \"images/0001.png\", \"question\": \"\", \"options\": [\"a\", "
    "\"b\"], \"answer\": \"A\", \"type\": null, \"options_note\": 5}\n";

std::vector<Entry> SetEntries(const std::string& prefix = "") {
  return {{prefix + "samples.jsonl", kJsonl},
          {prefix + "images/0001.png", std::string("\x89PNG\r\n\x1a\n-one", 12)},
          {prefix + "images/0002.png", std::string("\x89PNG\r\n\x1a\n-two\0x", 14)},
          {prefix + "images/unused.png", "not referenced"}};
}

void WriteDir(const fs::path& dir, const std::vector<Entry>& entries) {
  for (const Entry& e : entries) WriteFile(dir / e.name, e.data);
}

class SamplesTest : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = MakeTempDir("t"); }
  void TearDown() override { fs::remove_all(tmp_); }
  fs::path tmp_;
};

TEST_F(SamplesTest, DirectoryTarAndTarGzLoadIdentically) {
  WriteDir(tmp_ / "dir", SetEntries());
  WriteTar(tmp_ / "set.tar", SetEntries(), false);
  WriteTar(tmp_ / "set.tar.gz", SetEntries(), true);
  WriteTar(tmp_ / "folder.tgz", SetEntries("set/"), true);
  WriteTar(tmp_ / "dotslash.tar", SetEntries("./"), false);

  auto dir = LoadSampleSet((tmp_ / "dir").string());
  ASSERT_TRUE(dir.ok()) << dir.status();
  ASSERT_EQ(dir->samples.size(), 3u);
  const Sample& q1 = dir->samples[0];
  EXPECT_EQ(q1.id, "q1");
  EXPECT_EQ(q1.line, 1);
  EXPECT_EQ(q1.image_path, "images/0001.png");
  EXPECT_EQ(q1.question, "What colour?");
  EXPECT_EQ(q1.options, (std::vector<std::string>{"red", "blue", "green"}));
  EXPECT_TRUE(q1.multiple_choice());
  EXPECT_EQ(q1.answer_index(), 1);
  EXPECT_EQ(q1.type, "colour");
  EXPECT_EQ(q1.image_bytes, Bytes(SetEntries()[1].data));
  const Sample& q2 = dir->samples[1];
  EXPECT_EQ(q2.id, "q2");
  EXPECT_EQ(q2.line, 4);  // physical line: blank lines still count
  EXPECT_EQ(q2.image_path, "images/0002.png");
  EXPECT_EQ(q2.question, "Wie viele? 東京 😀");
  EXPECT_FALSE(q2.multiple_choice());
  EXPECT_EQ(q2.answer_index(), -1);
  EXPECT_EQ(q2.answer, "three");
  EXPECT_EQ(q2.type, "");
  EXPECT_EQ(q2.image_bytes, Bytes(SetEntries()[2].data));
  const Sample& q3 = dir->samples[2];
  EXPECT_EQ(q3.line, 5);
  EXPECT_EQ(q3.answer_index(), 0);
  EXPECT_EQ(q3.image_bytes, q1.image_bytes);  // shared image, own copy

  // Hash definition: sha256(samples.jsonl bytes ‖ digest(image of each sample, in order)).
  Sha256 h;
  h.Update(std::string_view(kJsonl));
  for (const Sample& s : dir->samples) {
    Sha256 hi;
    hi.Update(absl::MakeConstSpan(s.image_bytes));
    const auto d = hi.Final();
    h.Update(absl::MakeConstSpan(d));
  }
  EXPECT_EQ(dir->sha256, DigestHex(h.Final()));
  EXPECT_EQ(dir->total_bytes, sizeof(kJsonl) - 1 + 12 + 14 + 12);

  for (const char* name : {"set.tar", "set.tar.gz", "folder.tgz", "dotslash.tar"}) {
    auto tar = LoadSampleSet((tmp_ / name).string());
    ASSERT_TRUE(tar.ok()) << name << ": " << tar.status();
    EXPECT_EQ(tar->sha256, dir->sha256) << name;
    EXPECT_EQ(tar->total_bytes, dir->total_bytes) << name;
    ASSERT_EQ(tar->samples.size(), dir->samples.size()) << name;
    for (size_t i = 0; i < dir->samples.size(); ++i) {
      const Sample& a = dir->samples[i];
      const Sample& b = tar->samples[i];
      EXPECT_EQ(a.id, b.id);
      EXPECT_EQ(a.image_path, b.image_path);
      EXPECT_EQ(a.question, b.question);
      EXPECT_EQ(a.options, b.options);
      EXPECT_EQ(a.answer, b.answer);
      EXPECT_EQ(a.type, b.type);
      EXPECT_EQ(a.line, b.line);
      EXPECT_EQ(a.image_bytes, b.image_bytes) << name << " sample " << i;
    }
  }
  // Different content → different hash.
  auto entries = SetEntries();
  entries[2].data += "!";
  WriteDir(tmp_ / "dir2", entries);
  auto other = LoadSampleSet((tmp_ / "dir2").string());
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->sha256, dir->sha256);
}

struct BadLine {
  std::string jsonl;
  std::string expect;  // error substring (after "samples.jsonl:")
};

TEST_F(SamplesTest, MalformedLinesNameLineAndField) {
  const std::string ok =
      R"({"id": "a", "image": "images/0001.png", "question": "q", "answer": "x"})";
  auto line2 = [&](const std::string& l) { return ok + "\n" + l + "\n"; };
  std::string opts27;
  for (int i = 0; i < 27; ++i) opts27 += absl::StrCat(i ? "," : "", "\"o", i, "\"");
  const std::vector<BadLine> cases = {
      {line2("{not json"), ":2: not valid JSON"},
      {line2("[1, 2]"), ":2: not a JSON object"},
      {line2("\"str\""), ":2: not a JSON object"},
      {line2(R"({"image": "images/0001.png", "question": "q", "answer": "x"})"),
       ":2: field \"id\": missing"},
      {line2(R"({"id": 7, "image": "images/0001.png", "question": "q", "answer": "x"})"),
       ":2: field \"id\": must be a string"},
      {line2(R"({"id": "", "image": "images/0001.png", "question": "q", "answer": "x"})"),
       ":2: field \"id\": must not be empty"},
      {line2(R"({"id": "a", "image": "images/0001.png", "question": "q", "answer": "x"})"),
       ":2: field \"id\": duplicate id \"a\" (first on line 1)"},
      {line2(R"({"id": "b", "question": "q", "answer": "x"})"), ":2: field \"image\": missing"},
      {line2(R"({"id": "b", "image": ["x"], "question": "q", "answer": "x"})"),
       ":2: field \"image\": must be a string"},
      {line2(R"({"id": "b", "image": "/etc/passwd", "question": "q", "answer": "x"})"),
       ":2: field \"image\": path must be relative"},
      {line2(R"({"id": "b", "image": "../x.png", "question": "q", "answer": "x"})"),
       ":2: field \"image\": path may not contain \"..\""},
      {line2(R"({"id": "b", "image": "images/../../x.png", "question": "q", "answer": "x"})"),
       ":2: field \"image\": path may not contain \"..\""},
      {line2(R"({"id": "b", "image": "images\\0001.png", "question": "q", "answer": "x"})"),
       ":2: field \"image\": path may not contain"},
      {line2(R"({"id": "b", "image": "./", "question": "q", "answer": "x"})"),
       ":2: field \"image\": path names no file"},
      {line2(R"({"id": "b", "image": "images/0001.png", "answer": "x"})"),
       ":2: field \"question\": missing"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": 3, "answer": "x"})"),
       ":2: field \"question\": must be a string"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": "red",)"
             R"( "answer": "A"})"),
       ":2: field \"options\": must be an array"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["red"],)"
             R"( "answer": "A"})"),
       ":2: field \"options\": must have 2 to 26 entries, has 1"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": [)" + opts27 +
             R"(], "answer": "A"})"),
       ":2: field \"options\": must have 2 to 26 entries, has 27"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["r", ""],)"
             R"( "answer": "A"})"),
       ":2: field \"options\": entry 1 is not a non-empty string"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["r", 2],)"
             R"( "answer": "A"})"),
       ":2: field \"options\": entry 1 is not"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["r", "g"]})"),
       ":2: field \"answer\": missing"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["r", "g"],)"
             R"( "answer": "C"})"),
       ":2: field \"answer\": must be one letter A..B"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["r", "g"],)"
             R"( "answer": "a"})"),
       ":2: field \"answer\": must be one letter"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "options": ["r", "g"],)"
             R"( "answer": "AB"})"),
       ":2: field \"answer\": must be one letter"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "answer": 3})"),
       ":2: field \"answer\": must be a string"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "answer": ""})"),
       ":2: field \"answer\": must not be empty"},
      {line2(R"({"id": "b", "image": "images/0001.png", "question": "q", "answer": "x",)"
             R"( "type": 4})"),
       ":2: field \"type\": must be a string"},
      {line2(R"({"id": "b", "image": "images/missing.png", "question": "q", "answer": "x"})"),
       ":2: field \"image\": \"images/missing.png\": image not found"},
      {line2("{\"id\": \"b\", \"image\": \"images/0001.png\", \"question\": \"\xff\xfe\", "
             "\"answer\": \"x\"}"),
       ":2: not valid JSON"},
      {"\n\n  \n", ": no samples"},
  };
  for (const BadLine& c : cases) {
    for (bool as_tar : {false, true}) {
      const fs::path d = MakeTempDir("bad");
      std::vector<Entry> entries = {{"samples.jsonl", c.jsonl}, {"images/0001.png", "img"}};
      std::string path = (d / "set").string();
      if (as_tar) {
        path = (d / "set.tar.gz").string();
        WriteTar(path, entries, true);
      } else {
        WriteDir(path, entries);
      }
      auto set = LoadSampleSet(path);
      ASSERT_FALSE(set.ok()) << c.expect;
      EXPECT_THAT(std::string(set.status().message()), HasSubstr("samples.jsonl" + c.expect))
          << (as_tar ? "tar" : "dir");
      fs::remove_all(d);
    }
  }
}

TEST_F(SamplesTest, DirectorySymlinkEscapingTheRootIsRejected) {
  WriteDir(tmp_ / "set", SetEntries());
  WriteFile(tmp_ / "secret.png", "secret");
  fs::remove(tmp_ / "set/images/0002.png");
  fs::create_symlink(tmp_ / "secret.png", tmp_ / "set/images/0002.png");
  auto set = LoadSampleSet((tmp_ / "set").string());
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(std::string(set.status().message()), HasSubstr("samples.jsonl:4: field \"image\""));
  EXPECT_THAT(std::string(set.status().message()), HasSubstr("outside"));
  // A symlink that stays inside is fine.
  fs::remove(tmp_ / "set/images/0002.png");
  fs::create_symlink("0001.png", tmp_ / "set/images/0002.png");
  EXPECT_TRUE(LoadSampleSet((tmp_ / "set").string()).ok());
  // A directory where an image should be.
  fs::remove(tmp_ / "set/images/0002.png");
  fs::create_directory(tmp_ / "set/images/0002.png");
  set = LoadSampleSet((tmp_ / "set").string());
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(std::string(set.status().message()), HasSubstr(":4: field \"image\""));
}

TEST_F(SamplesTest, TarEntriesOutsideTheRootAndLinksAreRejectedByName) {
  const std::string jsonl =
      R"({"id": "a", "image": "images/x.png", "question": "q", "answer": "x"})"
      "\n";
  // Each of these makes the whole tar invalid, with the entry named (issue 16: rejected, not
  // skipped), wherever it stands in the archive.
  const std::vector<std::pair<Entry, std::string>> evil = {
      {{"../images/x.png", "evil1"}, "\"../images/x.png\" has a \"..\" component"},
      {{"images/../../x.png", "evil1"}, "\"images/../../x.png\" has a \"..\" component"},
      {{"/images/x.png", "evil2"}, "\"/images/x.png\" has an absolute path"},
      {{"images/x.png", "", Entry::kSymlink, "/etc/hostname"},
       "\"images/x.png\" is a symbolic link"},
      {{"images/x.png", "", Entry::kHardlink, "samples.jsonl"}, "\"images/x.png\" is a hard link"},
      {{"images/null", "", Entry::kCharDevice}, "\"images/null\" is a character device"},
      {{"images/pipe", "", Entry::kFifo}, "\"images/pipe\" is a FIFO"},
  };
  for (const auto& [entry, message] : evil) {
    for (bool first : {true, false}) {
      std::vector<Entry> entries = {{"images", "", Entry::kDir}, {"samples.jsonl", jsonl}};
      entries.insert(first ? entries.begin() : entries.end(), entry);
      WriteTar(tmp_ / "evil.tar", entries, false);
      auto set = LoadSampleSet((tmp_ / "evil.tar").string());
      ASSERT_FALSE(set.ok()) << message;
      EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(set.status().message()), HasSubstr("tar entry " + message));
    }
  }
  // Directories (also "./") are fine.
  WriteTar(tmp_ / "dirs.tar",
           {{"./", "", Entry::kDir},
            {"./images", "", Entry::kDir},
            {"./samples.jsonl", jsonl},
            {"./images/x.png", "png"}},
           false);
  auto set = LoadSampleSet((tmp_ / "dirs.tar").string());
  ASSERT_TRUE(set.ok()) << set.status();

  WriteTar(tmp_ / "dup.tar",
           {{"samples.jsonl", jsonl}, {"images/x.png", "one"}, {"./images/x.png", "two"}}, false);
  set = LoadSampleSet((tmp_ / "dup.tar").string());
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(std::string(set.status().message()),
              HasSubstr("duplicate tar entry \"images/x.png\""));

  WriteTar(tmp_ / "nojsonl.tar", {{"images/x.png", "one"}}, false);
  set = LoadSampleSet((tmp_ / "nojsonl.tar").string());
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);

  WriteTar(tmp_ / "two.tar", {{"a/samples.jsonl", jsonl}, {"b/samples.jsonl", jsonl}}, false);
  set = LoadSampleSet((tmp_ / "two.tar").string());
  ASSERT_FALSE(set.ok());
  EXPECT_THAT(std::string(set.status().message()), HasSubstr("several top-level folders"));
}

// Only gzip, bzip2, xz and zstd are read: an lrzip or lzop stream, which libarchive's other
// filters hand to an external program found on PATH, is just not a tar — and no program runs
// (fake lrzip / lzop first on PATH would leave a marker).
TEST_F(SamplesTest, OnlyTheDocumentedCompressionsAreReadAndNoProgramRuns) {
  const fs::path bin = tmp_ / "fakebin";
  fs::create_directories(bin);
  const fs::path marker = tmp_ / "ran";
  for (const char* prog : {"lrzip", "lzop"}) {
    WriteFile(bin / prog, "#!/bin/sh\ntouch " + marker.string() + "\ncat >/dev/null\n");
    fs::permissions(bin / prog, fs::perms::owner_all);
  }
  const std::string old_path = getenv("PATH") != nullptr ? getenv("PATH") : "";
  setenv("PATH", (bin.string() + ":" + old_path).c_str(), 1);
  for (const std::string& magic :
       {std::string("LRZI\x00\x06", 6), std::string("\x89LZO\x00\r\n\x1a\n", 9)}) {
    WriteFile(tmp_ / "odd.tar", magic + std::string(600, '\0'));
    auto set = LoadSampleSet((tmp_ / "odd.tar").string());
    ASSERT_FALSE(set.ok());
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << set.status();
  }
  setenv("PATH", old_path.c_str(), 1);
  EXPECT_FALSE(fs::exists(marker)) << "an external decompressor ran";
}

TEST_F(SamplesTest, CorruptArchivesAreErrors) {
  WriteTar(tmp_ / "good.tar.gz", SetEntries(), true);
  std::ifstream in(tmp_ / "good.tar.gz", std::ios::binary);
  const std::string gz((std::istreambuf_iterator<char>(in)), {});
  WriteTar(tmp_ / "good.tar", SetEntries(), false);
  std::ifstream in2(tmp_ / "good.tar", std::ios::binary);
  const std::string tar((std::istreambuf_iterator<char>(in2)), {});
  std::string flipped = tar;
  flipped[100] ^= 0x55;  // header checksum no longer matches
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"truncated.tar.gz", gz.substr(0, gz.size() / 2)},
      {"truncated.tar", tar.substr(0, 1000)},
      {"garbage.tar", std::string(4096, '\x13')},
      {"flipped.tar", flipped},
      {"empty.tar", ""},
      {"text.tar", "samples.jsonl\n"},
  };
  for (const auto& [name, data] : bad) {
    WriteFile(tmp_ / name, data);
    auto set = LoadSampleSet((tmp_ / name).string());
    EXPECT_FALSE(set.ok()) << name;
    if (!set.ok()) EXPECT_THAT(std::string(set.status().message()), HasSubstr(name)) << name;
  }
  EXPECT_EQ(LoadSampleSet((tmp_ / "nope").string()).status().code(), absl::StatusCode::kNotFound);
  auto dir_without = LoadSampleSet(tmp_.string());  // a directory without samples.jsonl
  ASSERT_FALSE(dir_without.ok());
  EXPECT_THAT(std::string(dir_without.status().message()),
              HasSubstr("samples.jsonl: no such file"));
}

TEST_F(SamplesTest, Limits) {
  WriteDir(tmp_ / "dir", SetEntries());
  WriteTar(tmp_ / "set.tar.gz", SetEntries(), true);
  for (const std::string path : {(tmp_ / "dir").string(), (tmp_ / "set.tar.gz").string()}) {
    SampleLimits few;
    few.max_samples = 2;
    auto set = LoadSampleSet(path, few);
    ASSERT_FALSE(set.ok());
    EXPECT_EQ(set.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(set.status().message()),
                HasSubstr("samples.jsonl:5: more than the limit of 2"));

    const uint64_t total = sizeof(kJsonl) - 1 + 12 + 14 + 12;
    SampleLimits exact;
    exact.max_total_bytes = total;
    EXPECT_TRUE(LoadSampleSet(path, exact).ok()) << path;
    SampleLimits small;
    small.max_total_bytes = total - 1;  // the last sample's (shared) image no longer fits
    set = LoadSampleSet(path, small);
    ASSERT_FALSE(set.ok()) << path;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kResourceExhausted);
    SampleLimits tiny;
    tiny.max_total_bytes = 10;  // not even samples.jsonl
    set = LoadSampleSet(path, tiny);
    ASSERT_FALSE(set.ok()) << path;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kResourceExhausted);
  }
  // A tar whose unreferenced entries declare more than twice the limit stops before reading it.
  std::vector<Entry> entries = SetEntries();
  entries.push_back({"big.bin", std::string(1 << 20, 'z')});
  WriteTar(tmp_ / "big.tar.gz", entries, true);
  SampleLimits limit;
  limit.max_total_bytes = 100000;
  auto set = LoadSampleSet((tmp_ / "big.tar.gz").string(), limit);
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(NormalizeRelativePathTest, Cases) {
  EXPECT_EQ(*NormalizeRelativePath("images/a.png"), "images/a.png");
  EXPECT_EQ(*NormalizeRelativePath("./images//./a.png"), "images/a.png");
  EXPECT_EQ(*NormalizeRelativePath("a..b/c..png"), "a..b/c..png");
  for (const char* bad : {"", "/a", "..", "a/../b", "a/..", ".", "./", "a\\b"}) {
    EXPECT_FALSE(NormalizeRelativePath(bad).ok()) << bad;
  }
  EXPECT_FALSE(NormalizeRelativePath(std::string_view("a\0b", 3)).ok());
}

TEST(ParseSamplesJsonlTest, NoTrailingNewlineAndCrlf) {
  auto s = ParseSamplesJsonl(
      "{\"id\":\"a\",\"image\":\"i.png\",\"question\":\"q\",\"answer\":\"x\"}\r\n"
      "{\"id\":\"b\",\"image\":\"i.png\",\"question\":\"q\\r\\n\",\"answer\":\"y\"}",
      "f.jsonl", 10);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->size(), 2u);
  EXPECT_EQ((*s)[1].question, "q\r\n");
  EXPECT_EQ((*s)[1].line, 2);
}

}  // namespace
}  // namespace prunesvc::model
