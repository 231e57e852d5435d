#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "worker/model/checkpoint.h"
#include "worker/model/config.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/preprocess.h"
#include "worker/train/tiny_llava_trainer.h"

namespace prunesvc::train {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("train_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str(const std::string& sub = "") const { return (path_ / sub).string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// Small, fast settings: the default model sizes (so the test covers the shipped architecture),
// a small tokenizer corpus and tiny batches.
TrainOptions FastOptions() {
  TrainOptions o;
  o.tokenizer_corpus = 300;
  o.vision_steps = 0;
  o.vision_batch = 8;
  o.batch = 8;
  o.steps = 30;
  o.warmup = 3;
  // One intra-op thread: on a loaded machine OpenMP's two-thread barriers make small steps crawl.
  o.threads = 1;
  o.eval_every = 0;
  return o;
}

std::vector<TrainExample> PoolExamples(TinyLlavaTrainer& t, int n) {
  data::ShapesOptions so;
  auto resolved = data::ResolveOptions(so);
  EXPECT_TRUE(resolved.ok());
  std::vector<TrainExample> out;
  for (int i = 0; i < n; ++i) {
    auto s = data::GenerateSample(*resolved, data::kShapesTrainSeed, i);
    EXPECT_TRUE(s.ok()) << s.status();
    auto ex = t.MakeExample(*s);
    EXPECT_TRUE(ex.ok()) << ex.status();
    out.push_back(*ex);
  }
  return out;
}

TEST(TrainTokenizerTest, LettersAreSingleTokensAndFilesLoad) {
  TempDir dir;
  std::vector<std::string> corpus = {
      "USER: <image>\nWhat colour is the circle?\nA. red\nB. blue\nC. green\nD. white\nAnswer "
      "with the option's letter from the given choices directly. ASSISTANT: C"};
  ASSERT_TRUE(TrainTokenizer(corpus, 510, dir.str()).ok());
  auto tok = model::Tokenizer::Load(dir.str());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto letters = (*tok)->LetterTokenIds(26);
  ASSERT_TRUE(letters.ok()) << letters.status();
  EXPECT_EQ((*tok)->image_token_id(), (*tok)->sentencepiece_size());
  ASSERT_TRUE((*tok)->pad_id().has_value());
  EXPECT_EQ(*(*tok)->pad_id(), (*tok)->sentencepiece_size() + 1);
  // '\n' survives (identity normalisation, no whitespace folding): it is in the encoding.
  auto ids = (*tok)->EncodePrompt("USER: <image>\nWhat?\nA. red ASSISTANT:");
  ASSERT_TRUE(ids.ok());
  auto text = (*tok)->Decode(*ids);
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text->find('\n'), std::string::npos) << *text;
}

TEST(TrainTokenizerTest, TooSmallVocabularyFailsLoudly) {
  TempDir dir;
  // 256 byte pieces + 3 specials + the characters leave room for a few merges, not 26 letters.
  auto st = TrainTokenizer({"USER: <image>\nWhat? ASSISTANT: A"}, 300, dir.str());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("one token"), std::string::npos) << st.message();
}

TEST(ConfigTest, ConfigAndPreprocessorParse) {
  TinyLlavaSizes s;
  auto config = model::ParseLlavaConfig(MakeConfigJson(s, 510).dump(), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->image_seq_length, 16);
  EXPECT_EQ(config->image_token_index, 510);
  EXPECT_EQ(config->text.vocab_size, 512);
  EXPECT_EQ(MakeConfigJson(s, 515)["text_config"]["vocab_size"], 576);
  EXPECT_EQ(config->NumVisionLayersToRun(), s.vision_layers - 1);
  EXPECT_FALSE(config->tie_word_embeddings);
  auto pre = model::ParsePreprocessorConfig(MakePreprocessorJson(s).dump(), "p.json");
  ASSERT_TRUE(pre.ok()) << pre.status();
  EXPECT_EQ(pre->shortest_edge, 32);
  EXPECT_EQ(pre->crop_height, 32);
}

TEST(TrainerTest, OverfitsAFixedBatchAndWritesALoadableModel) {
  TempDir dir;
  TrainOptions o = FastOptions();
  o.train_pool = 8;  // every step sees the same 8 samples
  o.lr = 3e-3;
  o.aux_weight = 0;
  o.weight_decay = 0;
  auto t = TinyLlavaTrainer::Create(o, dir.str("tok"));
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<TrainExample> pool = PoolExamples(**t, 8);
  auto before = (*t)->AnswerLoss(pool);
  ASSERT_TRUE(before.ok()) << before.status();
  for (int i = 0; i < o.steps; ++i) ASSERT_TRUE((*t)->Step().ok());
  auto after = (*t)->AnswerLoss(pool);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(*after, 0.5 * *before) << "before " << *before << " after " << *after;
  RecordProperty("loss_before", std::to_string(*before));
  RecordProperty("loss_after", std::to_string(*after));

  // The written directory loads through the runtime's own loaders and scores like the
  // in-memory model.
  const std::string out = dir.str("model");
  ASSERT_TRUE((*t)->SaveModel(out, nlohmann::json::object()).ok());
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "added_tokens.json",
                        "tokenizer_config.json", "special_tokens_map.json",
                        "preprocessor_config.json", "training.json"}) {
    EXPECT_TRUE(fs::exists(dir.str("model/") + f)) << f;
  }
  auto config = model::LoadLlavaConfig(out);
  ASSERT_TRUE(config.ok()) << config.status();
  auto ckpt = model::LoadCheckpoint(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  // The last CLIP layer (never run) and post_layernorm are in the file, as HF expects.
  EXPECT_TRUE(ckpt->tensors.count("vision_tower.vision_model.encoder.layers.3.mlp.fc2.weight"));
  EXPECT_TRUE(ckpt->tensors.count("vision_tower.vision_model.post_layernorm.weight"));
  auto tok = model::Tokenizer::Load(out);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto reloaded = model::LlavaModel::Create(*config, *ckpt);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  auto bundle = model::LoadLlavaBundle(out);
  ASSERT_TRUE(bundle.ok()) << bundle.status();

  std::vector<model::ScoringSample> a, b;
  std::vector<at::Tensor> px;
  for (const TrainExample& ex : pool) {
    model::ScoringSample s;
    s.token_ids = ex.token_ids;
    s.answer_begin = ex.answer_begin;
    s.answer_end = ex.answer_end;
    s.option_token_ids.assign((*t)->letter_ids().begin(), (*t)->letter_ids().begin() + 4);
    s.correct_option = ex.correct_option;
    a.push_back(s);
    px.push_back(at::from_blob(const_cast<float*>(ex.pixels.data()), {1, 3, 32, 32}).clone());
  }
  b = a;
  at::Tensor pixels = at::cat(px, 0);
  auto fa = (*t)->model().ComputeImageFeatures(pixels);
  auto fb = (*reloaded)->ComputeImageFeatures(pixels);
  ASSERT_TRUE(fa.ok() && fb.ok());
  for (size_t i = 0; i < a.size(); ++i) {
    a[i].image_features = fa->narrow(0, i, 1);
    b[i].image_features = fb->narrow(0, i, 1);
  }
  auto sa = model::ScoreSamples((*t)->model(), a);
  auto sb = model::ScoreSamples(**reloaded, b);
  ASSERT_TRUE(sa.ok() && sb.ok());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::abs((*sa)[i].loss - (*sb)[i].loss));
    for (int k = 0; k < 4; ++k) {
      max_diff =
          std::max(max_diff, std::abs((*sa)[i].option_log_probs[k] - (*sb)[i].option_log_probs[k]));
    }
  }
  EXPECT_LE(max_diff, 1e-5);
  RecordProperty("reload_max_abs_diff", std::to_string(max_diff));
}

TEST(TrainerTest, TrainableVisionForwardMatchesTheRuntime) {
  TempDir dir;
  TrainOptions o = FastOptions();
  o.init_seed = 7;
  auto t = TinyLlavaTrainer::Create(o, dir.str("tok"));
  ASSERT_TRUE(t.ok()) << t.status();
  at::manual_seed(3);
  at::Tensor pixels = at::randn({3, 3, 32, 32});
  at::Tensor mine = (*t)->TrainableVisionFeatures(pixels).detach();
  auto theirs = (*t)->model().VisionFeatures(pixels);
  ASSERT_TRUE(theirs.ok());
  ASSERT_EQ(mine.sizes(), theirs->sizes());
  EXPECT_LE((mine - *theirs).abs().max().item<double>(), 1e-5);
}

TEST(TrainerTest, ResumeContinuesLikeAnUninterruptedRun) {
  TempDir dir;
  TrainOptions o = FastOptions();
  o.vision_steps = 2;  // the resumed run crosses the phase boundary
  o.steps = 3;
  o.batch = 4;
  o.vision_batch = 8;
  o.warmup = 1;
  std::vector<double> straight;
  {
    auto t = TinyLlavaTrainer::Create(o, dir.str("tok_a"));
    ASSERT_TRUE(t.ok()) << t.status();
    for (int i = 0; i < 5; ++i) straight.push_back(*(*t)->Step());
  }
  o.checkpoint_dir = dir.str("ckpt");
  {
    auto t = TinyLlavaTrainer::Create(o, dir.str("ckpt/tokenizer"));
    ASSERT_TRUE(t.ok()) << t.status();
    for (int i = 0; i < 2; ++i) ASSERT_TRUE((*t)->Step().ok());
    ASSERT_TRUE((*t)->SaveCheckpoint(o.checkpoint_dir).ok());
  }
  o.resume = true;
  auto t = TinyLlavaTrainer::Create(o, dir.str("ckpt/tokenizer"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->step(), 2);
  for (int i = 2; i < 5; ++i) {
    auto loss = (*t)->Step();
    ASSERT_TRUE(loss.ok());
    EXPECT_NEAR(*loss, straight[i], 1e-5) << "step " << i;
  }
  // A state from other seeds is refused; a malformed one is an error, not a crash.
  TrainOptions other = o;
  other.init_seed = 99;
  auto refused = TinyLlavaTrainer::Create(other, dir.str("ckpt/tokenizer"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  std::ofstream(dir.str("ckpt/trainer_state.json")) << "{not json";
  auto broken = TinyLlavaTrainer::Create(o, dir.str("ckpt/tokenizer"));
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("trainer_state.json"), std::string::npos);
}

// --init_from: the weights and tokenizer of a saved model directory replace the random init
// (another init seed, so a silent fallback to random weights would show), exactly.
TEST(TrainerTest, InitFromStartsFromASavedModel) {
  TempDir dir;
  TrainOptions o = FastOptions();
  o.batch = 4;
  auto a = TinyLlavaTrainer::Create(o, dir.str("tok_a"));
  ASSERT_TRUE(a.ok()) << a.status();
  for (int i = 0; i < 2; ++i) ASSERT_TRUE((*a)->Step().ok());
  ASSERT_TRUE((*a)->SaveModel(dir.str("a"), nlohmann::json::object()).ok());

  TrainOptions f = o;
  f.init_seed = 2;
  f.init_from = dir.str("a");
  f.data_offset = 1000;
  auto b = TinyLlavaTrainer::Create(f, dir.str("tok_b"));
  ASSERT_TRUE(b.ok()) << b.status();
  const auto ta = (*a)->model().NamedTensors(), tb = (*b)->model().NamedTensors();
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& [name, t] : ta) {
    ASSERT_TRUE(tb.count(name)) << name;
    EXPECT_TRUE(at::equal(t, tb.at(name))) << name;
  }
  std::ifstream ka(dir.str("a/tokenizer.model"), std::ios::binary),
      kb(dir.str("tok_b/tokenizer.model"), std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(ka), {}),
            std::string(std::istreambuf_iterator<char>(kb), {}));
  std::vector<TrainExample> pool = PoolExamples(**a, 4);
  EXPECT_EQ(*(*a)->AnswerLoss(pool), *(*b)->AnswerLoss(pool));
  ASSERT_TRUE((*b)->Step().ok());  // and it trains from there

  // Sizes that do not match the directory: an error naming the tensor, not a crash.
  TrainOptions wrong = f;
  wrong.sizes.text_mlp = 256;
  auto c = TinyLlavaTrainer::Create(wrong, dir.str("tok_c"));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("has shape"), std::string::npos) << c.status();
  TrainOptions missing = f;
  missing.init_from = dir.str("nope");
  EXPECT_FALSE(TinyLlavaTrainer::Create(missing, dir.str("tok_d")).ok());
}

TEST(TrainerTest, CurriculumSamplesTrain) {
  // Binding samples fail loudly unless each option's repeated letter is found as one "▁X"
  // token; pointer and open-answer samples must tokenize under the prefix rule.
  TempDir dir;
  TrainOptions o = FastOptions();
  o.steps = 3;
  o.batch = 6;
  o.binding_fraction = 0.5;
  o.pointer_fraction = 0.5;
  o.pointer_steps = 100;
  o.open_fraction = 0.3;
  o.where_fraction = 0.5;
  o.position_boost = 0.3;
  o.position_two_objects = 0.5;
  o.count_boost = 0.2;
  auto t = TinyLlavaTrainer::Create(o, dir.str("tok"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_DOUBLE_EQ((*t)->CurriculumDecay(0), 1.0);
  EXPECT_DOUBLE_EQ((*t)->CurriculumDecay(50), 0.5);
  EXPECT_DOUBLE_EQ((*t)->CurriculumDecay(100), 0.0);
  for (int i = 0; i < o.steps; ++i) {
    auto loss = (*t)->Step();
    ASSERT_TRUE(loss.ok()) << loss.status();
    EXPECT_TRUE(std::isfinite(*loss));
  }
}

TEST(TrainerTest, NeverPrunedPartsCostAtMost15PercentOfDenseFlops) {
  TempDir dir;
  auto t = TinyLlavaTrainer::Create(FastOptions(), dir.str("tok"));
  ASSERT_TRUE(t.ok()) << t.status();
  auto flops = (*t)->DenseFlops(64);
  ASSERT_TRUE(flops.ok()) << flops.status();
  EXPECT_GT(flops->second, 0.0);
  EXPECT_LE(flops->second, 0.15) << "never-pruned share " << flops->second;
}

}  // namespace
}  // namespace prunesvc::train
