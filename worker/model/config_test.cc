#include "worker/model/config.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace prunesvc::model {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

// llava-hf/llava-1.5-7b-hf's config.json as transformers 4.36 wrote it: text_config relies on
// LlamaConfig defaults for its sizes, the padded vocabulary is also at the top level.
constexpr char k7BConfig[] = R"({
  "architectures": ["LlavaForConditionalGeneration"],
  "ignore_index": -100,
  "image_token_index": 32000,
  "model_type": "llava",
  "pad_token_id": 32001,
  "projector_hidden_act": "gelu",
  "text_config": {
    "_name_or_path": "lmsys/vicuna-7b-v1.5",
    "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "rms_norm_eps": 1e-05,
    "torch_dtype": "float16",
    "vocab_size": 32064
  },
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.36.0.dev0",
  "vision_config": {
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000
  },
  "vision_feature_layer": -2,
  "vision_feature_select_strategy": "default",
  "vocab_size": 32064
})";

absl::StatusOr<LlavaConfig> ParseJson(const json& j) {
  return ParseLlavaConfig(j.dump(), "config.json");
}

json Base() { return json::parse(k7BConfig); }

// Expects `j` to be rejected with a message containing every one of `parts`.
void ExpectError(const json& j, std::vector<std::string> parts) {
  auto c = ParseJson(j);
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("config.json: "));
  for (const std::string& p : parts) {
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(p)) << j.dump();
  }
}

TEST(ConfigTest, Llava15_7B) {
  auto c = ParseLlavaConfig(k7BConfig, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.hidden_size, 1024);
  EXPECT_EQ(c->vision.intermediate_size, 4096);
  EXPECT_EQ(c->vision.num_attention_heads, 16);
  EXPECT_EQ(c->vision.num_hidden_layers, 24);
  EXPECT_EQ(c->vision.patch_size, 14);
  EXPECT_EQ(c->vision.image_size, 336);
  EXPECT_EQ(c->vision.num_channels, 3);
  EXPECT_EQ(c->vision.hidden_act, "quick_gelu");
  EXPECT_DOUBLE_EQ(c->vision.layer_norm_eps, 1e-5);
  EXPECT_EQ(c->vision.num_patches(), 576);
  EXPECT_EQ(c->vision.head_dim(), 64);

  EXPECT_EQ(c->text.hidden_size, 4096);
  EXPECT_EQ(c->text.intermediate_size, 11008);
  EXPECT_EQ(c->text.num_hidden_layers, 32);
  EXPECT_EQ(c->text.num_attention_heads, 32);
  EXPECT_EQ(c->text.num_key_value_heads, 32);
  EXPECT_EQ(c->text.head_dim, 128);
  EXPECT_EQ(c->text.vocab_size, 32064);
  EXPECT_EQ(c->text.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c->text.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->text.rope_theta, 10000.0);
  EXPECT_EQ(c->text.hidden_act, "silu");
  EXPECT_FALSE(c->text.attention_bias);
  EXPECT_FALSE(c->text.mlp_bias);
  EXPECT_EQ(c->text.bos_token_id, 1);
  EXPECT_EQ(c->text.eos_token_id, 2);
  EXPECT_FALSE(c->text.pad_token_id.has_value());
  EXPECT_EQ(c->text.IntermediateSize(5), 11008);
  EXPECT_EQ(c->text.NumHeads(31), 32);

  EXPECT_EQ(c->image_token_index, 32000);
  EXPECT_EQ(c->pad_token_id, 32001);
  EXPECT_EQ(c->vision_feature_layer, -2);
  EXPECT_EQ(c->NumVisionLayersToRun(), 23);
  EXPECT_EQ(c->vision_feature_select_strategy, "default");
  EXPECT_EQ(c->projector_hidden_act, "gelu");
  EXPECT_TRUE(c->multimodal_projector_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->image_seq_length, 576);
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_EQ(c->raw["transformers_version"], "4.36.0.dev0");
}

TEST(ConfigTest, DefaultsWhenSubConfigsAbsent) {
  // LlavaConfig(): CLIP-L/14-336 vision tower, LlamaConfig() text model.
  auto c = ParseJson({{"model_type", "llava"}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.hidden_size, 1024);
  EXPECT_EQ(c->vision.num_hidden_layers, 24);
  EXPECT_EQ(c->vision.patch_size, 14);
  EXPECT_EQ(c->vision.image_size, 336);
  EXPECT_EQ(c->text.vocab_size, 32000);
  EXPECT_EQ(c->text.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c->text.rms_norm_eps, 1e-6);
  EXPECT_EQ(c->text.num_key_value_heads, 32);
  EXPECT_EQ(c->text.head_dim, 128);
  EXPECT_EQ(c->image_seq_length, 576);
  EXPECT_EQ(c->image_token_index, 32000);  // == vocab_size: allowed, as in HF
  EXPECT_FALSE(c->pad_token_id.has_value());
  EXPECT_EQ(c->NumVisionLayersToRun(), 23);
  EXPECT_EQ(c->torch_dtype, "");
}

TEST(ConfigTest, PresentVisionConfigUsesClipDefaults) {
  // A vision_config object gets CLIPVisionConfig's own ViT-B/32 defaults for missing keys.
  auto c = ParseJson({{"model_type", "llava"}, {"vision_config", json::object()}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.hidden_size, 768);
  EXPECT_EQ(c->vision.intermediate_size, 3072);
  EXPECT_EQ(c->vision.num_attention_heads, 12);
  EXPECT_EQ(c->vision.num_hidden_layers, 12);
  EXPECT_EQ(c->vision.patch_size, 32);
  EXPECT_EQ(c->vision.image_size, 224);
  EXPECT_EQ(c->vision.num_patches(), 49);
  EXPECT_EQ(c->image_seq_length, 49);
  EXPECT_EQ(c->NumVisionLayersToRun(), 11);
  // And text_config without model_type is llama.
  auto t = ParseJson({{"model_type", "llava"}, {"text_config", {{"hidden_size", 64}}}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->text.hidden_size, 64);
  EXPECT_EQ(t->text.head_dim, 2);
}

TEST(ConfigTest, SmallGqaConfig) {
  json j = {{"model_type", "llava"},
            {"image_token_index", 500},
            {"vision_feature_select_strategy", "full"},
            {"vision_feature_layer", 1},
            {"image_seq_length", 17},
            {"tie_word_embeddings", false},
            {"vision_config",
             {{"hidden_size", 32},
              {"intermediate_size", 64},
              {"num_attention_heads", 4},
              {"num_hidden_layers", 3},
              {"patch_size", 8},
              {"image_size", 32},
              {"hidden_act", "gelu"}}},
            {"text_config",
             {{"hidden_size", 64},
              {"intermediate_size", 96},
              {"num_attention_heads", 8},
              {"num_key_value_heads", 2},
              {"num_hidden_layers", 2},
              {"vocab_size", 512},
              {"rope_theta", 500000.0},
              {"rms_norm_eps", 1e-5},
              {"tie_word_embeddings", true},
              {"eos_token_id", {2, 7}},
              {"pad_token_id", nullptr},
              {"head_dim", nullptr},
              {"rope_scaling", nullptr}}}};
  auto c = ParseJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.num_attention_heads, 8);
  EXPECT_EQ(c->text.num_key_value_heads, 2);
  EXPECT_EQ(c->text.head_dim, 8);
  EXPECT_DOUBLE_EQ(c->text.rope_theta, 500000.0);
  EXPECT_EQ(c->text.eos_token_id, 2);
  EXPECT_TRUE(c->tie_word_embeddings);  // from text_config, as HF forwards it
  EXPECT_EQ(c->vision.num_patches(), 16);
  EXPECT_EQ(c->image_seq_length, 17);  // + CLS for "full"
  EXPECT_EQ(c->NumVisionLayersToRun(), 1);
  EXPECT_EQ(c->vision.hidden_act, "gelu");

  // Explicit head_dim, newer image_token_id / dtype / rope_parameters spellings.
  j["text_config"]["head_dim"] = 16;
  j["image_token_id"] = 500;
  j["dtype"] = "bfloat16";
  j["text_config"]["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000.0}};
  c = ParseJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.head_dim, 16);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_DOUBLE_EQ(c->text.rope_theta, 1000.0);
}

TEST(ConfigTest, PerLayerSizes) {
  json j = Base();
  j["text_config"]["num_hidden_layers"] = 3;
  j["text_config"]["prunesvc_intermediate_sizes"] = {11008, 5000, 0};
  j["text_config"]["prunesvc_num_heads"] = {32, 16, 8};
  auto c = ParseJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.IntermediateSize(1), 5000);
  EXPECT_EQ(c->text.IntermediateSize(2), 0);
  EXPECT_EQ(c->text.NumHeads(1), 16);
  EXPECT_EQ(c->text.NumHeads(99), 32);  // out of range → uniform value

  j["text_config"]["prunesvc_num_heads"] = {32, 16};
  ExpectError(j, {"text_config.prunesvc_num_heads", "has 2 entries but num_hidden_layers is 3"});
  j["text_config"]["prunesvc_num_heads"] = {32, 64, 1};
  ExpectError(j, {"text_config.prunesvc_num_heads[1]", "exceeds num_attention_heads"});
  j["text_config"]["prunesvc_num_heads"] = {32, 1, 1};
  j["text_config"]["prunesvc_intermediate_sizes"] = {1, -1, 1};
  ExpectError(j, {"text_config.prunesvc_intermediate_sizes[1]", "non-negative integer"});
  j["text_config"]["prunesvc_intermediate_sizes"] = "big";
  ExpectError(j, {"text_config.prunesvc_intermediate_sizes", "array of integers"});
}

TEST(ConfigTest, RejectsUnsupportedModels) {
  json j = Base();
  j["model_type"] = "llava_next";
  ExpectError(j, {"model_type", "anyres/llava-next is not supported"});
  j["model_type"] = "llava_next_video";
  ExpectError(j, {"anyres/llava-next is not supported"});
  j["model_type"] = "llava_onevision";
  ExpectError(j, {"anyres/llava-next is not supported"});
  j["model_type"] = "blip-2";
  ExpectError(j, {"model_type: 'blip-2' is not supported"});
  j.erase("model_type");
  ExpectError(j, {"model_type: missing"});
  j = Base();
  j["image_grid_pinpoints"] = {{336, 672}};
  ExpectError(j, {"image_grid_pinpoints", "anyres"});
  j = Base();
  j["text_config"]["model_type"] = "mistral";
  ExpectError(j, {"text_config.model_type: 'mistral' is not supported"});
  j = Base();
  j["vision_config"]["model_type"] = "siglip_vision_model";
  ExpectError(j, {"vision_config.model_type", "siglip_vision_model"});
  j = Base();
  j["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ExpectError(j, {"text_config.rope_scaling", "rope type 'linear' is not supported"});
}

TEST(ConfigTest, RejectsUnknownActivations) {
  json j = Base();
  j["vision_config"]["hidden_act"] = "relu";
  ExpectError(j, {"vision_config.hidden_act", "'relu'"});
  j = Base();
  j["projector_hidden_act"] = "gelu_pytorch_tanh";
  ExpectError(j, {"projector_hidden_act", "'gelu_pytorch_tanh'"});
  j = Base();
  j["text_config"]["hidden_act"] = "gelu";
  ExpectError(j, {"text_config.hidden_act", "'gelu'", "supported: silu"});
}

TEST(ConfigTest, RejectsBadStrategyAndFeatureLayer) {
  json j = Base();
  j["vision_feature_select_strategy"] = "cls";
  ExpectError(j, {"vision_feature_select_strategy", "'cls'"});
  for (int layer : {25, -26, 1000}) {
    j = Base();
    j["vision_feature_layer"] = layer;
    ExpectError(j, {"vision_feature_layer", "out of range for 24 vision layers"});
  }
  for (int layer : {24, -25, 0, -1}) {  // the boundaries are valid
    j = Base();
    j["vision_feature_layer"] = layer;
    auto c = ParseJson(j);
    ASSERT_TRUE(c.ok()) << layer << ": " << c.status();
    EXPECT_EQ(c->NumVisionLayersToRun(), layer >= 0 ? layer : 25 + layer);
  }
  j = Base();
  j["vision_feature_layer"] = {-2, -5};
  ExpectError(j, {"vision_feature_layer", "list of feature layers is not supported"});
}

TEST(ConfigTest, RejectsBadShapes) {
  json j = Base();
  j["text_config"]["hidden_size"] = 4100;
  ExpectError(j, {"text_config.hidden_size", "4100 is not divisible by num_attention_heads 32"});
  j = Base();
  j["vision_config"]["hidden_size"] = 1000;
  ExpectError(j, {"vision_config.hidden_size", "not divisible"});
  j = Base();
  j["text_config"]["num_key_value_heads"] = 5;
  ExpectError(j,
              {"text_config.num_key_value_heads", "32 is not divisible by num_key_value_heads 5"});
  j = Base();
  j["text_config"]["head_dim"] = 127;
  ExpectError(j, {"text_config.head_dim", "odd"});
  j = Base();
  j["vision_config"]["patch_size"] = 400;
  ExpectError(j, {"vision_config.patch_size", "larger than image_size"});
  j = Base();
  j["image_token_id"] = 31999;
  ExpectError(j, {"image_token_id", "disagrees with image_token_index"});
}

TEST(ConfigTest, ImageSeqLengthMustAgree) {
  json j = Base();
  j["image_seq_length"] = 576;
  EXPECT_TRUE(ParseJson(j).ok());
  j["image_seq_length"] = 577;
  ExpectError(j, {"image_seq_length", "577 disagrees", "576 image tokens", "(336/14)^2"});
  j["vision_feature_select_strategy"] = "full";
  EXPECT_TRUE(ParseJson(j).ok());
  j["image_seq_length"] = "577";
  ExpectError(j, {"image_seq_length: expected a positive integer"});
}

TEST(ConfigTest, RejectsWrongTypes) {
  struct Case {
    std::vector<std::string> path;
    json value;
    std::string expect;
  };
  std::vector<Case> cases = {
      {{"text_config", "hidden_size"},
       "4096",
       "text_config.hidden_size: expected a positive integer"},
      {{"text_config", "hidden_size"}, -1, "text_config.hidden_size: expected a positive integer"},
      {{"text_config", "hidden_size"}, 0, "text_config.hidden_size: expected a positive integer"},
      {{"text_config", "hidden_size"},
       4096.5,
       "text_config.hidden_size: expected a positive integer"},
      {{"text_config", "hidden_size"},
       1e12,
       "text_config.hidden_size: expected a positive integer"},
      {{"text_config", "hidden_size"},
       nullptr,
       "text_config.hidden_size: expected a positive integer"},
      {{"text_config", "num_hidden_layers"},
       true,
       "text_config.num_hidden_layers: expected a positive integer"},
      {{"text_config", "vocab_size"},
       4294967296ll,
       "text_config.vocab_size: expected a positive integer"},
      {{"text_config", "rms_norm_eps"},
       "1e-5",
       "text_config.rms_norm_eps: expected a positive number"},
      {{"text_config", "rms_norm_eps"},
       -1e-5,
       "text_config.rms_norm_eps: expected a positive number"},
      {{"text_config", "rope_theta"}, 0, "text_config.rope_theta: expected a positive number"},
      {{"text_config", "attention_bias"}, 1, "text_config.attention_bias: expected true or false"},
      {{"text_config", "hidden_act"}, 3, "text_config.hidden_act: expected a string"},
      {{"text_config", "pad_token_id"},
       -3,
       "text_config.pad_token_id: expected a non-negative integer"},
      {{"text_config", "eos_token_id"}, json::array(), "text_config.eos_token_id: empty list"},
      {{"text_config", "rope_scaling"},
       "linear",
       "text_config.rope_scaling: expected a JSON object"},
      {{"vision_config", "image_size"},
       "336",
       "vision_config.image_size: expected a positive integer"},
      {{"vision_config", "layer_norm_eps"},
       nullptr,
       "vision_config.layer_norm_eps: expected a positive number"},
      {{"vision_config", "num_channels"},
       0,
       "vision_config.num_channels: expected a positive integer"},
      {{"text_config"}, json::array(), "text_config: expected a JSON object"},
      {{"vision_config"}, 7, "vision_config: expected a JSON object"},
      {{"image_token_index"}, -5, "image_token_index: expected a non-negative integer"},
      {{"pad_token_id"}, "x", "pad_token_id: expected a non-negative integer"},
      {{"vision_feature_layer"}, "-2", "vision_feature_layer: expected an integer"},
      {{"vision_feature_select_strategy"}, 1, "vision_feature_select_strategy: expected a string"},
      {{"multimodal_projector_bias"}, "yes", "multimodal_projector_bias: expected true or false"},
      {{"tie_word_embeddings"}, 0, "tie_word_embeddings: expected true or false"},
      {{"torch_dtype"}, 16, "torch_dtype: expected a string"},
      {{"model_type"}, 1, "model_type: expected a string"},
  };
  for (const Case& c : cases) {
    json j = Base();
    json* target = &j;
    for (size_t i = 0; i + 1 < c.path.size(); ++i) target = &(*target)[c.path[i]];
    (*target)[c.path.back()] = c.value;
    ExpectError(j, {c.expect});
  }
}

TEST(ConfigTest, RejectsBadJson) {
  auto c = ParseLlavaConfig("{\"model_type\": \"llava\",\n  \"x\": }", "m/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              ::testing::AllOf(HasSubstr("m/config.json: not valid JSON"), HasSubstr("line 2")));
  c = ParseLlavaConfig("[1]", "m/config.json");
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("expected a JSON object"));
  c = ParseLlavaConfig("", "m/config.json");
  EXPECT_FALSE(c.ok());
}

TEST(ConfigTest, LoadFromDirectory) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "config_test_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  auto missing = LoadLlavaConfig(tmpl);
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(tmpl + "/config.json"));
  std::ofstream(tmpl + "/config.json") << k7BConfig;
  auto c = LoadLlavaConfig(tmpl);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.vocab_size, 32064);
  std::ofstream(tmpl + "/config.json")
      << "{\"model_type\": \"llava\", \"vision_feature_layer\": 99}";
  c = LoadLlavaConfig(tmpl);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr(tmpl + "/config.json: vision_feature_layer"));
  std::filesystem::remove_all(tmpl);
}

}  // namespace
}  // namespace prunesvc::model
