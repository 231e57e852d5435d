#include "worker/model/checkpoint.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using json = nlohmann::json;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "checkpoint_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes raw tensors (fp32 values converted by torch to `dtype`) under the given names.
  void WriteRaw(const std::string& file, const std::map<std::string, at::Tensor>& tensors,
                at::ScalarType dtype = at::kFloat) {
    std::vector<at::Tensor> keep;
    std::vector<WriteTensor> out;
    for (const auto& [name, t] : tensors) {
      at::Tensor c = t.to(dtype).contiguous();
      keep.push_back(c);
      WriteTensor w;
      w.name = name;
      w.dtype = dtype == at::kFloat      ? DType::kF32
                : dtype == at::kHalf     ? DType::kF16
                : dtype == at::kBFloat16 ? DType::kBF16
                                         : DType::kOther;
      if (dtype == at::kLong) w.dtype_name = "I64";
      w.shape.assign(c.sizes().begin(), c.sizes().end());
      w.data = absl::Span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()),
                                         c.numel() * c.element_size());
      out.push_back(w);
    }
    ASSERT_TRUE(WriteSafetensors(dir_ + "/" + file, out, {{"format", "pt"}}).ok());
  }

  void WriteText(const std::string& file, const std::string& text) {
    std::ofstream(dir_ + "/" + file) << text;
  }

  std::string dir_;
};

// A small LLaVA-shaped state dict with canonical (legacy) names.
std::map<std::string, at::Tensor> SmallModel() {
  at::manual_seed(3);
  std::map<std::string, at::Tensor> m;
  m["vision_tower.vision_model.embeddings.class_embedding"] = at::randn({8});
  m["vision_tower.vision_model.embeddings.patch_embedding.weight"] = at::randn({8, 3, 4, 4});
  m["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"] = at::randn({8, 8});
  m["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.bias"] = at::randn({8});
  m["multi_modal_projector.linear_1.weight"] = at::randn({16, 8});
  m["multi_modal_projector.linear_1.bias"] = at::randn({16});
  m["language_model.model.embed_tokens.weight"] = at::randn({40, 16});
  m["language_model.model.layers.0.mlp.gate_proj.weight"] = at::randn({24, 16});
  m["language_model.model.layers.0.input_layernorm.weight"] = at::randn({16});
  m["language_model.model.norm.weight"] = at::randn({16});
  m["language_model.lm_head.weight"] = at::randn({40, 16});
  return m;
}

void ExpectSameTensors(const std::map<std::string, at::Tensor>& got,
                       const std::map<std::string, at::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.scalar_type(), at::kFloat) << name;
    EXPECT_TRUE(it->second.is_contiguous()) << name;
    EXPECT_EQ(it->second.sizes(), w.sizes()) << name;
    // Bit-exact (max |Δ| = 0): conversions on both sides are exact / identically rounded.
    EXPECT_TRUE(at::equal(it->second, w)) << name;
  }
}

TEST(WeightNameTest, CanonicalAndInverse) {
  const std::pair<const char*, const char*> pairs[] = {
      {"model.language_model.layers.3.mlp.up_proj.weight",
       "language_model.model.layers.3.mlp.up_proj.weight"},
      {"model.language_model.embed_tokens.weight", "language_model.model.embed_tokens.weight"},
      {"lm_head.weight", "language_model.lm_head.weight"},
      {"model.vision_tower.vision_model.pre_layrnorm.bias",
       "vision_tower.vision_model.pre_layrnorm.bias"},
      {"model.multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.weight"},
  };
  for (const auto& [modern, legacy] : pairs) {
    EXPECT_EQ(CanonicalWeightName(modern), legacy);
    EXPECT_EQ(CanonicalWeightName(legacy), legacy);
    EXPECT_EQ(LayoutWeightName(legacy, WeightLayout::kModern), modern);
    EXPECT_EQ(LayoutWeightName(legacy, WeightLayout::kLegacy), legacy);
    EXPECT_EQ(LayoutWeightName(modern, WeightLayout::kLegacy), legacy);
  }
  EXPECT_EQ(CanonicalWeightName("something.else"), "something.else");
  EXPECT_EQ(LayoutWeightName("something.else", WeightLayout::kModern), "something.else");
  // Prefix matching is on whole components.
  EXPECT_EQ(CanonicalWeightName("model.language_modelx"), "model.language_modelx");
}

TEST_F(CheckpointTest, LoadsLegacyNamesF16) {
  auto model = SmallModel();
  WriteRaw("model.safetensors", model, at::kHalf);
  auto ckpt = LoadCheckpoint(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->source_dtype, DType::kF16);
  EXPECT_EQ(ckpt->layout, WeightLayout::kLegacy);
  EXPECT_EQ(ckpt->metadata.at("format"), "pt");
  std::map<std::string, at::Tensor> want;
  for (const auto& [n, t] : model) want[n] = t.to(at::kHalf).to(at::kFloat);
  ExpectSameTensors(ckpt->tensors, want);
}

TEST_F(CheckpointTest, LoadsModernNamesBF16) {
  auto model = SmallModel();
  std::map<std::string, at::Tensor> modern;
  for (const auto& [n, t] : model) modern[LayoutWeightName(n, WeightLayout::kModern)] = t;
  ASSERT_TRUE(modern.count("lm_head.weight"));
  WriteRaw("model.safetensors", modern, at::kBFloat16);
  auto ckpt = LoadCheckpoint(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->source_dtype, DType::kBF16);
  EXPECT_EQ(ckpt->layout, WeightLayout::kModern);
  std::map<std::string, at::Tensor> want;
  for (const auto& [n, t] : model) want[n] = t.to(at::kBFloat16).to(at::kFloat);
  ExpectSameTensors(ckpt->tensors, want);  // canonical names
}

TEST_F(CheckpointTest, ShardedRoundTripInBothLayouts) {
  auto model = SmallModel();
  for (WeightLayout layout : {WeightLayout::kLegacy, WeightLayout::kModern}) {
    SCOPED_TRACE(std::string(WeightLayoutName(layout)));
    // ~8.5 KB of fp32 in total; 3 KB shards → several shards.
    ASSERT_TRUE(SaveCheckpoint(dir_, model, DType::kF32, 3000, layout, {{"source", "test"}}).ok());
    ASSERT_TRUE(fs::exists(dir_ + "/model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(dir_ + "/model.safetensors"));
    std::ifstream in(dir_ + "/model.safetensors.index.json");
    json index = json::parse(in);
    uint64_t total = 0;
    for (const auto& [n, t] : model) total += t.numel() * 4;
    EXPECT_EQ(index["metadata"]["total_size"], total);
    std::set<std::string> shard_files;
    for (const auto& [name, file] : index["weight_map"].items()) {
      shard_files.insert(file.get<std::string>());
      EXPECT_EQ(name, LayoutWeightName(CanonicalWeightName(name), layout));
    }
    EXPECT_EQ(index["weight_map"].size(), model.size());
    ASSERT_GE(shard_files.size(), 3u);
    const size_t n = shard_files.size();
    for (size_t i = 1; i <= n; ++i) {
      char want[64];
      snprintf(want, sizeof(want), "model-%05zu-of-%05zu.safetensors", i, n);
      EXPECT_TRUE(shard_files.count(want)) << want;
      auto shard = SafetensorsFile::Open(dir_ + "/" + want);
      ASSERT_TRUE(shard.ok()) << shard.status();
      EXPECT_EQ((*shard)->metadata().at("format"), "pt");
      EXPECT_EQ((*shard)->metadata().at("source"), "test");
      uint64_t bytes = 0;
      for (const auto& t : (*shard)->tensors()) bytes += t.num_bytes();
      // A shard exceeds the limit only when it holds one oversized tensor.
      if ((*shard)->tensors().size() > 1) EXPECT_LE(bytes, 3000u);
    }
    auto ckpt = LoadCheckpoint(dir_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ(ckpt->layout, layout);
    EXPECT_EQ(ckpt->source_dtype, DType::kF32);
    ExpectSameTensors(ckpt->tensors, model);
  }
  // Re-saving as one file removes the shards and the index.
  ASSERT_TRUE(SaveCheckpoint(dir_, model, DType::kF16, 0).ok());
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_)) files.push_back(e.path().filename());
  EXPECT_THAT(files, ::testing::ElementsAre("model.safetensors"));
  auto ckpt = LoadCheckpoint(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->source_dtype, DType::kF16);
  std::map<std::string, at::Tensor> want;
  for (const auto& [n, t] : model) want[n] = t.to(at::kHalf).to(at::kFloat);
  ExpectSameTensors(ckpt->tensors, want);
}

TEST_F(CheckpointTest, SaveBF16AndRejectsBadInput) {
  auto model = SmallModel();
  ASSERT_TRUE(SaveCheckpoint(dir_, model, DType::kBF16, 1 << 30).ok());  // fits: one file
  EXPECT_TRUE(fs::exists(dir_ + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ + "/model.safetensors.index.json"));
  auto ckpt = LoadCheckpoint(dir_);
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ(ckpt->source_dtype, DType::kBF16);
  EXPECT_TRUE(
      at::equal(ckpt->tensors.at("language_model.lm_head.weight"),
                model.at("language_model.lm_head.weight").to(at::kBFloat16).to(at::kFloat)));

  EXPECT_FALSE(SaveCheckpoint(dir_, model, DType::kOther, 0).ok());
  EXPECT_FALSE(SaveCheckpoint(dir_, {}, DType::kF32, 0).ok());
  EXPECT_FALSE(SaveCheckpoint(dir_, {{"x", at::arange(3)}}, DType::kF32, 0).ok());  // int64
  // Canonical and modern spelling of the same weight collide when written.
  EXPECT_THAT(std::string(SaveCheckpoint(dir_,
                                         {{"lm_head.weight", at::ones({2})},
                                          {"language_model.lm_head.weight", at::ones({2})}},
                                         DType::kF32, 0)
                              .message()),
              HasSubstr("two tensors map to the name"));
}

TEST_F(CheckpointTest, DuplicateAfterCanonicalisation) {
  WriteRaw("model.safetensors",
           {{"lm_head.weight", at::ones({2})}, {"language_model.lm_head.weight", at::ones({2})}});
  auto ckpt = LoadCheckpoint(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(std::string(ckpt.status().message()),
              AllOf(HasSubstr("duplicates"), HasSubstr("language_model.lm_head.weight")));
}

TEST_F(CheckpointTest, MixedLayoutsRejected) {
  WriteRaw("model.safetensors", {{"lm_head.weight", at::ones({2})},
                                 {"language_model.model.norm.weight", at::ones({2})}});
  auto ckpt = LoadCheckpoint(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("mixes weight-name layouts"));
}

TEST_F(CheckpointTest, DTypeRules) {
  // Mixed float dtypes: the one holding most parameters is remembered.
  {
    std::vector<at::Tensor> keep = {at::ones({100}).to(at::kHalf), at::ones({3})};
    std::vector<WriteTensor> w = {
        {"big",
         DType::kF16,
         "",
         {100},
         absl::Span<const uint8_t>(static_cast<const uint8_t*>(keep[0].data_ptr()), 200)},
        {"small",
         DType::kF32,
         "",
         {3},
         absl::Span<const uint8_t>(static_cast<const uint8_t*>(keep[1].data_ptr()), 12)}};
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model.safetensors", w, {}).ok());
    auto ckpt = LoadCheckpoint(dir_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_EQ(ckpt->source_dtype, DType::kF16);
    EXPECT_EQ(ckpt->tensors.at("small").scalar_type(), at::kFloat);
    EXPECT_EQ(ckpt->tensors.at("big").scalar_type(), at::kFloat);
  }
  // Non-float weight → error naming file, tensor and dtype; position_ids buffers are skipped.
  WriteRaw("model.safetensors", {{"w", at::arange(4)}}, at::kLong);
  auto bad = LoadCheckpoint(dir_);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("'w'"), HasSubstr("I64")));
  WriteRaw("model.safetensors",
           {{"vision_tower.vision_model.embeddings.position_ids", at::arange(4)}}, at::kLong);
  EXPECT_THAT(std::string(LoadCheckpoint(dir_).status().message()), HasSubstr("no tensors"));
}

class ShardedErrorTest : public CheckpointTest {
 protected:
  void SetUp() override {
    CheckpointTest::SetUp();
    WriteRaw("model-00001-of-00002.safetensors",
             {{"language_model.model.norm.weight", at::ones({4})}});
    WriteRaw("model-00002-of-00002.safetensors",
             {{"language_model.lm_head.weight", at::ones({2, 4})}});
  }
  void WriteIndex(const json& weight_map) {
    WriteText("model.safetensors.index.json",
              json({{"metadata", {{"total_size", 48}}}, {"weight_map", weight_map}}).dump());
  }
  std::string Error() {
    auto c = LoadCheckpoint(dir_);
    EXPECT_FALSE(c.ok());
    return std::string(c.status().message());
  }
};

TEST_F(ShardedErrorTest, ValidIndexLoads) {
  WriteIndex({{"language_model.model.norm.weight", "model-00001-of-00002.safetensors"},
              {"language_model.lm_head.weight", "model-00002-of-00002.safetensors"}});
  auto c = LoadCheckpoint(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tensors.size(), 2u);
}

TEST_F(ShardedErrorTest, MissingShard) {
  WriteIndex({{"language_model.model.norm.weight", "model-00001-of-00002.safetensors"},
              {"language_model.lm_head.weight", "model-00003-of-00002.safetensors"}});
  auto c = LoadCheckpoint(dir_);
  EXPECT_TRUE(absl::IsNotFound(c.status()));
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr("model.safetensors.index.json"),
                    HasSubstr("'model-00003-of-00002.safetensors'"), HasSubstr("does not exist")));
}

TEST_F(ShardedErrorTest, MissingTensorInShard) {
  WriteIndex({{"language_model.model.norm.weight", "model-00001-of-00002.safetensors"},
              {"language_model.model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
              {"language_model.lm_head.weight", "model-00002-of-00002.safetensors"}});
  EXPECT_THAT(Error(), AllOf(HasSubstr("model-00001-of-00002.safetensors"),
                             HasSubstr("'language_model.model.embed_tokens.weight' is missing")));
}

TEST_F(ShardedErrorTest, UnlistedTensorInShard) {
  WriteIndex({{"language_model.model.norm.weight", "model-00001-of-00002.safetensors"}});
  WriteRaw("model-00001-of-00002.safetensors",
           {{"language_model.model.norm.weight", at::ones({4})}, {"extra", at::ones({1})}});
  EXPECT_THAT(Error(), HasSubstr("'extra' is not listed"));
}

TEST_F(ShardedErrorTest, DuplicateAcrossShards) {
  WriteRaw("model-00002-of-00002.safetensors",
           {{"language_model.lm_head.weight", at::ones({2, 4})},
            {"language_model.model.norm.weight", at::ones({4})}});
  WriteIndex({{"language_model.model.norm.weight", "model-00001-of-00002.safetensors"},
              {"language_model.lm_head.weight", "model-00002-of-00002.safetensors"}});
  EXPECT_THAT(Error(), AllOf(HasSubstr("'language_model.model.norm.weight' also appears here"),
                             HasSubstr("duplicate")));
}

TEST_F(ShardedErrorTest, BadIndexFiles) {
  WriteText("model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_THAT(Error(), HasSubstr("not valid JSON"));
  WriteText("model.safetensors.index.json", "{\"metadata\": {}}");
  EXPECT_THAT(Error(), HasSubstr("weight_map: missing"));
  WriteIndex(json::object());
  EXPECT_THAT(Error(), HasSubstr("weight_map is empty"));
  WriteIndex({{"language_model.model.norm.weight", "../model-00001-of-00002.safetensors"}});
  EXPECT_THAT(Error(), HasSubstr("expected a shard file name in the model directory"));
  WriteIndex({{"language_model.model.norm.weight", 3}});
  EXPECT_THAT(Error(), HasSubstr("weight_map[\"language_model.model.norm.weight\"]"));
  // A corrupt shard reports the shard's own path.
  WriteIndex({{"language_model.model.norm.weight", "model-00001-of-00002.safetensors"},
              {"language_model.lm_head.weight", "model-00002-of-00002.safetensors"}});
  fs::resize_file(dir_ + "/model-00002-of-00002.safetensors", 30);
  EXPECT_THAT(Error(), HasSubstr("model-00002-of-00002.safetensors: header length"));
}

TEST_F(CheckpointTest, EmptyDirectory) {
  auto c = LoadCheckpoint(dir_);
  EXPECT_TRUE(absl::IsNotFound(c.status()));
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
}

}  // namespace
}  // namespace prunesvc::model
