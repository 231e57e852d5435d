// End-to-end tests of prune-local (RunLocalJob behind the real binary) on a small random LLaVA
// model directory and sample sets written at test time by testdata/prune_local_fixture.py (which
// reuses worker/model/testdata/llava_eval_fixture.py): determinism of the search, the artifact
// (reload + llava-eval, non-zeros vs the policy, FLOPs ratio, manifest, dtype and name layout),
// UNIFORM's budget, and the failure paths (unreachable budget, non-empty --out, bad flags,
// SIGINT/SIGTERM during the search, --dry-run).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flops.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/checkpoint.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/samples.h"
#include "worker/model/scoring.h"
#include "worker/prune/report.h"

namespace prunesvc::prune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string Env(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v ? v : fallback;
}
std::string BinDir() { return Env("PRUNESVC_BIN", PRUNESVC_BIN_DIR); }
std::string Python() { return Env("PRUNESVC_PYTHON", "/usr/bin/python3"); }
std::string Fixture() {
  return Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR) +
         "/worker/prune/testdata/prune_local_fixture.py";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json ReadJson(const std::string& path) { return json::parse(ReadFile(path)); }

// The safetensors header, read here without the project's reader.
json SafetensorsHeader(const std::string& path) {
  const std::string bytes = ReadFile(path);
  if (bytes.size() < 8) return json();
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return json::parse(bytes.substr(8, n));
}

// F(artifact) / F(dense), counted here from the written weights' real non-zeros: the FLOPs model
// (common/flops.h) on the artifact's own dims and the samples' token statistics, each decoder
// linear kept at non-zeros / numel of its loaded weight. Does not read report.json or
// policy.json.
// The FLOPs model of `bundle`'s own dims (per-layer sizes included), every weight dense, with the
// token statistics of the samples at `samples_path`.
absl::StatusOr<FlopsBreakdown> DenseFlopsOn(const model::LlavaBundle& bundle,
                                            const std::string& samples_path) {
  ASSIGN_OR_RETURN(model::SampleSet set, model::LoadSampleSet(samples_path));
  std::vector<model::ScoringSample> scoring;
  for (const model::Sample& sample : set.samples) {
    ASSIGN_OR_RETURN(model::PreparedSample p, model::PrepareSample(bundle, sample));
    scoring.push_back(p.scoring);
  }
  const model::LlavaModel& m = *bundle.model;
  return ComputeDenseFlops(m.FlopsDims(), model::ComputeTokenStats(m, scoring));
}

absl::StatusOr<double> ArtifactFlopsRatio(const std::string& model_dir,
                                          const std::string& samples_path) {
  ASSIGN_OR_RETURN(auto bundle, model::LoadLlavaBundle(model_dir));
  ASSIGN_OR_RETURN(FlopsBreakdown dense, DenseFlopsOn(*bundle, samples_path));
  model::LlavaModel& m = *bundle->model;
  KeptFractions keep;
  keep.decoder.assign(dense.decoder_linear.size(), {1, 1, 1, 1, 1, 1, 1});
  int counted = 0;
  for (const model::NamedLinear& nl : m.DecoderLinears()) {
    const at::Tensor& w = nl.linear->weight;
    keep.decoder.at(nl.layer)[int(nl.kind)] =
        double(at::count_nonzero(w).item<int64_t>()) / double(w.numel());
    ++counted;
  }
  if (counted != 7 * int(dense.decoder_linear.size())) {
    return absl::InternalError(absl::StrCat("counted ", counted, " decoder linears"));
  }
  ASSIGN_OR_RETURN(double pruned, PolicyFlops(dense, keep));
  return pruned / dense.Total();
}

bool dir_made = false;

// model32 (F32, ≤ 4.51 names), model16 (F16, ≥ 4.52 names), search (16 samples), eval (24).
const std::string& WorkDir() {
  static const std::string* dir = [] {
    std::string tmpl = (fs::temp_directory_path() / "prune_local_XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) return new std::string();
    dir_made = true;
    const std::string base = Python() + " " + Fixture() + " ";
    for (const std::string& args :
         {"model " + tmpl + "/model32", "model " + tmpl + "/model16 F16 new",
          "samples " + tmpl + "/search 16", "samples " + tmpl + "/eval 24"}) {
      if (std::system((base + args + " >&2").c_str()) != 0) return new std::string();
    }
    return new std::string(tmpl);
  }();
  return *dir;
}

class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (dir_made && !WorkDir().empty()) {
      std::error_code ec;
      fs::remove_all(WorkDir(), ec);
    }
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

struct RunResult {
  int code = -1;  // exit code, or 128 + signal
  std::string out, err;
};

pid_t Spawn(const std::vector<std::string>& args, const std::string& out, const std::string& err) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int fo = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int fe = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1);
    dup2(fe, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Runs argv (args[0] an absolute path), capturing its output under WorkDir().
RunResult RunArgs(const std::vector<std::string>& args) {
  static int counter = 0;
  const std::string base = absl::StrCat(WorkDir(), "/run", counter++);
  RunResult r;
  r.code = Wait(Spawn(args, base + ".out", base + ".err"));
  r.out = ReadFile(base + ".out");
  r.err = ReadFile(base + ".err");
  return r;
}

RunResult RunBin(const std::string& binary, const std::vector<std::string>& flags) {
  std::vector<std::string> args = {BinDir() + "/" + binary};
  args.insert(args.end(), flags.begin(), flags.end());
  return RunArgs(args);
}

// A short but real search: 14 units (unit = linear), projector training at generations 2 and 4.
std::vector<std::string> SearchFlags(const std::string& out, int seed) {
  const std::string& w = WorkDir();
  return {"--model=" + w + "/model32",
          "--samples=" + w + "/search",
          "--eval-samples=" + w + "/eval",
          "--flops-budget=0.5",
          "--unit=linear",
          "--final-mask-method=WANDA",  // exact per-row masks, checked below
          absl::StrCat("--seed=", seed),
          "--population=8",
          "--parents=3",
          "--generations=4",
          "--projector-every=2",
          "--projector-steps=4",
          "--threads=1",
          "--out=" + out};
}

// The main run, shared by several tests.
const RunResult& MainRun() {
  static const RunResult* r =
      new RunResult(RunBin("prune-local", SearchFlags(WorkDir() + "/main", 7)));
  return *r;
}

TEST(PruneLocalTest, FixtureExists) { ASSERT_FALSE(WorkDir().empty()); }

TEST(PruneLocalTest, SameSeedGivesSameSearchAndPolicy) {
  ASSERT_FALSE(WorkDir().empty());
  const RunResult& a = MainRun();
  ASSERT_EQ(a.code, 0) << a.err;
  const RunResult b = RunBin("prune-local", SearchFlags(WorkDir() + "/again", 7));
  ASSERT_EQ(b.code, 0) << b.err;
  const RunResult c = RunBin("prune-local", SearchFlags(WorkDir() + "/seed8", 8));
  ASSERT_EQ(c.code, 0) << c.err;
  const json ra = ReadJson(WorkDir() + "/main/report.json");
  const json rb = ReadJson(WorkDir() + "/again/report.json");
  const json rc = ReadJson(WorkDir() + "/seed8/report.json");
  ASSERT_GE(ra["history"].size(), 5u);
  EXPECT_GT(ra["evaluated"].size(), 8u);
  EXPECT_EQ(ra["history"], rb["history"]);
  EXPECT_EQ(ra["evaluated"], rb["evaluated"]);
  EXPECT_EQ(ra["policy"], rb["policy"]);
  EXPECT_EQ(ReadFile(WorkDir() + "/main/policy.json"), ReadFile(WorkDir() + "/again/policy.json"));
  // The same bytes of weights, too.
  EXPECT_EQ(ReadFile(WorkDir() + "/main/model/model.safetensors"),
            ReadFile(WorkDir() + "/again/model/model.safetensors"));
  // Another seed explores another sequence (so the comparison above can fail).
  EXPECT_NE(ra["evaluated"], rc["evaluated"]);
  // Projector training happened (generations 2 and 4) and is recorded.
  EXPECT_EQ(ra["projector"]["version"], 2);
  // The default η with PAIRED (issue 14): the SAMPLES rule, 0 with these 16 search samples.
  EXPECT_EQ(ra["eta"]["mode"], "samples");
  EXPECT_EQ(ra["eta"]["value"], 0.0);
  EXPECT_EQ(ra["eta"]["eta_rule"], "SAMPLES");
  EXPECT_EQ(ra["eta"]["estimator"], "PAIRED");
  EXPECT_EQ(ra["history"][0]["eta_method"], "samples");
  std::printf("[determinism] %zu evaluations, final policy %s\n", ra["evaluated"].size(),
              ra["policy"]["hash"].get<std::string>().c_str());
}

TEST(PruneLocalTest, LlavaEvalOnArtifactReproducesReportAccuracy) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const json report = ReadJson(WorkDir() + "/main/report.json");
  EXPECT_EQ(report["accuracy_set"], "eval");
  // The artifact directory itself is accepted where a model directory is (its model/).
  const RunResult e =
      RunBin("llava-eval", {"--model=" + WorkDir() + "/main", "--samples=" + WorkDir() + "/eval",
                            "--json", "--threads=1"});
  ASSERT_EQ(e.code, 0) << e.err;
  const json ev = json::parse(e.out);
  ASSERT_TRUE(ev["accuracy"].is_number());
  EXPECT_EQ(ev["accuracy"].get<double>(), report["accuracy"].get<double>());
  EXPECT_EQ(ev["mean_loss"].get<double>(), report["pruned"]["loss"].get<double>());
  EXPECT_EQ(ev["samples_sha256"], report["provenance"]["eval_dataset_sha256"]);
  EXPECT_NE(e.err.find("is a prunesvc artifact: using its model directory"), std::string::npos)
      << e.err;
  // On the search set (whose token statistics the report's FLOPs use), llava-eval counts the
  // artifact's kept multiply-adds as the report does, and the dense count beside them.
  const RunResult s =
      RunBin("llava-eval", {"--model=" + WorkDir() + "/main", "--samples=" + WorkDir() + "/search",
                            "--json", "--threads=1"});
  ASSERT_EQ(s.code, 0) << s.err;
  const json sv = json::parse(s.out);
  const double pruned_flops = report["pruned"]["flops"].get<double>();
  const double dense_flops = report["dense"]["flops"].get<double>();
  EXPECT_NEAR(sv["gflops_per_sample"].get<double>() * 1e9, pruned_flops, 1e-9 * pruned_flops);
  EXPECT_NEAR(sv["dense_gflops_per_sample"].get<double>() * 1e9, dense_flops, 1e-9 * dense_flops);
  EXPECT_LT(pruned_flops, 0.6 * dense_flops);
  // The dense side was measured on the same set.
  EXPECT_EQ(report["dense"]["num_samples"], 24);
  EXPECT_EQ(report["pruned"]["num_samples"], 24);
  std::printf("[reload] accuracy %.4f (dense %.4f), loss %.4f (dense %.4f)\n",
              report["accuracy"].get<double>(), report["dense"]["accuracy"].get<double>(),
              report["pruned"]["loss"].get<double>(), report["dense"]["loss"].get<double>());
}

// The written weights: every decoder linear holds exactly out·(in − pruned_per_row) non-zeros
// (per policy.json), the FLOPs ratio meets the budget, and everything else is the input's
// (the projector is the trained one).
TEST(PruneLocalTest, ArtifactNonZerosMatchPolicyAndBudget) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const json report = ReadJson(WorkDir() + "/main/report.json");
  const json policy = ReadJson(WorkDir() + "/main/policy.json");
  EXPECT_EQ(report["policy"], policy);
  EXPECT_LE(report["flops_ratio"].get<double>(), 0.5);
  EXPECT_GE(report["flops_ratio"].get<double>(), 0.5 - 0.05);
  // The search scored exactly what was written: the policy's FLOPs (the search's model) equal
  // the FLOPs counted from the artifact's non-zeros.
  auto counted = ArtifactFlopsRatio(WorkDir() + "/main/model", WorkDir() + "/search");
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_NEAR(*counted, report["flops_ratio"].get<double>(), 1e-12);
  EXPECT_NEAR(*counted, policy["flops_ratio_nominal"].get<double>(), 1e-12);
  auto out = model::LoadCheckpoint(WorkDir() + "/main/model");
  ASSERT_TRUE(out.ok()) << out.status();
  auto in = model::LoadCheckpoint(WorkDir() + "/model32");
  ASSERT_TRUE(in.ok()) << in.status();
  std::set<std::string> linears;
  int64_t nonzero = 0;
  ASSERT_EQ(policy["units"].size(), 14u);
  for (const json& unit : policy["units"]) {
    for (const json& lin : unit["linears"]) {
      const std::string name = lin["name"];
      const at::Tensor& w = out->tensors.at(name);
      const int64_t k = lin["pruned_per_row"], o = lin["out_features"], i = lin["in_features"];
      const int64_t nnz = at::count_nonzero(w).item<int64_t>();
      EXPECT_EQ(nnz, o * (i - k)) << name;
      EXPECT_EQ(k, PrunedPerRow(unit["ratio"].get<double>(), i)) << name;  // no adjustment
      // Each row keeps exactly in − k weights: the per-row ratio holds.
      EXPECT_TRUE(
          at::equal(at::count_nonzero(w, at::IntArrayRef{1}), at::full({o}, i - k, at::kLong)))
          << name;
      // Kept weights are the input's values.
      const at::Tensor& d = in->tensors.at(name);
      EXPECT_TRUE(at::equal(w, d * (w != 0))) << name;
      nonzero += nnz;
      linears.insert(name);
    }
  }
  EXPECT_EQ(linears.size(), 14u);
  EXPECT_EQ(report["pruned"]["decoder_linear_nonzero"].get<int64_t>(), nonzero);
  ASSERT_EQ(in->tensors.size(), out->tensors.size());
  int changed_projector = 0;
  for (const auto& [name, t] : in->tensors) {
    if (linears.count(name)) continue;
    ASSERT_TRUE(out->tensors.count(name)) << name;
    if (absl::StartsWith(name, "multi_modal_projector.")) {
      changed_projector += at::equal(t, out->tensors.at(name)) ? 0 : 1;
    } else {
      EXPECT_TRUE(at::equal(t, out->tensors.at(name))) << name;
    }
  }
  EXPECT_GT(changed_projector, 0);  // the latest (trained) projector was written
  // The unused last vision layer (feature layer −2) is carried over from the input.
  EXPECT_TRUE(out->tensors.count("vision_tower.vision_model.encoder.layers.2.mlp.fc1.weight"));
}

TEST(PruneLocalTest, ManifestVerifiesWithSha256sum) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const std::string dir = WorkDir() + "/main";
  const std::string cmd = "cd '" + dir + "' && sha256sum --strict --quiet -c MANIFEST.sha256";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  // It covers every file but itself.
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) files += e.is_regular_file();
  const std::string manifest = ReadFile(dir + "/MANIFEST.sha256");
  EXPECT_EQ(std::count(manifest.begin(), manifest.end(), '\n'), files - 1);
  for (const char* f : {"report.json", "policy.json", "README.md", "model/model.safetensors",
                        "model/config.json", "model/tokenizer.model"}) {
    EXPECT_TRUE(absl::StrContains(manifest, absl::StrCat("  ", f, "\n"))) << f;
  }
  // And it detects a change.
  const std::string copy = WorkDir() + "/manifest_copy";
  fs::copy(dir, copy, fs::copy_options::recursive);
  { std::ofstream(copy + "/report.json", std::ios::app) << " "; }
  EXPECT_NE(
      std::system(
          ("cd '" + copy + "' && sha256sum --quiet -c MANIFEST.sha256 >/dev/null 2>&1").c_str()),
      0);
}

TEST(PruneLocalTest, ReportHasProvenanceAndModelCard) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const json r = ReadJson(WorkDir() + "/main/report.json");
  for (const char* k : {"model_sha256", "dataset_sha256", "eval_dataset_sha256", "seed", "threads",
                        "libraries", "cpu", "started_at", "finished_at", "wall_seconds"}) {
    EXPECT_TRUE(r["provenance"].contains(k)) << k;
  }
  EXPECT_EQ(r["provenance"]["model_sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(r["provenance"]["libraries"]["libtorch"], "1.13.0");
  for (const char* side : {"dense", "pruned"}) {
    for (const char* k : {"accuracy", "loss", "flops", "params", "latency_ms"}) {
      EXPECT_TRUE(r[side].contains(k)) << side << "." << k;
    }
  }
  EXPECT_LT(r["pruned"]["params"].get<int64_t>(), r["dense"]["params"].get<int64_t>());
  // The command line (shell-quoted), absolute dataset paths beside their hashes, and per
  // question type accuracy on both sides (issue 15).
  const std::string command = r["provenance"]["command_line"].get<std::string>();
  EXPECT_TRUE(absl::StrContains(command, "/prune-local --model=")) << command;
  EXPECT_TRUE(absl::StrContains(command, " --flops-budget=0.5 --unit=linear ")) << command;
  EXPECT_EQ(r["provenance"]["dataset"], WorkDir() + "/search");
  EXPECT_EQ(r["provenance"]["eval_dataset"], WorkDir() + "/eval");
  ASSERT_TRUE(r["dense"].contains("per_type")) << r["dense"].dump();
  ASSERT_TRUE(r["pruned"].contains("per_type")) << r["pruned"].dump();
  int typed = 0;
  for (const auto& [type, m] : r["pruned"]["per_type"].items()) {
    EXPECT_TRUE(r["dense"]["per_type"].contains(type)) << type;
    typed += m["num_samples"].get<int>();
  }
  EXPECT_EQ(typed, r["pruned"]["num_samples"].get<int>());
  EXPECT_EQ(r["history"].size(), 5u);
  EXPECT_EQ(r["final_mask_method"], "WANDA");
  const std::string card = ReadFile(WorkDir() + "/main/README.md");
  EXPECT_TRUE(absl::StrContains(card, "neither smaller on disk nor faster")) << card;
  EXPECT_TRUE(absl::StrContains(card, "| accuracy, ")) << card;  // the per-type rows
  // The summary table on stdout.
  EXPECT_TRUE(absl::StrContains(MainRun().out, "FLOPs ratio")) << MainRun().out;
  EXPECT_TRUE(absl::StrContains(MainRun().out, "latency ratio")) << MainRun().out;
  EXPECT_TRUE(absl::StrContains(MainRun().out, "layers.1.mlp.down_proj")) << MainRun().out;
}

// fp16 weights under transformers ≥ 4.52 names in → the same out; config and tokenizer files
// copied byte for byte. UNIFORM meets the budget within 0.02 and never above, counted from the
// artifact's real non-zeros, and the written FLOPs are exactly the ones its solver computed.
TEST(PruneLocalTest, UniformKeepsDtypeAndLayoutAndMeetsBudget) {
  ASSERT_FALSE(WorkDir().empty());
  for (double budget : {0.6, 0.45}) {
    const std::string out = absl::StrCat(WorkDir(), "/uniform", int(budget * 100));
    const RunResult r = RunBin(
        "prune-local", {"--model=" + WorkDir() + "/model16", "--samples=" + WorkDir() + "/search",
                        absl::StrCat("--flops-budget=", budget), "--strategy=UNIFORM",
                        "--final-mask-method=WANDA", "--threads=1", "--out=" + out});
    ASSERT_EQ(r.code, 0) << r.err;
    // Without an eval set the CLI warns that search-set accuracy overstates held-out accuracy.
    EXPECT_TRUE(absl::StrContains(r.err, "overstates")) << r.err;
    const json report = ReadJson(out + "/report.json");
    EXPECT_EQ(report["accuracy_set"], "search");
    auto counted = ArtifactFlopsRatio(out + "/model", WorkDir() + "/search");
    ASSERT_TRUE(counted.ok()) << counted.status();
    const double f = *counted;
    EXPECT_LE(f, budget);
    EXPECT_GE(f, budget - 0.02);
    EXPECT_NEAR(f, report["flops_ratio"].get<double>(), 1e-12);
    EXPECT_NEAR(f, report["policy"]["flops_ratio_nominal"].get<double>(), 1e-12);
    const double u = report["uniform_ratio"];
    for (const json& unit : report["policy"]["units"]) EXPECT_EQ(unit["ratio"].get<double>(), u);
    bool warned = false;
    for (const json& w : report["warnings"]) {
      warned |= absl::StrContains(w.get<std::string>(), "overstates");
    }
    EXPECT_TRUE(warned);
    // Every linear prunes exactly PrunedPerRow(u, in) weights per row: no after-the-fact
    // adjustment exists any more.
    EXPECT_FALSE(report.contains("rounding_adjustments"));
    for (const json& unit : report["policy"]["units"]) {
      for (const json& lin : unit["linears"]) {
        EXPECT_EQ(lin["pruned_per_row"].get<int64_t>(),
                  PrunedPerRow(u, lin["in_features"].get<int64_t>()))
            << lin["name"];
        EXPECT_FALSE(lin.contains("rounding_adjusted")) << lin["name"];
      }
    }
    EXPECT_EQ(report["history"].size(), 0u);
    EXPECT_FALSE(report["projector"]["trained"].get<bool>());
    const json header = SafetensorsHeader(out + "/model/model.safetensors");
    ASSERT_TRUE(header.is_object());
    int tensors = 0;
    for (const auto& [name, info] : header.items()) {
      if (name == "__metadata__") continue;
      ++tensors;
      EXPECT_EQ(info["dtype"], "F16") << name;
      EXPECT_FALSE(absl::StartsWith(name, "language_model.")) << name;
    }
    EXPECT_GT(tensors, 20);
    EXPECT_TRUE(header.contains("model.language_model.layers.0.self_attn.q_proj.weight"));
    EXPECT_TRUE(header.contains("lm_head.weight"));
    for (const char* f : {"config.json", "tokenizer.model", "tokenizer_config.json",
                          "added_tokens.json", "preprocessor_config.json"}) {
      EXPECT_EQ(ReadFile(out + "/model/" + f), ReadFile(WorkDir() + "/model16/" + f)) << f;
    }
    EXPECT_TRUE(absl::StrContains(ReadFile(out + "/model/config.json"), "prunesvc_fixture_note"));
    // The artifact is the same size as the input: unstructured zeros save no disk.
    const double in_size = fs::file_size(WorkDir() + "/model16/model.safetensors");
    EXPECT_NEAR(double(fs::file_size(out + "/model/model.safetensors")), in_size, 1024);
    // Reload: llava-eval on the search set reproduces the report.
    const RunResult e =
        RunBin("llava-eval", {"--model=" + out + "/model", "--samples=" + WorkDir() + "/search",
                              "--json", "--threads=1"});
    ASSERT_EQ(e.code, 0) << e.err;
    EXPECT_EQ(json::parse(e.out)["accuracy"], report["accuracy"]);
    std::printf("[uniform] budget %.2f: ratio %.6f, flops_ratio %.6f\n", budget, u, f);
  }
}

// RANDOM_SEARCH (η = 0, no projector training) with WANDA search masks and MAGNITUDE final
// masks: every row of every decoder linear keeps its largest-magnitude weights.
TEST(PruneLocalTest, RandomSearchWithMagnitudeFinalMasks) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/random";
  std::vector<std::string> flags = SearchFlags(out, 11);
  flags.push_back("--strategy=RANDOM_SEARCH");
  flags.push_back("--final-mask-method=MAGNITUDE");
  const RunResult r = RunBin("prune-local", flags);
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(out + "/report.json");
  EXPECT_EQ(report["strategy"], "RANDOM_SEARCH");
  EXPECT_EQ(report["eta"]["value"].get<double>(), 0.0);
  EXPECT_EQ(report["final_mask_method"], "MAGNITUDE");
  EXPECT_FALSE(report["projector"]["trained"].get<bool>());
  EXPECT_LE(report["flops_ratio"].get<double>(), 0.5);
  auto ckpt = model::LoadCheckpoint(out + "/model");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto in = model::LoadCheckpoint(WorkDir() + "/model32");
  ASSERT_TRUE(in.ok()) << in.status();
  int checked = 0;
  for (const json& unit : report["policy"]["units"]) {
    for (const json& lin : unit["linears"]) {
      if (lin["pruned_per_row"].get<int>() == 0) continue;
      const std::string name = lin["name"];
      const at::Tensor& w = ckpt->tensors.at(name);
      const at::Tensor d = in->tensors.at(name).abs();
      // Per row: the input's magnitudes at the pruned positions are ≤ the smallest kept one.
      const at::Tensor kept_min = at::where(w != 0, d, at::full_like(d, 1e30)).amin(1);
      const at::Tensor dropped_max = at::where(w == 0, d, at::zeros_like(d)).amax(1);
      EXPECT_TRUE(at::all(dropped_max <= kept_min).item<bool>()) << name;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// --audit: the search's evaluated policies re-scored on the search set and scored on the eval
// set. The audit must not change the job (same policy and weights as the main run, same seed);
// the chosen policy's held-out numbers equal the reloaded artifact's (final masks = search masks
// here); the Spearman ρ in the report equals a brute-force recomputation from the rows.
TEST(PruneLocalTest, AuditScoresEvaluatedPoliciesWithoutChangingTheJob) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const std::string out = WorkDir() + "/audit";
  std::vector<std::string> flags = SearchFlags(out, 7);
  flags.push_back("--audit=6");
  const RunResult r = RunBin("prune-local", flags);
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(out + "/report.json");
  const json main_report = ReadJson(WorkDir() + "/main/report.json");
  EXPECT_EQ(report["policy"], main_report["policy"]);
  EXPECT_EQ(ReadFile(out + "/model/model.safetensors"),
            ReadFile(WorkDir() + "/main/model/model.safetensors"));
  ASSERT_TRUE(report.contains("audit")) << report.dump().substr(0, 500);
  const json& audit = report["audit"];
  const json& rows = audit["policies"];
  ASSERT_GE(rows.size(), 6u);
  ASSERT_LE(rows.size(), 7u);  // 6 evenly spaced + the chosen one when it was not among them
  EXPECT_EQ(audit["num_eval_samples"], 24);
  EXPECT_EQ(audit["projector_version"], report["projector"]["version"]);
  int chosen = 0;
  std::vector<double> neg_fitness, acc;
  const double eta = report["eta"]["value"].get<double>();
  for (const json& row : rows) {
    const double loss = row["search_loss"], omega = row["omega"], fitness = row["fitness"];
    EXPECT_NEAR(fitness, loss + eta * omega / std::sqrt(16.0), 1e-9);
    EXPECT_LE(row["flops_ratio"].get<double>(), 0.5);
    neg_fitness.push_back(-fitness);
    acc.push_back(row["heldout_accuracy"].get<double>());
    if (row["chosen"].get<bool>()) {
      ++chosen;
      EXPECT_EQ(row["hash"], report["policy"]["hash"]);
      EXPECT_NEAR(loss, report["search"]["best"]["loss"].get<double>(), 1e-6);
      // In-process masked model vs the reloaded artifact (fp32 both ways).
      EXPECT_NEAR(row["heldout_loss"].get<double>(), report["pruned"]["loss"].get<double>(), 1e-5);
      EXPECT_EQ(row["heldout_accuracy"].get<double>(), report["accuracy"].get<double>());
    }
  }
  EXPECT_EQ(chosen, 1);
  // Brute-force Spearman: rank = #smaller + (#equal + 1)/2, then Pearson of the ranks.
  auto rank = [](const std::vector<double>& v) {
    std::vector<double> r;
    for (double a : v) {
      double less = 0, equal = 0;
      for (double b : v) {
        if (b < a) less += 1;
        if (b == a) equal += 1;
      }
      r.push_back(less + (equal + 1) / 2);
    }
    return r;
  };
  const std::vector<double> rx = rank(neg_fitness), ry = rank(acc);
  double mx = 0, my = 0;
  for (size_t i = 0; i < rx.size(); ++i) mx += rx[i] / rx.size(), my += ry[i] / ry.size();
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < rx.size(); ++i) {
    sxy += (rx[i] - mx) * (ry[i] - my);
    sxx += (rx[i] - mx) * (rx[i] - mx);
    syy += (ry[i] - my) * (ry[i] - my);
  }
  const json& rho = audit["spearman_neg_fitness_vs_heldout_accuracy"];
  // (Rounding in the means leaves ~1e-30 for a constant side.)
  if (sxx > 1e-9 && syy > 1e-9) {
    ASSERT_TRUE(rho.is_number()) << audit.dump();
    EXPECT_NEAR(rho.get<double>(), sxy / std::sqrt(sxx * syy), 1e-12);
  } else {
    EXPECT_TRUE(rho.is_null());
  }
  std::printf("[audit] %zu policies, rho(-J, held-out acc) %s\n", rows.size(), rho.dump().c_str());
}

// SPARSEGPT final masks (worker/prune/sparsegpt.h) under UNIFORM: every decoder linear prunes
// exactly out·PrunedPerRow(u, in) weights (spread over its rows adaptively), the kept weights are
// compensated (they differ from the input's), the budget holds on the artifact's real non-zeros,
// and llava-eval on the reloaded artifact reproduces the report's accuracy.
TEST(PruneLocalTest, UniformWithSparseGptFinalMasks) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/sparsegpt";
  const double budget = 0.6;
  const RunResult r = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=0.6", "--strategy=UNIFORM",  // SPARSEGPT by default
                      "--threads=1", "--out=" + out});
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(out + "/report.json");
  EXPECT_EQ(report["final_mask_method"], "SPARSEGPT");
  auto counted = ArtifactFlopsRatio(out + "/model", WorkDir() + "/search");
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_LE(*counted, budget);
  EXPECT_NEAR(*counted, report["flops_ratio"].get<double>(), 1e-12);
  auto ckpt = model::LoadCheckpoint(out + "/model");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto in = model::LoadCheckpoint(WorkDir() + "/model32");
  ASSERT_TRUE(in.ok()) << in.status();
  int compensated = 0, checked = 0;
  for (const json& unit : report["policy"]["units"]) {
    for (const json& lin : unit["linears"]) {
      const std::string name = lin["name"];
      const at::Tensor w = ckpt->tensors.at(name).to(at::kDouble);
      const at::Tensor d = in->tensors.at(name).to(at::kDouble);
      const int64_t out_f = lin["out_features"], in_f = lin["in_features"];
      const int64_t k = lin["pruned_per_row"];
      EXPECT_EQ(at::count_nonzero(w).item<int64_t>(), out_f * (in_f - k)) << name;
      if (k == 0) continue;
      ++checked;
      const double moved = at::where(w != 0, (w - d).abs(), at::zeros_like(d)).max().item<double>();
      compensated += moved > 1e-4;
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_EQ(compensated, checked);
  const RunResult e = RunBin(
      "llava-eval",
      {"--model=" + out + "/model", "--samples=" + WorkDir() + "/search", "--json", "--threads=1"});
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["accuracy"], report["accuracy"]);
}

TEST(PruneLocalTest, UnreachableBudgetExits2NamingTheSmallestBudget) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/unreachable";
  const RunResult r = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=0.2", "--threads=1", "--out=" + out});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "smallest reachable budget")) << r.err;
  // The dry run prints the same lower bound.
  const RunResult d = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=0.5", "--threads=1", "--dry-run"});
  ASSERT_EQ(d.code, 0) << d.err;
  const size_t at = d.out.find("reachable budget   [");
  ASSERT_NE(at, std::string::npos) << d.out;
  const std::string lower = d.out.substr(at + 20, 6);
  EXPECT_TRUE(absl::StrContains(r.err, "smallest reachable budget is " + lower))
      << lower << " vs " << r.err;
  // One rounding rule: the printed bound, passed back as the budget, is reachable (issue 15:
  // it used to print the bound rounded to nearest, which the budget check then refused).
  const RunResult at_bound = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=" + lower, "--threads=1", "--dry-run"});
  ASSERT_EQ(at_bound.code, 0) << at_bound.err;
  EXPECT_TRUE(absl::StrContains(at_bound.out, ": reachable\n")) << at_bound.out;
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(WorkDir())) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), "unreachable.partial"));
  }
}

// Issue 15's rough edges on one UNIFORM run: an --eval-samples with the search set's content is
// reported as search-set accuracy (with a warning); the OUT.partial-PID of a run that is gone is
// removed (a live run's is kept); UNIFORM's model card says no search ran and lists the warnings.
TEST(PruneLocalTest, EvalEqualToSearchStalePartialsAndUniformCard) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string copy = WorkDir() + "/search-copy";
  fs::remove_all(copy);
  fs::copy(WorkDir() + "/search", copy, fs::copy_options::recursive);
  const std::string out = WorkDir() + "/edges";
  // A dead pid: a child that has exited and been reaped.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  waitpid(dead, nullptr, 0);
  const std::string stale = absl::StrCat(out, ".partial-", dead);
  const std::string live = absl::StrCat(out, ".partial-", getpid());
  fs::create_directories(stale + "/model");
  fs::create_directories(live);
  const RunResult r = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model16", "--samples=" + WorkDir() + "/search",
                      "--eval-samples=" + copy, "--flops-budget=0.6", "--strategy=UNIFORM",
                      "--final-mask-method=WANDA", "--threads=1", "--out=" + out});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live));
  fs::remove_all(live);
  EXPECT_TRUE(absl::StrContains(r.err, "removed " + stale)) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "has the search set's content")) << r.err;

  const json report = ReadJson(out + "/report.json");
  EXPECT_EQ(report["accuracy_set"], "search");
  EXPECT_TRUE(report["provenance"]["eval_dataset_sha256"].is_null());
  ASSERT_FALSE(report["warnings"].empty());
  EXPECT_TRUE(absl::StrContains(report["warnings"][0].get<std::string>(), copy));
  const std::string card = ReadFile(out + "/README.md");
  EXPECT_TRUE(absl::StrContains(card, "**UNIFORM** (no search; WANDA masks)")) << card;
  EXPECT_FALSE(absl::StrContains(card, "search masks")) << card;
  EXPECT_FALSE(absl::StrContains(card, "the search optimised")) << card;
  EXPECT_TRUE(absl::StrContains(card, "which calibrated the masks")) << card;
  EXPECT_TRUE(absl::StrContains(card, "## Warnings\n\n- **--eval-samples " + copy)) << card;

  // The same OUT again: refused without --force (the message names it); with --force (and enum
  // values in lower case) the new artifact replaces the old one.
  std::vector<std::string> again = {"--model=" + WorkDir() + "/model16",
                                    "--samples=" + WorkDir() + "/search",
                                    "--flops-budget=0.6",
                                    "--strategy=uniform",
                                    "--final-mask-method=magnitude",
                                    "--granularity=unstructured",
                                    "--unit=LAYER",
                                    "--threads=1",
                                    "--out=" + out};
  const RunResult refused = RunBin("prune-local", again);
  EXPECT_EQ(refused.code, 2);
  EXPECT_TRUE(absl::StrContains(refused.err, "--force")) << refused.err;
  EXPECT_EQ(ReadJson(out + "/report.json")["final_mask_method"], "WANDA");
  again.push_back("--force");
  const RunResult forced = RunBin("prune-local", again);
  ASSERT_EQ(forced.code, 0) << forced.err;
  const json replaced = ReadJson(out + "/report.json");
  EXPECT_EQ(replaced["final_mask_method"], "MAGNITUDE");
  EXPECT_EQ(replaced["strategy"], "UNIFORM");
  EXPECT_EQ(replaced["accuracy_set"], "search");
  for (const auto& e : fs::directory_iterator(WorkDir())) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), "edges.replaced-"));
  }
}

TEST(AccuracyWarningTest, NearChanceAndFarBelowDense) {
  // 4-option questions: chance 0.25; within 10 points of it is near chance.
  auto near = AccuracyWarning(0.28, 0.95, 0.25, "eval");
  ASSERT_TRUE(near.has_value());
  EXPECT_TRUE(absl::StrContains(*near, "near chance: accuracy 0.280 against 0.250")) << *near;
  EXPECT_TRUE(AccuracyWarning(0.35, 0.40, 0.25, "eval").has_value());   // 0.35 ≤ 0.25 + 0.10
  EXPECT_FALSE(AccuracyWarning(0.36, 0.40, 0.25, "eval").has_value());  // and not far below
  auto below = AccuracyWarning(0.80, 0.95, 0.25, "search");
  ASSERT_TRUE(below.has_value());
  EXPECT_TRUE(absl::StrContains(*below, "lost 15.0 accuracy points")) << *below;
  EXPECT_FALSE(AccuracyWarning(0.86, 0.95, 0.25, "eval").has_value());
  EXPECT_FALSE(AccuracyWarning(0.30, std::nullopt, std::nullopt, "eval").has_value());
}

TEST(PruneLocalTest, NonEmptyOutExits2AndIsUntouched) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/occupied";
  fs::create_directories(out);
  { std::ofstream(out + "/keep.txt") << "mine"; }
  const RunResult r = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=0.5", "--strategy=UNIFORM", "--threads=1", "--out=" + out});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "not empty")) << r.err;
  EXPECT_EQ(ReadFile(out + "/keep.txt"), "mine");
  EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator()), 1);
  // An existing EMPTY directory is fine: it becomes the artifact.
  const std::string empty = WorkDir() + "/empty_out";
  fs::create_directories(empty);
  const RunResult ok = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=0.5", "--strategy=UNIFORM", "--threads=1", "--out=" + empty});
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_TRUE(fs::exists(empty + "/report.json"));
}

TEST(PruneLocalTest, BadFlagsExit2) {
  ASSERT_FALSE(WorkDir().empty());
  const std::vector<std::string> base = {"--model=" + WorkDir() + "/model32",
                                         "--samples=" + WorkDir() + "/search", "--threads=1",
                                         "--out=" + WorkDir() + "/never"};
  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--flops-budget=0.5", "--strategy=FOO"}, "--strategy"},
      {{"--flops-budget=0.5", "--strategy=OWL", "--unit=linear"},
       "--unit must be LAYER with strategy OWL"},
      {{"--flops-budget=0.7", "--granularity=BLOCK"}, "--granularity"},
      {{"--flops-budget=0.7", "--granularity=N_M", "--nm=3:4"}, "--nm must be 2:4 or 4:8"},
      {{"--flops-budget=0.7", "--nm=2:4"}, "only valid with --granularity N_M"},
      {{"--flops-budget=0.7", "--granularity=N_M", "--ratio-choices=0,0.5"},
       "--ratio-choices does not apply"},
      {{"--flops-budget=0.5", "--mask-method=SPARSEGPT"}, "--mask-method a SPARSEGPT search mask"},
      {{"--flops-budget=1.5"}, "--flops-budget"},
      {{}, "--flops-budget is required"},
      {{"--flops-budget=0.5", "--eta=-1"}, "--eta"},
      {{"--flops-budget=0.5", "--ratio-choices=0.5,0.2"}, "--ratio-choices"},
      {{"--flops-budget=0.5", "--parents=40"}, "--parents must be in [2, population)"},
      {{"--flops-budget=0.5", "--parents=1"}, "--parents must be in [2, population)"},
      {{"--flops-budget=0.5", "--population=3"}, "--population must be in [4, 1024]"},
      {{"--flops-budget=0.5", "--generations=0"}, "--generations must be in [1, 1000]"},
      {{"--flops-budget=0.5", "--mutation=2"}, "--mutation must be in [0, 1]"},
      {{"--flops-budget=0.5", "--projector-steps=-1"}, "--projector-steps must be in"},
      {{"--flops-budget=0.5", "--unit=head"}, "--unit"},
      {{"--flops-budget=0.5", "--audit=3"}, "--audit needs --eval-samples"},
      {{"--flops-budget=0.5", "--audit=-1"}, "--audit must be"},
      {{"--flops-budget=0.5", "--eval-samples=" + WorkDir() + "/eval", "--strategy=OWL",
        "--audit=3"},
       "--audit needs a searching strategy"},
      {{"--flops-budget=0.5", "--granularity=structural"}, "--granularity"},
      {{"--flops-budget=0.5", "--device=gpu"}, "expected cpu, cuda or cuda:N"},
      {{"--flops-budget=0.5", "--granularity=STRUCTURED", "--unit=linear"},
       "--unit must be LAYER with granularity STRUCTURED"},
      {{"--flops-budget=0.5", "--granularity=STRUCTURED", "--final-mask-method=WANDA"},
       "--final-mask-method WANDA does not apply to --granularity STRUCTURED"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> flags = base;
    flags.insert(flags.end(), c.flags.begin(), c.flags.end());
    const RunResult r = RunBin("prune-local", flags);
    EXPECT_EQ(r.code, 2) << c.message << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.message)) << c.message << ": " << r.err;
  }
  // Bad input files: a missing samples directory.
  const RunResult missing = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/nope",
                      "--flops-budget=0.5", "--out=" + WorkDir() + "/never"});
  EXPECT_EQ(missing.code, 2) << missing.err;
  EXPECT_FALSE(fs::exists(WorkDir() + "/never"));
}

// F(artifact)/F(input) for STRUCTURED artifacts, counted here: the FLOPs model on each model's
// own (per-layer) dims with the search samples' token statistics. Independent of report.json.
absl::StatusOr<double> ShapeFlopsRatio(const std::string& artifact, const std::string& input,
                                       const std::string& samples_path) {
  double f[2];
  int i = 0;
  for (const std::string& dir : {artifact, input}) {
    ASSIGN_OR_RETURN(auto bundle, model::LoadLlavaBundle(dir));
    ASSIGN_OR_RETURN(FlopsBreakdown b, DenseFlopsOn(*bundle, samples_path));
    f[i++] = b.Total();
  }
  return f[0] / f[1];
}

// STRUCTURED (#6): a short EFFICIENTLLAVA search (with projector training) on the F16 / ≥ 4.52
// names model. The artifact's tensors are physically shrunk to the per-layer sizes config.json
// records (in the input's dtype and names), the sizes follow the floor rule, the FLOPs ratio
// counted from the shapes is the report's and meets the budget, llava-eval reproduces the
// accuracy, and the artifact can itself be pruned again (per-layer input sizes).
TEST(PruneLocalTest, StructuredArtifactIsShrunkAndReloads) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/structured";
  const RunResult r = RunBin(
      "prune-local",
      {"--model=" + WorkDir() + "/model16", "--samples=" + WorkDir() + "/search",
       "--eval-samples=" + WorkDir() + "/eval", "--flops-budget=0.7", "--granularity=STRUCTURED",
       "--seed=3", "--population=6", "--parents=3", "--generations=2", "--projector-every=2",
       "--projector-steps=3", "--threads=1", "--out=" + out});
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(out + "/report.json");
  const json policy = ReadJson(out + "/policy.json");
  EXPECT_EQ(report["granularity"], "STRUCTURED");
  EXPECT_EQ(policy["granularity"], "STRUCTURED");
  EXPECT_EQ(report["projector"]["version"], 1);
  const json config = ReadJson(out + "/model/config.json");
  const json& tc = config["text_config"];
  EXPECT_EQ(config["prunesvc_fixture_note"], "kept verbatim");
  ASSERT_EQ(tc["prunesvc_intermediate_sizes"].size(), 2u);
  ASSERT_EQ(tc["prunesvc_num_heads"].size(), 2u);
  const int hidden = tc["hidden_size"], head_dim = hidden / tc["num_attention_heads"].get<int>();
  const int groups = tc["num_attention_heads"].get<int>() / tc["num_key_value_heads"].get<int>();
  const json header = SafetensorsHeader(out + "/model/model.safetensors");
  ASSERT_TRUE(header.is_object());
  bool any_shrunk = false;
  for (int l = 0; l < 2; ++l) {
    const json& unit = policy["units"][l];
    const double ratio = unit["ratio"];
    const int I = tc["prunesvc_intermediate_sizes"][l], heads = tc["prunesvc_num_heads"][l];
    EXPECT_EQ(I, 96 - PrunedPerRow(ratio, 96)) << l;
    EXPECT_EQ(heads, 4 - groups * int(PrunedPerRow(ratio, 2))) << l;
    EXPECT_EQ(unit["intermediate_size_pruned"], I);
    EXPECT_EQ(unit["num_heads_pruned"], heads);
    EXPECT_EQ(unit["removed_channels"].size(), size_t(96 - I));
    any_shrunk |= I < 96;
    const std::string p = absl::StrCat("model.language_model.layers.", l, ".");
    auto shape = [&](const std::string& name) { return header.at(p + name + ".weight")["shape"]; };
    EXPECT_EQ(shape("mlp.gate_proj"), json({I, hidden}));
    EXPECT_EQ(shape("mlp.up_proj"), json({I, hidden}));
    EXPECT_EQ(shape("mlp.down_proj"), json({hidden, I}));
    EXPECT_EQ(shape("self_attn.q_proj"), json({heads * head_dim, hidden}));
    EXPECT_EQ(shape("self_attn.k_proj"), json({heads / groups * head_dim, hidden}));
    EXPECT_EQ(shape("self_attn.o_proj"), json({hidden, heads * head_dim}));
    EXPECT_EQ(header.at(p + "mlp.gate_proj.weight")["dtype"], "F16");
  }
  EXPECT_TRUE(any_shrunk);
  EXPECT_LT(fs::file_size(out + "/model/model.safetensors"),
            fs::file_size(WorkDir() + "/model16/model.safetensors"));
  EXPECT_LT(report["pruned"]["params"].get<int64_t>(), report["dense"]["params"].get<int64_t>());
  auto counted = ShapeFlopsRatio(out + "/model", WorkDir() + "/model16", WorkDir() + "/search");
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_LE(*counted, 0.7);
  EXPECT_NEAR(*counted, report["flops_ratio"].get<double>(), 1e-12);
  EXPECT_EQ(report["flops_ratio"], policy["flops_ratio_nominal"]);
  const RunResult e = RunBin(
      "llava-eval",
      {"--model=" + out + "/model", "--samples=" + WorkDir() + "/eval", "--json", "--threads=1"});
  ASSERT_EQ(e.code, 0) << e.err;
  const json ev = json::parse(e.out);
  EXPECT_EQ(ev["accuracy"], report["accuracy"]);
  EXPECT_EQ(ev["mean_loss"].get<double>(), report["pruned"]["loss"].get<double>());
  EXPECT_TRUE(absl::StrContains(ReadFile(out + "/README.md"), "structured pruning saves"));
  std::printf(
      "[structured] flops_ratio %.6f, sizes %s heads %s, accuracy %.4f (dense %.4f), "
      "latency ratio %.3f\n",
      *counted, tc["prunesvc_intermediate_sizes"].dump().c_str(),
      tc["prunesvc_num_heads"].dump().c_str(), report["accuracy"].get<double>(),
      report["dense"]["accuracy"].get<double>(), report["latency_ratio"].get<double>());

  // The shrunk artifact as input: UNIFORM STRUCTURED again, from its per-layer sizes.
  const std::string again = WorkDir() + "/structured2";
  const RunResult r2 =
      RunBin("prune-local", {"--model=" + out + "/model", "--samples=" + WorkDir() + "/search",
                             "--flops-budget=0.8", "--granularity=STRUCTURED", "--strategy=UNIFORM",
                             "--threads=1", "--out=" + again});
  ASSERT_EQ(r2.code, 0) << r2.err;
  const json report2 = ReadJson(again + "/report.json");
  auto counted2 = ShapeFlopsRatio(again + "/model", out + "/model", WorkDir() + "/search");
  ASSERT_TRUE(counted2.ok()) << counted2.status();
  EXPECT_LE(*counted2, 0.8);
  EXPECT_NEAR(*counted2, report2["flops_ratio"].get<double>(), 1e-12);
  const json tc2 = ReadJson(again + "/model/config.json")["text_config"];
  for (int l = 0; l < 2; ++l) {
    const int before = tc["prunesvc_intermediate_sizes"][l];
    const double u = report2["uniform_ratio"];
    EXPECT_EQ(tc2["prunesvc_intermediate_sizes"][l], before - PrunedPerRow(u, before)) << l;
  }
}

// SIGTERM / SIGINT during the search: exit 128 + signal, no OUT and no partial directory.
TEST(PruneLocalTest, SignalDuringSearchLeavesNothing) {
  ASSERT_FALSE(WorkDir().empty());
  for (int sig : {SIGTERM, SIGINT}) {
    const std::string parent = absl::StrCat(WorkDir(), "/signal", sig);
    fs::create_directories(parent);
    std::vector<std::string> args = {BinDir() + "/prune-local"};
    for (std::string f : SearchFlags(parent + "/out", 3)) {
      if (absl::StartsWith(f, "--generations=")) f = "--generations=1000";
      args.push_back(f);
    }
    const std::string err = parent + ".err";
    const pid_t pid = Spawn(args, parent + ".out", err);
    // Wait until generation 1 finished (the search is running), then signal.
    bool searching = false;
    for (int i = 0; i < 1200 && !searching; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      searching = absl::StrContains(ReadFile(err), "generation 1/1000");
    }
    ASSERT_TRUE(searching) << ReadFile(err);
    EXPECT_TRUE(fs::exists(absl::StrCat(parent, "/out.partial-", pid)));
    kill(pid, sig);
    EXPECT_EQ(Wait(pid), 128 + sig) << ReadFile(err);
    // Only the resume state is left (prune-local --resume continues from it).
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(parent)) {
      left.push_back(e.path().filename().string());
    }
    EXPECT_EQ(left, std::vector<std::string>{"out.search-state.json"}) << "left in " << parent;
  }
}

// prune-local --policy: the main run's policy.json re-applied with another final mask method, no
// search; bad policies name the field. --model may be an artifact directory (its model/).
TEST(PruneLocalTest, GivenPolicyIsAppliedWithoutSearch) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const std::string policy = WorkDir() + "/main/policy.json";
  const json searched = ReadJson(policy);
  std::vector<std::string> flags = {"--model=" + WorkDir() + "/model32",
                                    "--samples=" + WorkDir() + "/search",
                                    "--flops-budget=0.5",
                                    "--unit=linear",
                                    "--final-mask-method=MAGNITUDE",
                                    "--threads=1",
                                    "--policy=" + policy,
                                    "--out=" + WorkDir() + "/given"};
  const RunResult r = RunBin("prune-local", flags);
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(WorkDir() + "/given/report.json");
  const json applied = ReadJson(WorkDir() + "/given/policy.json");
  EXPECT_EQ(report["strategy"], "GIVEN_POLICY");
  EXPECT_EQ(report["given_policy"]["path"], policy);
  EXPECT_EQ(report["evaluated"].size(), 0u);
  EXPECT_EQ(applied["final_mask_method"], "MAGNITUDE");
  ASSERT_EQ(applied["units"].size(), searched["units"].size());
  for (size_t u = 0; u < applied["units"].size(); ++u) {
    EXPECT_EQ(applied["units"][u]["ratio"], searched["units"][u]["ratio"]) << u;
    EXPECT_EQ(applied["units"][u]["linears"][0]["pruned_per_row"],
              searched["units"][u]["linears"][0]["pruned_per_row"]);
  }
  EXPECT_EQ(applied["flops_ratio_nominal"], searched["flops_ratio_nominal"]);
  EXPECT_TRUE(absl::StrContains(ReadFile(WorkDir() + "/given/README.md"), "(--policy)"));
  // The artifact itself as --model: its model/ (already pruned), the same policy on top.
  std::vector<std::string> from_artifact = flags;
  from_artifact[0] = "--model=" + WorkDir() + "/given";
  from_artifact.back() = "--out=" + WorkDir() + "/given-again";
  const RunResult again = RunBin("prune-local", from_artifact);
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_TRUE(absl::StrContains(again.err, "is a prunesvc artifact")) << again.err;

  // Bad policies: another unit, a budget below the policy's FLOPs, a bad ratio.
  auto with = [&](const std::string& flag, const std::string& value) {
    std::vector<std::string> f = flags;
    for (std::string& x : f) {
      if (absl::StartsWith(x, flag + "=")) x = flag + "=" + value;
    }
    f.back() = "--out=" + WorkDir() + "/given-bad";  // refused before anything is written
    return f;
  };
  const RunResult layer = RunBin("prune-local", with("--unit", "layer"));
  EXPECT_EQ(layer.code, 2);
  EXPECT_TRUE(absl::StrContains(layer.err, "differs from --unit layer")) << layer.err;
  const RunResult budget = RunBin("prune-local", with("--flops-budget", "0.42"));
  EXPECT_EQ(budget.code, 2);
  EXPECT_TRUE(absl::StrContains(budget.err, "above --flops-budget 0.42")) << budget.err;
  json broken = searched;
  broken["units"][2]["ratio"] = 1.5;
  const std::string broken_path = WorkDir() + "/broken-policy.json";
  std::ofstream(broken_path) << broken.dump();
  const RunResult ratio = RunBin("prune-local", with("--policy", broken_path));
  EXPECT_EQ(ratio.code, 2);
  EXPECT_TRUE(absl::StrContains(ratio.err, "units[2].ratio: expected a number in [0, "))
      << ratio.err;
  std::ofstream(broken_path) << "{\"format\": ";
  const RunResult truncated = RunBin("prune-local", with("--policy", broken_path));
  EXPECT_EQ(truncated.code, 2);
  EXPECT_TRUE(absl::StrContains(truncated.err, "not valid JSON")) << truncated.err;
  // Wrong types are errors naming the field, not exceptions (exit 2, not 1).
  broken = searched;
  broken["units"][0]["name"] = 5;
  std::ofstream(broken_path) << broken.dump();
  const RunResult typed = RunBin("prune-local", with("--policy", broken_path));
  EXPECT_EQ(typed.code, 2) << typed.err;
  EXPECT_TRUE(absl::StrContains(typed.err, "units[0].name: expected")) << typed.err;
  EXPECT_FALSE(fs::exists(WorkDir() + "/given-bad"));
}

// prune-local --resume after SIGINT at a generation boundary ends with the same policy, the same
// artifact bytes and the same evaluated sequence as an uninterrupted run (issue 15).
TEST(PruneLocalTest, ResumeAfterSigintEqualsAnUninterruptedRun) {
  ASSERT_FALSE(WorkDir().empty());
  auto flags = [](const std::string& out) {
    std::vector<std::string> f;
    for (std::string flag : SearchFlags(out, 11)) {
      if (absl::StartsWith(flag, "--generations=")) flag = "--generations=8";
      if (absl::StartsWith(flag, "--projector-every=")) flag = "--projector-every=0";
      f.push_back(flag);
    }
    return f;
  };
  const std::string whole = WorkDir() + "/resume-whole", cut = WorkDir() + "/resume-cut";
  const RunResult a = RunBin("prune-local", flags(whole));
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_FALSE(fs::exists(whole + ".search-state.json"));  // removed on success
  // --keep-search-state keeps it: the finished search, with the per-sample losses of its whole
  // evaluations and its PAIRED reference, which scripts/paired_pick.py reads.
  const std::string kept = WorkDir() + "/resume-kept";
  std::vector<std::string> keep_flags = flags(kept);
  keep_flags.push_back("--keep-search-state");
  const RunResult k = RunBin("prune-local", keep_flags);
  ASSERT_EQ(k.code, 0) << k.err;
  const json state = ReadJson(kept + ".search-state.json");
  EXPECT_TRUE(state["search"]["done"].get<bool>());
  EXPECT_FALSE(state["search"]["reference"].empty());
  int whole_results = 0;
  for (const json& e : state["search"]["cache"]) {
    if (!e.contains("samples_scored")) {
      EXPECT_EQ(e["sample_losses"].size(), state["search"]["config"]["num_samples"].get<size_t>());
      ++whole_results;
    }
  }
  EXPECT_GT(whole_results, 0);
  const RunResult report =
      RunArgs({Python(), Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR) + "/scripts/paired_pick.py",
               kept + ".search-state.json"});
  EXPECT_EQ(report.code, 0) << report.err;
  EXPECT_TRUE(absl::StrContains(report.out, "t =")) << report.out;
  // Anything else is refused, naming the file.
  const RunResult bad =
      RunArgs({Python(), Env("PRUNESVC_SOURCE", PRUNESVC_SOURCE_DIR) + "/scripts/paired_pick.py",
               kept + "/report.json"});
  EXPECT_EQ(bad.code, 1);
  EXPECT_TRUE(absl::StrContains(bad.err, "not a finished prune-local search state")) << bad.err;

  std::vector<std::string> args = {BinDir() + "/prune-local"};
  for (const std::string& f : flags(cut)) args.push_back(f);
  const std::string err = cut + ".interrupted.err";
  const pid_t pid = Spawn(args, cut + ".interrupted.out", err);
  // The state appears after the first generation: interrupt then.
  bool saved = false;
  for (int i = 0; i < 6000 && !saved; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    saved = fs::exists(cut + ".search-state.json");
  }
  ASSERT_TRUE(saved) << ReadFile(err);
  kill(pid, SIGINT);
  ASSERT_EQ(Wait(pid), 130) << ReadFile(err);
  EXPECT_FALSE(fs::exists(cut));
  ASSERT_TRUE(fs::exists(cut + ".search-state.json"));

  // With other flags, --resume is refused (and the saved state is left as it was).
  std::vector<std::string> other = flags(cut);
  other.push_back("--resume");
  for (std::string& f : other) {
    if (absl::StartsWith(f, "--seed=")) f = "--seed=12";
  }
  const RunResult refused = RunBin("prune-local", other);
  EXPECT_EQ(refused.code, 2) << refused.err;
  EXPECT_TRUE(absl::StrContains(refused.err, "saved with other search flags")) << refused.err;

  std::vector<std::string> again = flags(cut);
  again.push_back("--resume");
  const RunResult b = RunBin("prune-local", again);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_TRUE(absl::StrContains(b.err, "--resume: continuing the search at generation ")) << b.err;
  EXPECT_FALSE(fs::exists(cut + ".search-state.json"));
  EXPECT_EQ(ReadFile(whole + "/policy.json"), ReadFile(cut + "/policy.json"));
  EXPECT_EQ(ReadFile(whole + "/model/model.safetensors"),
            ReadFile(cut + "/model/model.safetensors"));
  const json ra = ReadJson(whole + "/report.json"), rb = ReadJson(cut + "/report.json");
  EXPECT_EQ(ra["evaluated"], rb["evaluated"]);
  EXPECT_EQ(ra["history"], rb["history"]);
  EXPECT_EQ(ra["policy"], rb["policy"]);

  // A malformed state file is refused naming it (exit 2), whatever its shape.
  const std::string bad_out = WorkDir() + "/resume-bad";
  std::vector<std::string> bad_flags = flags(bad_out);
  bad_flags.push_back("--resume");
  for (const std::string& bad :
       {std::string("{\"format\": "), std::string("[1, 2]"),
        std::string("{\"format\": 7, \"model_dir\": []}"),
        absl::StrCat("{\"format\": \"prunesvc.prune-local.resume.v1\", \"model_dir\": \"",
                     WorkDir(), "/model32\", \"dataset_sha256\": 3, \"search\": []}")}) {
    std::ofstream(bad_out + ".search-state.json") << bad;
    const RunResult r = RunBin("prune-local", bad_flags);
    EXPECT_EQ(r.code, 2) << bad << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "--resume: " + bad_out + ".search-state.json: "))
        << bad << ": " << r.err;
    EXPECT_FALSE(fs::exists(bad_out));
  }
  fs::remove(bad_out + ".search-state.json");

  // --resume with projector training is refused up front (the projector is not saved).
  std::vector<std::string> with_projector = flags(WorkDir() + "/resume-projector");
  with_projector.push_back("--resume");
  with_projector.push_back("--projector-every=2");
  const RunResult p = RunBin("prune-local", with_projector);
  EXPECT_EQ(p.code, 2);
  EXPECT_TRUE(absl::StrContains(p.err, "--resume needs --projector-every 0")) << p.err;
}

TEST(PruneLocalTest, DryRunPrintsRangeAndWritesNothing) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/dry";
  const RunResult r = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--eval-samples=" + WorkDir() + "/eval", "--flops-budget=0.5",
                      "--unit=linear", "--threads=1", "--dry-run", "--out=" + out});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* s :
       {"reachable budget", "dense FLOPs/sample", "estimated time", "estimated memory",
        "layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "eval samples       24"}) {
    EXPECT_TRUE(absl::StrContains(r.out, s)) << s << " in\n" << r.out;
  }
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(WorkDir())) {
    EXPECT_FALSE(absl::StrContains(e.path().filename().string(), "dry.partial"));
  }
  // One parameter count everywhere: the dry run's is report.json's dense count (issue 15: it
  // printed the tensors the model runs, fewer than the weight files hold).
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const json report = ReadJson(WorkDir() + "/main/report.json");
  const std::string count =
      absl::StrCat("(", report["dense"]["params"].get<int64_t>(), " parameters; ");
  EXPECT_TRUE(absl::StrContains(r.out, count)) << count << " in\n" << r.out;
}

// ---------------------------------------------------------------------------------------------
// N:M granularity and the OWL strategy.

// Checks an N:M artifact against the input: every linear the policy prunes keeps exactly N of
// every M consecutive weights of every row (so non-zeros = N/M of its weights), the others are
// the input's; returns the number of pruned linears.
int CheckNmArtifact(const std::string& out, const json& report, int n, int m) {
  auto ckpt = model::LoadCheckpoint(out + "/model");
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto in = model::LoadCheckpoint(WorkDir() + "/model32");
  EXPECT_TRUE(in.ok()) << in.status();
  if (!ckpt.ok() || !in.ok()) return -1;
  int pruned = 0;
  for (const json& unit : report["policy"]["units"]) {
    for (const json& lin : unit["linears"]) {
      const std::string name = lin["name"];
      const at::Tensor& w = ckpt->tensors.at(name);
      const int64_t o = lin["out_features"], i = lin["in_features"], k = lin["pruned_per_row"];
      if (unit["ratio"].get<double>() == 0) {
        EXPECT_EQ(k, 0) << name;
        EXPECT_TRUE(at::equal(w, in->tensors.at(name))) << name;
        continue;
      }
      ++pruned;
      EXPECT_EQ(k, i / m * (m - n)) << name;
      const at::Tensor per_group = (w != 0).to(at::kLong).reshape({o, i / m, m}).sum(2);
      EXPECT_TRUE((per_group == n).all().item<bool>()) << name;
      EXPECT_EQ(at::count_nonzero(w).item<int64_t>() * m, o * i * n) << name;
    }
  }
  return pruned;
}

// The smallest reachable budget the dry run prints.
double DryRunFloor(const std::vector<std::string>& extra) {
  std::vector<std::string> flags = {"--model=" + WorkDir() + "/model32",
                                    "--samples=" + WorkDir() + "/search", "--flops-budget=1",
                                    "--threads=1", "--dry-run"};
  flags.insert(flags.end(), extra.begin(), extra.end());
  const RunResult d = RunBin("prune-local", flags);
  EXPECT_EQ(d.code, 0) << d.err;
  const size_t at = d.out.find("reachable budget   [");
  if (at == std::string::npos) return -1;
  return std::stod(d.out.substr(at + 20, 6));
}

// The N:M floor: every unit N:M. The dry run names it; a budget below it exits 2 with that number
// and the N:M explanation (the real run and --dry-run alike); at the floor, UNIFORM (every unit
// N:M) with SPARSEGPT final masks writes an artifact whose every decoder linear is N:M and whose
// flops_ratio counts the real non-zeros.
TEST(PruneLocalNmTest, FloorAndUniformWithSparseGpt) {
  ASSERT_FALSE(WorkDir().empty());
  for (const char* nm : {"2:4", "4:8"}) {
    const int n = nm[0] - '0', m = nm[2] - '0';
    const double floor = DryRunFloor({"--granularity=N_M", std::string("--nm=") + nm});
    ASSERT_GT(floor, 0.3);
    ASSERT_LT(floor, 0.9);
    const RunResult low = RunBin(
        "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                        absl::StrCat("--flops-budget=", floor - 0.01), "--granularity=N_M",
                        std::string("--nm=") + nm, "--strategy=UNIFORM", "--threads=1",
                        "--out=" + WorkDir() + "/nm_low"});
    EXPECT_EQ(low.code, 2) << low.err;
    EXPECT_TRUE(absl::StrContains(low.err, "N:M alone cannot go below")) << low.err;
    EXPECT_TRUE(absl::StrContains(low.err, absl::StrFormat("%.4f", floor))) << low.err;
    EXPECT_FALSE(fs::exists(WorkDir() + "/nm_low"));
    // --dry-run gives the same N:M explanation (exit 2).
    const RunResult dry = RunBin(
        "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                        absl::StrCat("--flops-budget=", floor - 0.01), "--granularity=N_M",
                        std::string("--nm=") + nm, "--threads=1", "--dry-run"});
    EXPECT_EQ(dry.code, 2) << dry.err;
    EXPECT_TRUE(absl::StrContains(dry.err, "N:M alone cannot go below")) << dry.err;

    const std::string out = absl::StrCat(WorkDir(), "/nm_uniform_", n, m);
    const RunResult r = RunBin(
        "prune-local",
        {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
         absl::StrCat("--flops-budget=", floor), "--granularity=N_M", std::string("--nm=") + nm,
         "--strategy=UNIFORM", "--threads=1", "--out=" + out});  // SPARSEGPT by default
    ASSERT_EQ(r.code, 0) << r.err;
    const json report = ReadJson(out + "/report.json");
    const json policy = ReadJson(out + "/policy.json");
    EXPECT_EQ(report["granularity"], "N_M");
    EXPECT_EQ(report["nm"], nm);
    EXPECT_EQ(policy["granularity"], "N_M");
    EXPECT_EQ(policy["nm"], nm);
    EXPECT_EQ(report["final_mask_method"], "SPARSEGPT");
    EXPECT_EQ(policy["ratio_choices"], json({0.0, 0.5}));
    EXPECT_EQ(CheckNmArtifact(out, report, n, m), 14);
    // Every decoder linear keeps N/M: the FLOPs counted from the non-zeros are the floor.
    auto counted = ArtifactFlopsRatio(out + "/model", WorkDir() + "/search");
    ASSERT_TRUE(counted.ok()) << counted.status();
    EXPECT_NEAR(*counted, report["flops_ratio"].get<double>(), 1e-12);
    EXPECT_NEAR(*counted, policy["flops_ratio_nominal"].get<double>(), 1e-12);
    EXPECT_NEAR(*counted, floor, 1e-4);
    EXPECT_EQ(report["pruned"]["decoder_linear_nonzero"].get<int64_t>() * m,
              report["pruned"]["decoder_linear_weights"].get<int64_t>() * n);
    const std::string cmd = "cd '" + out + "' && sha256sum --strict --quiet -c MANIFEST.sha256";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
    EXPECT_TRUE(absl::StrContains(ReadFile(out + "/README.md"), absl::StrCat(nm, " (N:M)")));
    std::printf("[n:m %s] floor %.4f, flops_ratio %.6f, accuracy %.4f (dense %.4f)\n", nm, floor,
                *counted, report["accuracy"].get<double>(),
                report["dense"]["accuracy"].get<double>());
  }
}

// A short EFFICIENTLLAVA search over {dense, 2:4} per linear (WANDA search masks, MAGNITUDE final
// masks) at a budget between the floor and 1: the artifact verifies (each linear dense or exactly
// 2:4, flops_ratio from the real non-zeros within the budget) and llava-eval reproduces its
// accuracy.
TEST(PruneLocalNmTest, SearchOverDenseOrNmVerifies) {
  ASSERT_FALSE(WorkDir().empty());
  const double floor = DryRunFloor({"--granularity=N_M"});
  const double budget = std::round((floor + 1) / 2 * 1000) / 1000;
  const std::string out = WorkDir() + "/nm_search";
  std::vector<std::string> flags = SearchFlags(out, 5);
  for (std::string& f : flags) {
    if (absl::StartsWith(f, "--flops-budget=")) f = absl::StrCat("--flops-budget=", budget);
    if (absl::StartsWith(f, "--final-mask-method=")) f = "--final-mask-method=MAGNITUDE";
  }
  flags.push_back("--granularity=N_M");
  const RunResult r = RunBin("prune-local", flags);
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(out + "/report.json");
  EXPECT_EQ(report["nm"], "2:4");
  EXPECT_EQ(report["search"]["ratio_choices"], json({0.0, 0.5}));
  const int pruned = CheckNmArtifact(out, report, 2, 4);
  EXPECT_GT(pruned, 0);  // (the all-2:4 uniform policy in the first population may win)
  auto counted = ArtifactFlopsRatio(out + "/model", WorkDir() + "/search");
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_LE(*counted, budget);
  EXPECT_NEAR(*counted, report["flops_ratio"].get<double>(), 1e-12);
  for (const json& unit : report["policy"]["units"]) {
    const double ratio = unit["ratio"];
    EXPECT_TRUE(ratio == 0.0 || ratio == 0.5) << ratio;
  }
  const RunResult e = RunBin(
      "llava-eval",
      {"--model=" + out + "/model", "--samples=" + WorkDir() + "/eval", "--json", "--threads=1"});
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["accuracy"], report["accuracy"]);
  std::printf("[n:m search] budget %.3f: %d of 14 linears 2:4, flops_ratio %.6f\n", budget, pruned,
              *counted);
}

// OWL (UNSTRUCTURED): per-layer ratios from the outlier ratios recorded in report.json, meeting
// the budget on the artifact's real non-zeros; the layer with more outliers gets the lower
// ratio, and the ratios differ by OWL's deviations (no clamp binds at 0.5). Then OWL under N:M.
TEST(PruneLocalOwlTest, RatiosFollowOutliersAndMeetTheBudget) {
  ASSERT_FALSE(WorkDir().empty());
  const std::string out = WorkDir() + "/owl";
  const RunResult r = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      "--flops-budget=0.5", "--strategy=OWL", "--final-mask-method=WANDA",
                      "--threads=1", "--out=" + out});
  ASSERT_EQ(r.code, 0) << r.err;
  const json report = ReadJson(out + "/report.json");
  EXPECT_EQ(report["strategy"], "OWL");
  ASSERT_TRUE(report.contains("owl")) << report.dump(1);
  const json& owl = report["owl"];
  EXPECT_EQ(owl["outlier_multiple"], 5.0);
  EXPECT_EQ(owl["lambda"], 0.08);
  ASSERT_EQ(owl["outlier_ratios"].size(), 2u);
  const double d0 = owl["outlier_ratios"][0], d1 = owl["outlier_ratios"][1];
  const double r0 = report["policy"]["units"][0]["ratio"];
  const double r1 = report["policy"]["units"][1]["ratio"];
  EXPECT_EQ(owl["ratios"], json({r0, r1}));
  ASSERT_NE(d0, d1);
  // Two layers: the deviations are ±λ, the one with more outliers 2λ below the other.
  EXPECT_NEAR(d0 > d1 ? r1 - r0 : r0 - r1, 2 * 0.08, 1e-9);
  auto counted = ArtifactFlopsRatio(out + "/model", WorkDir() + "/search");
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_LE(*counted, 0.5);
  EXPECT_GE(*counted, 0.5 - 0.02);
  EXPECT_NEAR(*counted, report["flops_ratio"].get<double>(), 1e-12);
  EXPECT_FALSE(report["projector"]["trained"].get<bool>());
  EXPECT_EQ(report["history"].size(), 0u);
  std::printf("[owl] outliers %.5f / %.5f -> ratios %.4f / %.4f, flops_ratio %.6f\n", d0, d1, r0,
              r1, *counted);

  // N:M: between the floor and 1 exactly one of the two layers can stay dense — the one with
  // more outliers.
  const double floor = DryRunFloor({"--granularity=N_M"});
  const double budget = std::round((floor + 1) / 2 * 1000) / 1000;
  const std::string nm_out = WorkDir() + "/owl_nm";
  const RunResult n = RunBin(
      "prune-local", {"--model=" + WorkDir() + "/model32", "--samples=" + WorkDir() + "/search",
                      absl::StrCat("--flops-budget=", budget), "--strategy=OWL",
                      "--granularity=N_M", "--threads=1", "--out=" + nm_out});
  ASSERT_EQ(n.code, 0) << n.err;
  const json nm_report = ReadJson(nm_out + "/report.json");
  const json& units = nm_report["policy"]["units"];
  const double n0 = units[0]["ratio"], n1 = units[1]["ratio"];
  EXPECT_EQ(nm_report["owl"]["outlier_ratios"], owl["outlier_ratios"]);
  EXPECT_EQ(d0 > d1 ? n0 : n1, 0.0);
  EXPECT_EQ(d0 > d1 ? n1 : n0, 0.5);
  EXPECT_EQ(CheckNmArtifact(nm_out, nm_report, 2, 4), 7);
  EXPECT_LE(nm_report["flops_ratio"].get<double>(), budget);
}

// ---- The search options of issue 14 (JobSpec / prune-local flags) ----

// A short search at unit = layer (2 units, so OWL can seed it) with projector training at
// generation 2, plus `extra`.
std::vector<std::string> OptionFlags(const std::string& out,
                                     const std::vector<std::string>& extra) {
  const std::string& w = WorkDir();
  std::vector<std::string> flags = {"--model=" + w + "/model32",
                                    "--samples=" + w + "/search",
                                    "--eval-samples=" + w + "/eval",
                                    "--flops-budget=0.5",
                                    "--final-mask-method=WANDA",
                                    "--seed=5",
                                    "--population=6",
                                    "--parents=2",
                                    "--generations=2",
                                    "--projector-every=2",
                                    "--projector-steps=2",
                                    "--threads=1",
                                    "--out=" + out};
  flags.insert(flags.end(), extra.begin(), extra.end());
  return flags;
}

struct OptionCase {
  std::string name;
  std::vector<std::string> flags;
  std::function<void(const json& report)> check;  // what report.json must record
};

std::vector<OptionCase> OptionCases() {
  return {
      {"ucb_cv_seeds_guard",
       {"--estimator=UCB", "--eta-rule=CV", "--seed-with-uniform", "--seed-with-owl",
        "--uniform-guard"},
       [](const json& r) {
         const json& s = r["search"];
         EXPECT_EQ(s["estimator"], "UCB");
         EXPECT_EQ(s["eta_rule"], "CV");
         EXPECT_EQ(s["seed_with_uniform"], true);
         EXPECT_EQ(s["seed_with_owl"], true);
         EXPECT_EQ(s["uniform_guard"], true);
         ASSERT_EQ(s["seed_unit_ratios"]["UNIFORM"].size(), 2u);
         ASSERT_EQ(s["seed_unit_ratios"]["OWL"].size(), 2u);
         EXPECT_EQ(s["seed_unit_ratios"]["UNIFORM"][0], s["seed_unit_ratios"]["UNIFORM"][1]);
         EXPECT_EQ(r["eta"]["estimator"], "UCB");
         EXPECT_EQ(r["eta"]["eta_rule"], "CV");
         EXPECT_EQ(r["eta"]["mode"], "cv");
         EXPECT_TRUE(r["eta"].contains("cv_rho"));
         EXPECT_EQ(r["eta"]["grid"].size(), r["eta"]["cv_rhos"].size());
         // η is one of the grid's values and the history agrees.
         bool in_grid = false;
         for (const json& g : r["eta"]["grid"]) in_grid |= g == r["eta"]["value"];
         EXPECT_TRUE(in_grid) << r["eta"].dump();
         EXPECT_EQ(r["history"][0]["eta_method"], "cv");
         EXPECT_EQ(r["history"][0]["estimator"], "UCB");
         // OWL's outliers were prepared for the seed (no "owl" object: the strategy is not OWL).
         EXPECT_FALSE(r.contains("owl"));
         // The guard: one more evaluation, its verdict consistent with the fitnesses.
         const json g = r.value("guard", json());
         ASSERT_TRUE(g.is_object()) << r.dump(1);
         const bool fired = g["fired"];
         EXPECT_EQ(fired, g["uniform"]["fitness"].get<double>() <
                              g["search_pick"]["fitness"].get<double>());
         EXPECT_EQ(g["winner"], fired ? "UNIFORM" : "search");
         EXPECT_EQ(g["search_pick"]["fitness"], r["search"]["best"]["fitness"]);
         EXPECT_EQ(g["search_pick"]["hash"], r["search"]["best"]["hash"]);
         EXPECT_EQ(r["search"]["evaluations"].get<size_t>(), r["evaluated"].size() + 1);
         const double u = g["uniform"]["ratio"];
         bool all_uniform = true;
         for (const json& unit : r["policy"]["units"]) all_uniform &= unit["ratio"] == u;
         if (fired) EXPECT_TRUE(all_uniform);
         std::printf("[guard] fired=%d search J %.6f uniform J %.6f\n", int(fired),
                     g["search_pick"]["fitness"].get<double>(),
                     g["uniform"]["fitness"].get<double>());
       }},
      {"split_repair_step",
       {"--estimator=SPLIT", "--repair-uniform-seed", "--mutation-step=0.5"},
       [](const json& r) {
         EXPECT_EQ(r["search"]["estimator"], "SPLIT");
         EXPECT_EQ(r["search"]["repair_uniform_seed"], true);
         EXPECT_EQ(r["search"]["mutation_step"], 0.5);
         EXPECT_EQ(r["eta"]["mode"], "auto");
         EXPECT_EQ(r["eta"]["estimator"], "SPLIT");
         EXPECT_FALSE(r.contains("guard"));
         EXPECT_EQ(r["search"]["evaluations"].get<size_t>(), r["evaluated"].size());
       }},
      {"capacity_slack",
       {"--estimator=CAPACITY", "--eta=0.5", "--slack-evaluations=3"},
       [](const json& r) {
         EXPECT_EQ(r["search"]["estimator"], "CAPACITY");
         EXPECT_EQ(r["search"]["slack_evaluations"], 3);
         EXPECT_LE(r["search"]["slack_evaluations_spent"].get<int>(), 3);
         EXPECT_EQ(r["eta"]["mode"], "explicit");
         EXPECT_EQ(r["eta"]["value"], 0.5);
         EXPECT_LE(r["flops_ratio"].get<double>(), 0.5);
       }},
      {"random_slack_guard",
       {"--strategy=RANDOM_SEARCH", "--unit=linear", "--slack-evaluations=2", "--uniform-guard"},
       [](const json& r) {
         EXPECT_EQ(r["search"]["slack_evaluations"], 2);
         EXPECT_EQ(r["search"]["slack_evaluations_spent"], 2);  // exactly, for RANDOM_SEARCH
         EXPECT_TRUE(r.value("guard", json()).is_object());
         EXPECT_EQ(r["search"]["evaluations"].get<size_t>(), r["evaluated"].size() + 1);
       }},
  };
}

// Every new flag (in four combinations): the same seed twice gives the same evaluated sequence,
// policy.json and model bytes, and report.json records the options.
TEST(PruneLocalOptionsTest, EachOptionIsDeterministicAndRecorded) {
  ASSERT_FALSE(WorkDir().empty());
  for (const OptionCase& c : OptionCases()) {
    const std::string a = WorkDir() + "/opt_" + c.name + "_a";
    const std::string b = WorkDir() + "/opt_" + c.name + "_b";
    const RunResult ra = RunBin("prune-local", OptionFlags(a, c.flags));
    ASSERT_EQ(ra.code, 0) << c.name << ": " << ra.err;
    const RunResult rb = RunBin("prune-local", OptionFlags(b, c.flags));
    ASSERT_EQ(rb.code, 0) << c.name << ": " << rb.err;
    EXPECT_EQ(ReadFile(a + "/policy.json"), ReadFile(b + "/policy.json")) << c.name;
    EXPECT_EQ(ReadFile(a + "/model/model.safetensors"), ReadFile(b + "/model/model.safetensors"))
        << c.name;
    const json report = ReadJson(a + "/report.json");
    const json again = ReadJson(b + "/report.json");
    EXPECT_EQ(report["evaluated"], again["evaluated"]) << c.name;
    EXPECT_EQ(report["history"], again["history"]) << c.name;
    EXPECT_EQ(report["eta"], again["eta"]) << c.name;
    EXPECT_EQ(report.value("guard", json()), again.value("guard", json())) << c.name;
    SCOPED_TRACE(c.name);
    c.check(report);
  }
}

// Without the options, report.json has none of their keys (the goldens pin the bytes).
// The default report names the options the default turns on (UNIFORM inside the search, the
// PAIRED estimator and η by the SAMPLES rule, issue 14) and none of the others.
TEST(PruneLocalOptionsTest, DefaultReportNamesOnlyTheDefaultOptions) {
  ASSERT_EQ(MainRun().code, 0) << MainRun().err;
  const json r = ReadJson(WorkDir() + "/main/report.json");
  EXPECT_FALSE(r.contains("guard"));
  for (const char* k : {"seed_with_uniform", "repair_uniform_seed", "uniform_ratio_choice"}) {
    EXPECT_EQ(r["search"].value(k, false), true) << k;
  }
  ASSERT_TRUE(r["search"].contains("seed_unit_ratios"));
  EXPECT_TRUE(r["search"]["seed_unit_ratios"].contains("UNIFORM"));
  EXPECT_EQ(r["search"]["estimator"], "PAIRED");
  EXPECT_EQ(r["eta"]["estimator"], "PAIRED");
  EXPECT_EQ(r["search"]["eta_rule"], "SAMPLES");
  EXPECT_EQ(r["eta"]["eta_rule"], "SAMPLES");
  EXPECT_EQ(r["eta"]["mode"], "samples");
  for (const char* k : {"seed_with_owl", "mutation_step", "slack_evaluations", "uniform_guard"}) {
    EXPECT_FALSE(r["search"].contains(k)) << k;
  }
  for (const char* k : {"cv_rho", "grid"}) {
    EXPECT_FALSE(r["eta"].contains(k)) << k;
  }
}

// Bad values of each new flag exit 2 naming the flag.
TEST(PruneLocalOptionsTest, BadOptionValuesExit2NamingTheFlag) {
  ASSERT_FALSE(WorkDir().empty());
  const std::vector<std::string> base = {"--model=" + WorkDir() + "/model32",
                                         "--samples=" + WorkDir() + "/search", "--threads=1",
                                         "--flops-budget=0.5", "--out=" + WorkDir() + "/never"};
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--estimator=L2"}, "--estimator"},
      {{"--estimator=l1"}, "--estimator"},
      {{"--eta-rule=HOLDOUT"}, "--eta-rule"},
      {{"--eta-rule=CV", "--eta=1"}, "--eta-rule CV chooses eta"},
      {{"--estimator=UCB", "--strategy=UNIFORM"}, "--estimator applies to a searching strategy"},
      {{"--mutation-step=1.5"}, "--mutation-step must be in [0, 1]"},
      {{"--mutation-step=-0.1"}, "--mutation-step must be in [0, 1]"},
      {{"--strategy=RANDOM_SEARCH", "--mutation-step=0.5"}, "--mutation-step applies to strategy"},
      {{"--slack-evaluations=-1"}, "--slack-evaluations must be in [0, 100000]"},
      {{"--slack-evaluations=100001"}, "--slack-evaluations must be in [0, 100000]"},
      {{"--strategy=OWL", "--slack-evaluations=2"}, "--slack-evaluations applies"},
      {{"--strategy=RANDOM_SEARCH", "--seed-with-uniform"}, "--seed-with-uniform applies"},
      {{"--strategy=UNIFORM", "--seed-with-owl"}, "--seed-with-owl applies"},
      {{"--unit=linear", "--seed-with-owl"}, "--seed-with-owl needs unit LAYER"},
      {{"--strategy=RANDOM_SEARCH", "--repair-uniform-seed"}, "--repair-uniform-seed applies"},
      {{"--strategy=UNIFORM", "--uniform-guard"}, "--uniform-guard applies"},
  };
  for (const auto& [extra, message] : cases) {
    std::vector<std::string> flags = base;
    flags.insert(flags.end(), extra.begin(), extra.end());
    const RunResult r = RunBin("prune-local", flags);
    EXPECT_EQ(r.code, 2) << message << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, message)) << message << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(WorkDir() + "/never"));
  // --help documents every flag, hyphenated, and exits 0.
  const RunResult help = RunBin("prune-local", {"--help"});
  EXPECT_EQ(help.code, 0);
  for (const char* flag : {"--estimator\n", "--eta-rule\n", "--seed-with-uniform\n",
                           "--seed-with-owl\n", "--repair-uniform-seed\n", "--mutation-step\n",
                           "--slack-evaluations\n", "--uniform-guard\n"}) {
    EXPECT_TRUE(absl::StrContains(help.out, flag)) << flag;
  }
}

}  // namespace
}  // namespace prunesvc::prune
