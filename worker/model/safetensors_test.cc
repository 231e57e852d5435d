#include "worker/model/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string MakeTempDir() {
  std::string tmpl = (fs::temp_directory_path() / "safetensors_test_XXXXXX").string();
  char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return tmpl;
}

std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

// A raw safetensors image: 8-byte length (default: the header's size), header text, data.
std::vector<uint8_t> MakeFile(const std::string& header, size_t data_bytes,
                              std::optional<uint64_t> length = std::nullopt) {
  std::vector<uint8_t> out(8);
  uint64_t n = length.value_or(header.size());
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<uint8_t>(i * 7 + 1));
  return out;
}

absl::Status Parse(const std::vector<uint8_t>& file) {
  return ParseSafetensors(absl::MakeConstSpan(file), "mem.safetensors").status();
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

std::string SourceDir() {
  const char* env = getenv("PRUNESVC_SOURCE");
  if (env != nullptr) return std::string(env) + "/worker/model";
  return fs::path(__FILE__).parent_path().string();
}

std::string Python() {
  const char* env = getenv("PRUNESVC_PYTHON");
  return env != nullptr ? env : "/usr/bin/python3";
}

TEST(DTypeTest, Names) {
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(*DTypeFromName("F32"), DType::kF32);
  EXPECT_EQ(*DTypeFromName("I64"), DType::kOther);
  EXPECT_FALSE(DTypeFromName("F17").ok());
  EXPECT_EQ(DTypeNameSize("BOOL"), 1u);
  EXPECT_EQ(DTypeNameSize("F64"), 8u);
  EXPECT_EQ(DTypeNameSize("nope"), 0u);
}

TEST(ConvertTest, HalfSpecialValues) {
  EXPECT_EQ(HalfToFloat(0x3C00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xC000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));                 // smallest normal
  EXPECT_EQ(std::bit_cast<uint32_t>(HalfToFloat(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(HalfToFloat(0x7C00), INFINITY);
  EXPECT_EQ(HalfToFloat(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7E00)));
  EXPECT_EQ(BFloat16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(BFloat16ToFloat(0xC0A0), -5.0f);
}

TEST(ConvertTest, SizeMismatchAndOtherDType) {
  std::vector<uint8_t> b(6);
  std::vector<float> out(2);
  EXPECT_FALSE(ConvertToFloat32(DType::kF16, b, absl::MakeSpan(out)).ok());
  EXPECT_FALSE(ConvertToFloat32(DType::kOther, b, absl::MakeSpan(out)).ok());
  out.resize(3);
  EXPECT_TRUE(ConvertToFloat32(DType::kF16, b, absl::MakeSpan(out)).ok());
}

class WriterTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(WriterTest, RoundTrip) {
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
  std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x0001};
  std::vector<uint16_t> bf16 = {0x3F80, 0xC0A0};
  std::vector<int64_t> i64 = {5, -6};
  auto span = [](const auto& v) {
    return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                     v.size() * sizeof(v[0]));
  };
  std::vector<WriteTensor> tensors = {
      {"z.weight", DType::kF32, "", {2, 3}, span(f32)},
      {"a.half", DType::kF16, "", {3}, span(f16)},
      {"m.bf16", DType::kBF16, "", {1, 2}, span(bf16)},
      {"ids", DType::kOther, "I64", {2}, span(i64)},
      {"empty", DType::kF32, "", {0, 4}, {}},
  };
  const std::string path = dir_ + "/x.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  ASSERT_EQ(f.tensors().size(), 5u);
  std::vector<std::string> names;
  for (const auto& t : f.tensors()) names.push_back(t.name);
  EXPECT_THAT(names, ::testing::ElementsAre("a.half", "empty", "ids", "m.bf16", "z.weight"));
  EXPECT_EQ(f.metadata().at("format"), "pt");

  // Header length is padded to 8; data is contiguous in name order.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  uint64_t offset = 0;
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(t.begin, offset) << t.name;
    offset = t.end;
  }
  EXPECT_EQ(offset, fs::file_size(path) - 8 - n);

  const TensorInfo* w = f.Find("z.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> out(6);
  ASSERT_TRUE(f.ReadAsFloat32(*w, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, f32);

  const TensorInfo* h = f.Find("a.half");
  out.resize(3);
  ASSERT_TRUE(f.ReadAsFloat32(*h, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)}));

  const TensorInfo* b = f.Find("m.bf16");
  out.resize(2);
  ASSERT_TRUE(f.ReadAsFloat32(*b, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, (std::vector<float>{1.0f, -5.0f}));

  const TensorInfo* ids = f.Find("ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(ids->dtype, DType::kOther);
  EXPECT_EQ(ids->dtype_name, "I64");
  auto raw = f.Bytes(*ids);
  ASSERT_EQ(raw.size(), 16u);
  EXPECT_EQ(std::memcmp(raw.data(), i64.data(), 16), 0);
  absl::Status s = f.ReadAsFloat32(*ids, absl::MakeSpan(out));
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr(path), HasSubstr("'ids'"), HasSubstr("I64"),
                                              HasSubstr("not supported")));
  EXPECT_EQ(f.Find("missing"), nullptr);
  EXPECT_EQ(f.Find("empty")->num_elements(), 0u);
}

TEST_F(WriterTest, RejectsBadInput) {
  std::vector<float> v(4);
  absl::Span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(v.data()), 16);
  const std::string path = dir_ + "/bad.safetensors";
  auto write = [&](std::vector<WriteTensor> t) { return WriteSafetensors(path, t, {}); };
  EXPECT_THAT(
      std::string(write({{"a", DType::kF32, "", {4}, bytes}, {"a", DType::kF32, "", {4}, bytes}})
                      .message()),
      HasSubstr("duplicate"));
  EXPECT_THAT(std::string(write({{"a", DType::kF32, "", {3}, bytes}}).message()),
              HasSubstr("needs 12 bytes but 16 given"));
  EXPECT_FALSE(write({{"__metadata__", DType::kF32, "", {4}, bytes}}).ok());
  EXPECT_FALSE(write({{"", DType::kF32, "", {4}, bytes}}).ok());
  EXPECT_FALSE(write({{"a", DType::kF32, "", {-4}, bytes}}).ok());
  EXPECT_FALSE(write({{"a", DType::kOther, "Q8", {16}, bytes}}).ok());
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(WriteSafetensors(dir_ + "/no/such/dir/x.safetensors", {}, {}).ok());
}

TEST_F(WriterTest, OpenErrors) {
  auto missing = SafetensorsFile::Open(dir_ + "/missing.safetensors");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  // Truncated file: shorter than the length prefix, and an empty file.
  WriteFile(dir_ + "/short", {1, 2, 3});
  EXPECT_THAT(std::string(SafetensorsFile::Open(dir_ + "/short").status().message()),
              AllOf(HasSubstr(dir_ + "/short"), HasSubstr("truncated")));
  WriteFile(dir_ + "/empty", {});
  EXPECT_THAT(std::string(SafetensorsFile::Open(dir_ + "/empty").status().message()),
              HasSubstr("truncated"));
  // A valid file cut in the middle of its data: the last tensor's span runs past the end.
  std::vector<float> v(8, 1.0f);
  absl::Span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(v.data()), 32);
  ASSERT_TRUE(WriteSafetensors(dir_ + "/full", {{"t", DType::kF32, "", {8}, bytes}}, {}).ok());
  fs::resize_file(dir_ + "/full", fs::file_size(dir_ + "/full") - 5);
  EXPECT_THAT(std::string(SafetensorsFile::Open(dir_ + "/full").status().message()),
              AllOf(HasSubstr("'t'"), HasSubstr("past the end of the data section")));
  // Cut inside the header.
  ASSERT_TRUE(WriteSafetensors(dir_ + "/full2", {{"t", DType::kF32, "", {8}, bytes}}, {}).ok());
  fs::resize_file(dir_ + "/full2", 20);
  EXPECT_THAT(std::string(SafetensorsFile::Open(dir_ + "/full2").status().message()),
              HasSubstr("runs past the end of the file"));
  EXPECT_FALSE(SafetensorsFile::Open(dir_).ok());  // a directory
}

struct BadCase {
  const char* label;
  std::vector<uint8_t> file;
  std::vector<std::string> expect;  // substrings of the error
};

TEST(ParseTest, MalformedHeaders) {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<BadCase> cases = {
      {"too short", {1, 0, 0}, {"truncated"}},
      {"header length overflow", MakeFile("{}", 0, UINT64_MAX), {"exceeds the limit"}},
      {"header length 2^63", MakeFile("{}", 0, 1ull << 63), {"exceeds the limit"}},
      {"header bigger than file", MakeFile("{}", 0, 100), {"runs past the end of the file"}},
      {"header length 0", MakeFile("", 4), {"too small"}},
      {"bad json", MakeFile("{\"t\":", 8), {"not valid JSON"}},
      {"bad json garbage", MakeFile("\xff\xfe{}", 8), {"not valid JSON"}},
      {"not an object", MakeFile("[1,2]", 8), {"not a JSON object"}},
      {"entry not object", MakeFile(R"({"t":3})", 8), {"'t'", "not a JSON object"}},
      {"missing dtype",
       MakeFile(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", 8),
       {"'t'", "missing \"dtype\""}},
      {"missing shape",
       MakeFile(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", 8),
       {"missing \"shape\""}},
      {"missing offsets",
       MakeFile(R"({"t":{"dtype":"F32","shape":[2]}})", 8),
       {"missing \"data_offsets\""}},
      {"dtype not string",
       MakeFile(R"({"t":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8),
       {"not a string"}},
      {"unknown dtype",
       MakeFile(R"({"t":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", 8),
       {"'t'", "unknown dtype 'F17'"}},
      {"negative dim",
       MakeFile(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       {"non-negative integers"}},
      {"float dim",
       MakeFile(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
       {"non-negative integers"}},
      {"shape not array",
       MakeFile(R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
       {"\"shape\" is not an array"}},
      {"shape x dtype != span",
       MakeFile(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       {"'t'", "shape [3]", "12 bytes", "span 8 bytes"}},
      {"shape x dtype != span (bf16)",
       MakeFile(R"({"t":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", 8),
       {"shape [2, 2]"}},
      {"shape product overflow",
       MakeFile(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
                8),
       {"overflow"}},
      {"bytes overflow",
       MakeFile(R"({"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
       {"overflow"}},
      {"span out of range",
       MakeFile(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       {"'t'", "past the end of the data section (8 bytes)"}},
      {"begin > end",
       MakeFile(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
       {"begin 8 > end 0"}},
      {"offsets wrong arity",
       MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8),
       {"[begin, end]"}},
      {"offsets negative",
       MakeFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       {"[begin, end]"}},
      {"overlap",
       MakeFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                12),
       {"'b'", "overlaps tensor 'a'"}},
      {"same span twice",
       MakeFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                8),
       {"overlaps"}},
      {"duplicate key", MakeFile("{" + ok_entry + "," + ok_entry + "}", 8), {"duplicate key 't'"}},
      {"too deep",
       MakeFile(R"({"t":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", 8),
       {"nested too deeply"}},
      {"very deep",
       MakeFile("{\"t\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0),
       {"nested too deeply"}},
      {"metadata not object", MakeFile(R"({"__metadata__":[1]})", 0), {"__metadata__"}},
      {"metadata value not string",
       MakeFile(R"({"__metadata__":{"a":1}})", 0),
       {"__metadata__ value for 'a' is not a string"}},
      {"empty name",
       MakeFile(R"({"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
       {"empty tensor name"}},
  };
  for (const BadCase& c : cases) {
    absl::Status s = Parse(c.file);
    ASSERT_FALSE(s.ok()) << c.label;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.label;
    EXPECT_THAT(std::string(s.message()), HasSubstr("mem.safetensors")) << c.label;
    for (const std::string& e : c.expect) {
      EXPECT_THAT(std::string(s.message()), HasSubstr(e)) << c.label;
    }
  }
}

TEST(ParseTest, AcceptsEdgeCases) {
  // Empty header object, scalar and zero-size tensors, gaps and trailing bytes, padding.
  EXPECT_TRUE(Parse(MakeFile("{}", 0)).ok());
  EXPECT_TRUE(Parse(MakeFile("{}      ", 0)).ok());
  auto h = ParseSafetensors(MakeFile(R"({"s":{"dtype":"F32","shape":[],"data_offsets":[4,8]},)"
                                     R"("z":{"dtype":"F16","shape":[0,3],"data_offsets":[6,6]},)"
                                     R"("__metadata__":{"format":"pt"}})",
                                     12),
                            "mem");
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "s");
  EXPECT_EQ(h->tensors[0].num_elements(), 1u);
  EXPECT_EQ(h->tensors[1].num_elements(), 0u);
  EXPECT_EQ(h->data_size, 12u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  // Unsupported-but-known dtypes parse.
  EXPECT_TRUE(
      Parse(MakeFile(R"({"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", 3)).ok());
}

// A few hundred randomly corrupted files: the parser must return (OK or error) without crashing,
// and anything it accepts must have every span inside the file.
TEST(ParseTest, RandomCorruptionNeverCrashes) {
  std::vector<float> v(6, 1.0f);
  std::vector<uint16_t> h(5, 0x3C00);
  std::string dir = MakeTempDir();
  std::vector<WriteTensor> t = {
      {"layer.0.weight",
       DType::kF32,
       "",
       {2, 3},
       absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), 24)},
      {"layer.1.bias",
       DType::kF16,
       "",
       {5},
       absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(h.data()), 10)}};
  ASSERT_TRUE(WriteSafetensors(dir + "/v", t, {{"format", "pt"}}).ok());
  std::ifstream in(dir + "/v", std::ios::binary);
  std::vector<uint8_t> valid((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  fs::remove_all(dir);
  ASSERT_TRUE(Parse(valid).ok());
  uint64_t n;
  std::memcpy(&n, valid.data(), 8);

  std::mt19937 rng(12345);
  int errors = 0, oks = 0;
  const char interesting[] = "{}[],:\"0123456789-.eE \\";
  for (int iter = 0; iter < 600; ++iter) {
    std::vector<uint8_t> f = valid;
    const int kind = iter % 4;
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      size_t pos = 8 + rng() % n;  // inside the header
      if (kind == 0) {
        f[pos] = static_cast<uint8_t>(rng());
      } else if (kind == 1) {
        f[pos] = static_cast<uint8_t>(interesting[rng() % (sizeof(interesting) - 1)]);
      } else if (kind == 2) {
        f.resize(rng() % f.size());
      } else {
        uint64_t len = (rng() % 3 == 0) ? rng() : n + (rng() % 64) - 32;
        if (f.size() >= 8) std::memcpy(f.data(), &len, 8);
      }
      if (f.size() <= 8 + pos) break;
    }
    auto r = ParseSafetensors(absl::MakeConstSpan(f), "fuzz");
    if (!r.ok()) {
      ++errors;
      EXPECT_FALSE(r.status().message().empty());
      continue;
    }
    ++oks;
    for (const TensorInfo& ti : r->tensors) {
      ASSERT_LE(ti.begin, ti.end);
      ASSERT_LE(r->data_offset + ti.end, f.size());
      ASSERT_EQ(ti.num_elements() * DTypeNameSize(ti.dtype_name), ti.num_bytes());
    }
  }
  EXPECT_GT(errors, 300);  // the corruption really exercised the error paths
  SCOPED_TRACE(::testing::Message() << "ok=" << oks << " errors=" << errors);
}

// Files written by hand in Python (struct + json + numpy bytes of torch tensors), including F16
// and BF16 with an odd header length so every tensor is misaligned.
TEST(IndependentWriterTest, ReadsPythonWrittenFile) {
  std::string dir = MakeTempDir();
  const std::string path = dir + "/py.safetensors";
  const std::string cmd = Python() + " " + SourceDir() + "/safetensors_test_ref.py write " + path;
  ASSERT_EQ(system(cmd.c_str()), 0) << cmd;
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.metadata().at("writer"), "python-by-hand");
  EXPECT_EQ(f.tensors().size(), 8u);

  auto read = [&](const std::string& name) {
    const TensorInfo* t = f.Find(name);
    EXPECT_NE(t, nullptr) << name;
    std::vector<float> out(t ? t->num_elements() : 0);
    if (t) EXPECT_TRUE(f.ReadAsFloat32(*t, absl::MakeSpan(out)).ok()) << name;
    return out;
  };
  for (const char* name : {"b.f16", "c.bf16"}) {
    std::vector<float> got = read(name);
    std::vector<float> want = read(std::string(name) + ".expected");
    ASSERT_EQ(got.size(), want.size());
    ASSERT_FALSE(got.empty());
    int compared = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      // Bit-exact: the conversions are exact (max |Δ| = 0).
      EXPECT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << name << "[" << i << "] " << got[i] << " vs " << want[i];
      ++compared;
    }
    EXPECT_EQ(compared, static_cast<int>(want.size()));
  }
  EXPECT_EQ(f.Find("b.f16")->shape, (std::vector<int64_t>{2, 13}));
  EXPECT_EQ(read("a.f32").size(), 15u);
  EXPECT_EQ(read("e.scalar"), std::vector<float>{2.5f});
  EXPECT_TRUE(read("f.empty").empty());
  const TensorInfo* ids = f.Find("d.i64");
  ASSERT_NE(ids, nullptr);
  std::vector<int64_t> i64(4);
  std::memcpy(i64.data(), f.Bytes(*ids).data(), 32);
  EXPECT_EQ(i64, (std::vector<int64_t>{1, -2, 3, int64_t{1} << 40}));
  fs::remove_all(dir);
}

// The reverse direction: the Python script checks a file our writer produced.
TEST(IndependentWriterTest, PythonReadsOurFile) {
  std::string dir = MakeTempDir();
  const std::string path = dir + "/ours.safetensors";
  std::vector<float> w = {0, 1, 2, 3, 4, 5};
  std::vector<uint16_t> x = {0x3800, 0xBC00, 0x7BFF};  // 0.5, -1, 65504
  std::vector<uint16_t> y = {0x3F80, 0xC000};          // 1, -2
  std::vector<int64_t> z = {7, -9};
  auto span = [](const auto& v) {
    return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                     v.size() * sizeof(v[0]));
  };
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"z.i64", DType::kOther, "I64", {2}, span(z)},
                                {"y.bf16", DType::kBF16, "", {2}, span(y)},
                                {"w.f32", DType::kF32, "", {2, 3}, span(w)},
                                {"x.f16", DType::kF16, "", {3}, span(x)}},
                               {{"format", "pt"}, {"k", "v"}})
                  .ok());
  const std::string cmd = Python() + " " + SourceDir() + "/safetensors_test_ref.py verify " + path;
  EXPECT_EQ(system(cmd.c_str()), 0) << cmd;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace prunesvc::model
