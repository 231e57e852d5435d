// End-to-end tests of the real llava-eval / llava-generate binaries on a small random LLaVA model
// directory and sample set written at test time by testdata/llava_eval_fixture.py (random
// weights, a sentencepiece model trained on the spot, PIL-written PNGs of mixed sizes and modes).
#include <ATen/Context.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/llava_bundle.h"
#include "worker/model/samples.h"
#include "worker/model/tokenizer.h"

namespace prunesvc::model {
namespace {

namespace fs = std::filesystem;

constexpr int kNumSamples = 21;  // not a multiple of 8: the last --batch 8 batch is partial

std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v ? v : fallback;
}
std::string BinDir() { return Env("PRUNESVC_BIN", PRUNESVC_BIN_DIR); }
std::string Python() { return Env("PRUNESVC_PYTHON", "/usr/bin/python3"); }
std::string Fixture() {
  return Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR) +
         "/worker/model/testdata/llava_eval_fixture.py";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<float> ReadFloats(const std::string& path) {
  const std::string bytes = ReadFile(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

struct RunResult {
  int code = -1;
  std::string out, err;
};

bool work_dir_made = false;

// The fixture: a temp dir with model/ and samples/, made once per test binary.
const std::string& WorkDir() {
  static const std::string* dir = [] {
    std::string tmpl = (fs::temp_directory_path() / "llava_eval_XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) return new std::string();
    work_dir_made = true;
    const std::string base = Python() + " " + Fixture() + " ";
    if (std::system((base + "model " + tmpl + "/model >&2").c_str()) != 0 ||
        std::system((base + "samples " + tmpl + "/samples " + std::to_string(kNumSamples) + " >&2")
                        .c_str()) != 0) {
      return new std::string();
    }
    return new std::string(tmpl);
  }();
  return *dir;
}

// Removes the fixture directory when the test binary ends.
class CleanupEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (work_dir_made) {
      std::error_code ec;
      fs::remove_all(WorkDir(), ec);
    }
  }
};
const ::testing::Environment* const kCleanup =
    ::testing::AddGlobalTestEnvironment(new CleanupEnvironment);

class LlavaEvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(WorkDir().empty()) << "the fixture script failed: " << Fixture();
    model_ = WorkDir() + "/model";
    samples_ = WorkDir() + "/samples";
  }

  // Runs a binary from the bin dir with `args`, capturing stdout, stderr and the exit code.
  RunResult Run(const std::string& tool, const std::string& args) {
    static int counter = 0;
    const std::string out = WorkDir() + "/out" + std::to_string(counter) + ".txt";
    const std::string err = WorkDir() + "/err" + std::to_string(counter) + ".txt";
    ++counter;
    const std::string cmd = BinDir() + "/" + tool + " " + args + " >" + out + " 2>" + err;
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }

  RunResult Eval(const std::string& extra) {
    return Run("llava-eval",
               "--model " + model_ + " --samples " + samples_ + " --threads 1 " + extra);
  }

  // A copy of the sample set to corrupt.
  std::string CopySamples(const std::string& name) {
    const std::string dst = WorkDir() + "/" + name;
    fs::remove_all(dst);
    fs::copy(samples_, dst, fs::copy_options::recursive);
    return dst;
  }

  std::string model_, samples_;
};

TEST_F(LlavaEvalTest, JsonIsOneObjectWithRequiredKeys) {
  RunResult r = Eval("--json --batch 4");
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json j;
  // parse() of the whole stdout fails on anything but one JSON value (plus whitespace).
  ASSERT_NO_THROW(j = nlohmann::json::parse(r.out)) << r.out;
  ASSERT_TRUE(j.is_object());
  for (const char* key : {"accuracy", "mean_loss", "num_samples", "samples_per_second",
                          "gflops_per_sample", "per_type", "model", "samples", "threads"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["num_samples"], kNumSamples);
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["model"], model_);
  EXPECT_EQ(j["samples"], samples_);
  const double acc = j["accuracy"].get<double>();
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  const double loss = j["mean_loss"].get<double>();
  EXPECT_TRUE(std::isfinite(loss) && loss > 0) << loss;
  EXPECT_GT(j["samples_per_second"].get<double>(), 0);
  EXPECT_GT(j["gflops_per_sample"].get<double>(), 0);
  // The fixture writes types colour/shape/count (multiple choice) and open (open answer).
  int total = 0;
  double weighted_loss = 0;
  for (const char* type : {"colour", "shape", "count", "open"}) {
    ASSERT_TRUE(j["per_type"].contains(type)) << type;
    const auto& t = j["per_type"][type];
    total += t["num_samples"].get<int>();
    weighted_loss += t["mean_loss"].get<double>() * t["num_samples"].get<int>();
  }
  EXPECT_EQ(total, kNumSamples);
  EXPECT_NEAR(weighted_loss / total, loss, 1e-9);
  EXPECT_TRUE(j["per_type"]["open"]["accuracy"].is_null());
  // Logs and progress went to stderr.
  EXPECT_NE(r.err.find("progress"), std::string::npos) << r.err;
}

TEST_F(LlavaEvalTest, GflopsMatchTheFlopsModelOverTheSet) {
  RunResult r = Eval("--json");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  auto bundle = LoadLlavaBundle(model_);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  auto set = LoadSampleSet(samples_);
  ASSERT_TRUE(set.ok()) << set.status();
  std::vector<ScoringSample> scoring;
  for (const Sample& s : set->samples) {
    auto p = PrepareSample(**bundle, s);
    ASSERT_TRUE(p.ok()) << p.status();
    scoring.push_back(p->scoring);
  }
  auto flops = ComputeDenseFlops((*bundle)->model->FlopsDims(),
                                 ComputeTokenStats(*(*bundle)->model, scoring));
  ASSERT_TRUE(flops.ok()) << flops.status();
  EXPECT_NEAR(j["gflops_per_sample"].get<double>(), flops->Total() / 1e9, 1e-12);
}

TEST_F(LlavaEvalTest, DumpLogitsIndependentOfBatchSizeAndConsistentWithAccuracy) {
  const std::string a = WorkDir() + "/logits_b1.bin", b = WorkDir() + "/logits_b8.bin";
  RunResult r1 = Eval("--json --batch 1 --dump-logits " + a);
  ASSERT_EQ(r1.code, 0) << r1.err;
  RunResult r8 = Eval("--json --batch 8 --dump-logits " + b);
  ASSERT_EQ(r8.code, 0) << r8.err;
  auto config = LoadLlavaConfig(model_);
  ASSERT_TRUE(config.ok()) << config.status();
  const size_t V = config->text.vocab_size;
  EXPECT_EQ(fs::file_size(a), size_t(kNumSamples) * V * 4);
  EXPECT_EQ(fs::file_size(b), size_t(kNumSamples) * V * 4);
  const std::vector<float> la = ReadFloats(a), lb = ReadFloats(b);
  ASSERT_EQ(la.size(), lb.size());
  double max_diff = 0;
  for (size_t i = 0; i < la.size(); ++i)
    max_diff = std::max(max_diff, double(std::abs(la[i] - lb[i])));
  EXPECT_LE(max_diff, 1e-5);
  std::printf("batch 1 vs batch 8 logits: max |diff| = %.3g over %zu values\n", max_diff,
              la.size());

  // Accuracy recomputed from the dumped logits: argmax over the option letters' ids.
  auto tok = Tokenizer::Load(model_);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto letters = (*tok)->LetterTokenIds(26);
  ASSERT_TRUE(letters.ok()) << letters.status();
  auto set = LoadSampleSet(samples_);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->samples.size(), size_t(kNumSamples));
  int mc = 0, correct = 0;
  std::map<std::string, std::pair<int, int>> by_type;
  for (size_t i = 0; i < set->samples.size(); ++i) {
    const Sample& s = set->samples[i];
    if (!s.multiple_choice()) continue;
    int best = 0;
    for (size_t k = 1; k < s.options.size(); ++k) {
      if (lb[i * V + (*letters)[k]] > lb[i * V + (*letters)[best]]) best = int(k);
    }
    ++mc;
    correct += best == s.answer_index();
    by_type[s.type].first += 1;
    by_type[s.type].second += best == s.answer_index();
  }
  ASSERT_GT(mc, 0);
  for (const RunResult* r : {&r1, &r8}) {
    const nlohmann::json j = nlohmann::json::parse(r->out);
    EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), double(correct) / mc);
    for (const auto& [type, counts] : by_type) {
      EXPECT_DOUBLE_EQ(j["per_type"][type]["accuracy"].get<double>(),
                       double(counts.second) / counts.first)
          << type;
    }
  }
  EXPECT_NEAR(nlohmann::json::parse(r1.out)["mean_loss"].get<double>(),
              nlohmann::json::parse(r8.out)["mean_loss"].get<double>(), 1e-5);
}

TEST_F(LlavaEvalTest, LimitAndTable) {
  const std::string dump = WorkDir() + "/logits_limit.bin";
  RunResult r = Eval("--limit 5 --dump-logits " + dump);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GFLOPs/sample"), std::string::npos) << r.out;
  auto config = LoadLlavaConfig(model_);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(fs::file_size(dump), size_t(5) * config->text.vocab_size * 4);
}

TEST_F(LlavaEvalTest, MissingWeightsFileIsExitCode2) {
  const std::string dir = WorkDir() + "/model_noweights";
  fs::remove_all(dir);
  fs::copy(model_, dir, fs::copy_options::recursive);
  fs::remove(dir + "/model.safetensors");
  RunResult r = Run("llava-eval", "--json --model " + dir + " --samples " + samples_);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("model.safetensors"), std::string::npos) << r.err;
}

TEST_F(LlavaEvalTest, MissingTokenizerAndPreprocessorAreExitCode2) {
  for (const char* file : {"tokenizer.model", "preprocessor_config.json", "config.json"}) {
    const std::string dir = WorkDir() + "/model_no_" + file;
    fs::remove_all(dir);
    fs::copy(model_, dir, fs::copy_options::recursive);
    fs::remove(dir + "/" + file);
    RunResult r = Run("llava-eval", "--model " + dir + " --samples " + samples_);
    EXPECT_EQ(r.code, 2) << file << ": " << r.err;
    EXPECT_NE(r.err.find(file), std::string::npos) << r.err;
  }
}

TEST_F(LlavaEvalTest, BadSamplesLineIsExitCode2NamingTheLine) {
  const std::string dir = CopySamples("samples_badline");
  {
    std::ofstream f(dir + "/samples.jsonl", std::ios::app);
    f << "{\"id\": \"bad\", \"image\": 5, \"question\": \"q\", \"answer\": \"x\"}\n";
  }
  const std::string dump = WorkDir() + "/logits_bad.bin";
  RunResult r = Run("llava-eval",
                    "--json --model " + model_ + " --samples " + dir + " --dump-logits " + dump);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find(":" + std::to_string(kNumSamples + 1) + ":"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("image"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dump));
  // The error is one line at the end of stderr.
  const size_t at = r.err.find("llava-eval: error: ");
  ASSERT_NE(at, std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\n', at), r.err.size() - 1) << r.err;
}

TEST_F(LlavaEvalTest, UndecodableImageIsExitCode2NamingLineAndFile) {
  const std::string dir = CopySamples("samples_badimage");
  {
    std::ofstream f(dir + "/images/0003.png", std::ios::binary | std::ios::trunc);
    f << "\x89PNG\r\n\x1a\n this is not a png";
  }
  RunResult r = Run("llava-eval", "--json --model " + model_ + " --samples " + dir);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("samples.jsonl:4:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("images/0003.png"), std::string::npos) << r.err;
}

TEST_F(LlavaEvalTest, LiteralImageTokenInQuestionIsExitCode2) {
  const std::string dir = CopySamples("samples_imagetoken");
  {
    std::ofstream f(dir + "/samples.jsonl", std::ios::app);
    f << "{\"id\": \"twice\", \"image\": \"images/0000.png\", \"question\": \"Is <image> here?\", "
         "\"options\": [\"yes\", \"no\"], \"answer\": \"A\"}\n";
  }
  RunResult r = Run("llava-eval", "--model " + model_ + " --samples " + dir);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("\"twice\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("<image>"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(":" + std::to_string(kNumSamples + 1) + ":"), std::string::npos) << r.err;
}

TEST_F(LlavaEvalTest, BadFlagValuesAreExitCode2) {
  EXPECT_EQ(Eval("--batch 0").code, 2);
  EXPECT_EQ(Run("llava-eval", "--model " + model_).code, 2);
  EXPECT_EQ(Eval("--dump-logits /nonexistent-dir/x.bin").code, 2);
  const RunResult bad_device = Eval("--device gpu");
  EXPECT_EQ(bad_device.code, 2);
  EXPECT_NE(bad_device.err.find("expected cpu, cuda or cuda:N"), std::string::npos)
      << bad_device.err;
}

// Debian's libtorch is CPU-only: --device=cuda is refused up front, naming the fix.
TEST_F(LlavaEvalTest, CudaOnCpuOnlyBuildIsExitCode2NamingTheFix) {
  if (at::globalContext().hasCUDA()) GTEST_SKIP() << "this libtorch has CUDA";
  const RunResult r = Eval("--device cuda:0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("CPU-only libtorch"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("docs/gpu.md"), std::string::npos) << r.err;
}

TEST_F(LlavaEvalTest, GenerateRunsAndIsDeterministic) {
  const std::string args = "--model " + model_ + " --image " + samples_ +
                           "/images/0001.png --prompt 'What colour is the shape?' "
                           "--max-new-tokens 8 --threads 1";
  RunResult a = Run("llava-generate", args);
  ASSERT_EQ(a.code, 0) << a.err;
  RunResult b = Run("llava-generate", args);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_FALSE(a.out.empty());
  EXPECT_EQ(a.out, b.out);
  // --raw needs the <image> marker; a missing image file names it.
  EXPECT_EQ(Run("llava-generate", args + " --raw").code, 2);
  RunResult c = Run("llava-generate", "--model " + model_ + " --image /nonexistent.png --prompt x");
  EXPECT_EQ(c.code, 2);
  EXPECT_NE(c.err.find("/nonexistent.png"), std::string::npos) << c.err;
  // Without --prompt it does not run silently: a usage error that points at the template.
  RunResult d = Run("llava-generate",
                    "--model " + model_ + " --image " + samples_ + "/images/0001.png --threads 1");
  EXPECT_EQ(d.code, 2);
  EXPECT_NE(d.err.find("--prompt"), std::string::npos) << d.err;
}

// The tiny model never emits EOS: the answer is capped at the context (max_position_embeddings
// 512 minus the prompt's tokens) with a warning, and the streamed text is the whole answer.
TEST_F(LlavaEvalTest, GenerateCapsAtTheContextLength) {
  RunResult r = Run("llava-generate", "--model " + model_ + " --image " + samples_ +
                                          "/images/0001.png --prompt 'What colour is the shape?' "
                                          "--max-new-tokens 10000 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("--max-new-tokens 10000 capped at "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("of the model's 512 positions"), std::string::npos) << r.err;
  EXPECT_GT(r.out.size(), 100u);
  EXPECT_EQ(r.out.back(), '\n');
  // The first 8 tokens' text is a prefix of it (greedy decoding is deterministic).
  RunResult short_run = Run("llava-generate", "--model " + model_ + " --image " + samples_ +
                                                  "/images/0001.png --prompt 'What colour is "
                                                  "the shape?' --max-new-tokens 8 --threads 1");
  ASSERT_EQ(short_run.code, 0);
  EXPECT_EQ(r.out.rfind(short_run.out.substr(0, short_run.out.size() - 1), 0), 0u)
      << short_run.out << " vs " << r.out;
}

TEST_F(LlavaEvalTest, SamplesJsonlPathNamesItsDirectory) {
  RunResult r = Eval("--samples " + samples_ + "/samples.jsonl");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("(pass " + samples_ + ")"), std::string::npos) << r.err;
}

TEST_F(LlavaEvalTest, PrepareSampleBuildsTheTemplates) {
  auto bundle = LoadLlavaBundle(model_);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  const LlavaBundle& b = **bundle;
  EXPECT_EQ(b.letter_token_ids.size(), 26u);
  Sample s;
  s.id = "x";
  s.line = 7;
  s.question = "Which?";
  s.options = {"red", "blue", "green"};
  s.answer = "C";
  s.image_bytes.assign(std::istreambuf_iterator<char>(*std::make_unique<std::ifstream>(
                           samples_ + "/images/0000.png", std::ios::binary)),
                       std::istreambuf_iterator<char>());
  auto p = PrepareSample(b, s);
  ASSERT_TRUE(p.ok()) << p.status();
  auto expect = b.tokenizer->EncodeForScoring(MultipleChoicePrompt(s.question, s.options), " C");
  ASSERT_TRUE(expect.ok());
  EXPECT_EQ(p->scoring.token_ids, expect->ids);
  EXPECT_EQ(p->scoring.answer_begin, expect->answer_begin);
  EXPECT_EQ(p->scoring.correct_option, 2);
  ASSERT_EQ(p->scoring.option_token_ids.size(), 3u);
  EXPECT_EQ(p->scoring.token_ids[p->scoring.answer_begin], b.letter_token_ids[2]);
  EXPECT_EQ(p->pixels.channels, 3);
  EXPECT_EQ(p->pixels.height, b.config.vision.image_size);

  // Open answer.
  s.options.clear();
  s.answer = "red";
  auto o = PrepareSample(b, s);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->scoring.option_token_ids.empty());
  auto oexp = b.tokenizer->EncodeForScoring(OpenAnswerPrompt(s.question), " red");
  ASSERT_TRUE(oexp.ok());
  EXPECT_EQ(o->scoring.token_ids, oexp->ids);

  // An option with a literal <image> also makes two image tokens.
  s.options = {"<image>", "b"};
  s.answer = "A";
  auto bad = PrepareSample(b, s);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("samples.jsonl:7"), std::string::npos) << bad.status();

  // Undecodable bytes.
  s.options = {"a", "b"};
  s.image_bytes = {1, 2, 3};
  s.image_path = "images/zz.png";
  auto undecodable = PrepareSample(b, s);
  ASSERT_FALSE(undecodable.ok());
  EXPECT_NE(undecodable.status().message().find("images/zz.png"), std::string::npos)
      << undecodable.status();

  // AttachImageFeatures fills [1, image_seq_length, hidden] per sample, independent of batching.
  std::vector<PreparedSample> prepared;
  for (int i = 0; i < 3; ++i) {
    s.options = {"a", "b"};
    s.image_bytes.assign(
        std::istreambuf_iterator<char>(*std::make_unique<std::ifstream>(
            samples_ + "/images/000" + std::to_string(i) + ".png", std::ios::binary)),
        std::istreambuf_iterator<char>());
    auto q = PrepareSample(b, s);
    ASSERT_TRUE(q.ok()) << q.status();
    prepared.push_back(std::move(*q));
  }
  std::vector<PreparedSample> one_by_one = prepared;
  ASSERT_TRUE(AttachImageFeatures(*b.model, absl::MakeSpan(prepared), 2).ok());
  ASSERT_TRUE(AttachImageFeatures(*b.model, absl::MakeSpan(one_by_one), 1).ok());
  for (size_t i = 0; i < prepared.size(); ++i) {
    const at::Tensor& f = prepared[i].scoring.image_features;
    ASSERT_TRUE(f.defined());
    EXPECT_EQ(f.sizes(),
              (at::IntArrayRef{1, b.config.image_seq_length, b.config.text.hidden_size}));
    EXPECT_LE((f - one_by_one[i].scoring.image_features).abs().max().item<float>(), 1e-5);
  }
  EXPECT_FALSE(AttachImageFeatures(*b.model, absl::MakeSpan(prepared), 0).ok());
}

}  // namespace
}  // namespace prunesvc::model
