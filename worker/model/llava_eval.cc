#include "worker/model/llava_eval.h"

#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/flops.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "worker/model/device.h"
#include "worker/model/llava_bundle.h"
#include "worker/model/samples.h"
#include "worker/model/scoring.h"

namespace prunesvc::model {
namespace {

// The dump format is defined as little-endian; writing host floats as-is relies on this.
static_assert(std::endian::native == std::endian::little, "--dump-logits assumes little endian");

// Writes rows to PATH.tmp.PID and renames it to PATH on Commit(); the destructor removes the
// temporary file of an unfinished dump, so a failed run never leaves a partial file behind.
class AtomicFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Open(const std::string& path) {
    std::string tmp = absl::StrCat(path, ".tmp.", getpid());
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dump-logits ", path, ": cannot create ", tmp));
    }
    return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(tmp), f));
  }
  ~AtomicFileWriter() {
    if (file_ != nullptr) std::fclose(file_);
    if (!committed_) std::remove(tmp_.c_str());
  }

  absl::Status Write(const void* data, size_t bytes) {
    if (std::fwrite(data, 1, bytes, file_) != bytes) {
      return absl::InternalError(absl::StrCat("--dump-logits ", path_, ": write failed"));
    }
    return absl::OkStatus();
  }

  absl::Status Commit() {
    bool ok = std::fflush(file_) == 0 && fsync(fileno(file_)) == 0;
    ok = std::fclose(file_) == 0 && ok;
    file_ = nullptr;
    if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("--dump-logits ", path_, ": cannot finish writing"));
    }
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  AtomicFileWriter(std::string path, std::string tmp, std::FILE* f)
      : path_(std::move(path)), tmp_(std::move(tmp)), file_(f) {}
  std::string path_, tmp_;
  std::FILE* file_;
  bool committed_ = false;
};

struct GroupSums {
  int n = 0, mc = 0, correct = 0;
  double loss = 0;
  EvalGroup Finish() const {
    EvalGroup g;
    g.num_samples = n;
    g.num_multiple_choice = mc;
    if (mc > 0) g.accuracy = double(correct) / mc;
    g.mean_loss = n > 0 ? loss / n : 0;
    return g;
  }
};

absl::StatusOr<EvalReport> RunEvalImpl(const EvalOptions& options) {
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch must be at least 1, got ", options.batch_size));
  }
  if (options.limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--limit must be non-negative, got ", options.limit));
  }
  EvalReport report;
  // An artifact directory stands for its model/ (ResolveModelDir).
  ASSIGN_OR_RETURN(const std::string model_dir, ResolveModelDir(options.model_dir));
  report.model_dir = model_dir;
  report.samples_path = options.samples_path;
  report.batch_size = options.batch_size;
  ASSIGN_OR_RETURN(DeviceInfo device, OpenDevice(options.device, options.threads));
  report.threads = device.threads;
  report.device = device.spec.ToString();
  report.device_name = device.name;

  ASSIGN_OR_RETURN(std::unique_ptr<LlavaBundle> bundle,
                   LoadLlavaBundle(model_dir, device.device()));
  const LlavaModel& model = *bundle->model;
  spdlog::info("loaded model {} (weights {}, {} layout, {} single-token answer letters)", model_dir,
               DTypeName(bundle->source_dtype), WeightLayoutName(bundle->layout),
               bundle->letter_token_ids.size());

  ASSIGN_OR_RETURN(SampleSet set, LoadSampleSet(options.samples_path));
  report.samples_sha256 = set.sha256;
  if (options.limit > 0 && size_t(options.limit) < set.samples.size()) {
    set.samples.resize(options.limit);
  }
  const int total = int(set.samples.size());

  // Validate everything before the first forward pass; keep tokens, drop pixels (re-decoded per
  // batch below so memory does not grow with the set).
  std::vector<PreparedSample> prepared;
  prepared.reserve(total);
  std::vector<ScoringSample> token_view;
  token_view.reserve(total);
  for (const Sample& s : set.samples) {
    ASSIGN_OR_RETURN(PreparedSample p, PrepareSample(*bundle, s));
    p.pixels = PixelValues();
    token_view.push_back(p.scoring);
    prepared.push_back(std::move(p));
  }
  ASSIGN_OR_RETURN(FlopsBreakdown flops,
                   ComputeDenseFlops(model.FlopsDims(), ComputeTokenStats(model, token_view)));
  report.dense_gflops_per_sample = flops.Total() / 1e9;
  // Kept multiply-adds, as report.json counts them: each decoder linear scaled by its weights'
  // non-zero fraction (an UNSTRUCTURED or N:M artifact stores zeros; STRUCTURED shapes are in
  // the dims already).
  KeptFractions keep;
  keep.decoder.assign(flops.decoder_linear.size(), {});
  for (auto& row : keep.decoder) row.fill(1.0);
  for (const NamedLinear& nl : bundle->model->DecoderLinears()) {
    const at::Tensor& w = nl.linear->weight;
    keep.decoder[nl.layer][int(nl.kind)] =
        double(at::count_nonzero(w).item<int64_t>()) / double(w.numel());
  }
  ASSIGN_OR_RETURN(double kept_flops, PolicyFlops(flops, keep));
  report.gflops_per_sample = kept_flops / 1e9;
  token_view.clear();

  std::unique_ptr<AtomicFileWriter> dump;
  if (!options.dump_logits.empty()) {
    ASSIGN_OR_RETURN(dump, AtomicFileWriter::Open(options.dump_logits));
  }
  const int64_t vocab = model.config().text.vocab_size;

  GroupSums overall;
  std::map<std::string, GroupSums> per_type;
  ScoreOptions score_options;
  score_options.batch_size = options.batch_size;
  score_options.keep_logits = dump != nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  for (int start = 0; start < total; start += options.batch_size) {
    const int end = std::min(total, start + options.batch_size);
    for (int i = start; i < end; ++i) {
      ASSIGN_OR_RETURN(PreparedSample p, PrepareSample(*bundle, set.samples[i]));
      prepared[i].pixels = std::move(p.pixels);
    }
    absl::Span<PreparedSample> chunk = absl::MakeSpan(prepared).subspan(start, end - start);
    RETURN_IF_ERROR(AttachImageFeatures(model, chunk, options.batch_size));
    std::vector<ScoringSample> batch;
    batch.reserve(chunk.size());
    for (PreparedSample& p : chunk) {
      batch.push_back(p.scoring);
      p.scoring.image_features = at::Tensor();
      p.pixels = PixelValues();
    }
    ASSIGN_OR_RETURN(std::vector<SampleScore> scores, ScoreSamples(model, batch, score_options));
    for (size_t k = 0; k < scores.size(); ++k) {
      const SampleScore& sc = scores[k];
      const PreparedSample& p = chunk[k];
      for (GroupSums* g : {&overall, p.type.empty() ? nullptr : &per_type[p.type]}) {
        if (g == nullptr) continue;
        ++g->n;
        g->loss += sc.loss;
        if (sc.multiple_choice) {
          ++g->mc;
          g->correct += sc.correct ? 1 : 0;
        }
      }
      if (dump != nullptr) {
        at::Tensor row = sc.answer_logits.to(at::kCPU, at::kFloat).contiguous();
        if (row.numel() != vocab) {
          return absl::InternalError(absl::StrCat("sample \"", p.id, "\": logits have ",
                                                  row.numel(), " entries, expected ", vocab));
        }
        RETURN_IF_ERROR(dump->Write(row.data_ptr<float>(), size_t(vocab) * sizeof(float)));
      }
    }
    if (options.on_progress) options.on_progress(end, total);
  }
  report.eval_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.samples_per_second = report.eval_seconds > 0 ? total / report.eval_seconds : 0;
  if (dump != nullptr) RETURN_IF_ERROR(dump->Commit());

  report.overall = overall.Finish();
  for (const auto& [type, sums] : per_type) report.per_type[type] = sums.Finish();
  return report;
}

nlohmann::json GroupJson(const EvalGroup& g) {
  nlohmann::json j;
  j["accuracy"] = g.accuracy ? nlohmann::json(*g.accuracy) : nlohmann::json(nullptr);
  j["mean_loss"] = g.mean_loss;
  j["num_samples"] = g.num_samples;
  j["num_multiple_choice"] = g.num_multiple_choice;
  return j;
}

std::string FormatAccuracy(const EvalGroup& g) {
  return g.accuracy ? absl::StrFormat("%.4f", *g.accuracy) : std::string("-");
}

absl::StatusOr<std::string> RunGenerateImpl(const GenerateCliOptions& options) {
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-new-tokens must be non-negative, got ", options.max_new_tokens));
  }
  const size_t markers = [&] {
    size_t n = 0;
    for (size_t pos = options.prompt.find("<image>"); pos != std::string::npos;
         pos = options.prompt.find("<image>", pos + 1)) {
      ++n;
    }
    return n;
  }();
  if (options.raw && markers != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--prompt: with --raw the text must contain exactly one <image>, found ", markers));
  }
  if (!options.raw && markers != 0) {
    return absl::InvalidArgumentError(
        "--prompt: contains <image>; the template adds it (use --raw to pass a full prompt)");
  }
  ASSIGN_OR_RETURN(const std::string model_dir, ResolveModelDir(options.model_dir));
  ASSIGN_OR_RETURN(DeviceInfo device, OpenDevice(options.device, options.threads));
  ASSIGN_OR_RETURN(std::unique_ptr<LlavaBundle> bundle,
                   LoadLlavaBundle(model_dir, device.device()));
  const LlavaModel& model = *bundle->model;
  const Tokenizer& tok = *bundle->tokenizer;

  ASSIGN_OR_RETURN(RgbImage image, ReadImageFile(options.image_path));
  auto pixels = PreprocessImage(image, bundle->preprocess);
  if (!pixels.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.image_path, ": preprocessing: ", pixels.status().message()));
  }
  ASSIGN_OR_RETURN(at::Tensor batch, StackPixels({*pixels}, model.device()));
  ASSIGN_OR_RETURN(at::Tensor features, model.ComputeImageFeatures(batch));

  const std::string text =
      options.raw ? options.prompt : absl::StrCat("USER: <image>\n", options.prompt, " ASSISTANT:");
  ASSIGN_OR_RETURN(std::vector<int> ids, tok.EncodePrompt(text));
  if (std::count(ids.begin(), ids.end(), tok.image_token_id()) != 1) {
    return absl::InvalidArgumentError("--prompt: does not tokenize to exactly one <image> token");
  }
  // The context bounds the answer: the prompt (with the image's expanded tokens) plus the new
  // tokens must fit max_position_embeddings. A model that never emits EOS would otherwise run
  // far past what it was trained for, ever slower.
  const int context = model.config().text.max_position_embeddings;
  const int prompt_tokens = int(ids.size()) - 1 + model.image_seq_length();
  if (prompt_tokens >= context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--prompt: ", prompt_tokens, " tokens (with the image's ", model.image_seq_length(),
        ") leave no room in the model's context of ", context, " (max_position_embeddings)"));
  }
  GenerateOptions gen;
  gen.max_new_tokens = std::min(options.max_new_tokens, context - prompt_tokens);
  if (gen.max_new_tokens < options.max_new_tokens) {
    spdlog::warn(
        "--max-new-tokens {} capped at {}: the prompt takes {} of the model's {} positions "
        "(max_position_embeddings)",
        options.max_new_tokens, gen.max_new_tokens, prompt_tokens, context);
  }
  gen.eos_token_id = tok.eos_id();
  // Streaming: decode the ids so far after each token and pass on what the text gained (a
  // SentencePiece piece can change how the text before it decodes, e.g. a leading space, so
  // the whole prefix is decoded rather than the token alone).
  std::vector<int> decodable;
  std::string emitted;
  auto emit_new_text = [&] {
    absl::StatusOr<std::string> text = tok.Decode(decodable);
    if (!text.ok()) return;  // the final Decode below reports it
    if (text->size() > emitted.size() && absl::StartsWith(*text, emitted)) {
      if (options.on_text) options.on_text(absl::string_view(*text).substr(emitted.size()));
      emitted = *std::move(text);
    }
  };
  gen.on_token = [&](int id) {
    if (id >= 0 && id < tok.vocab_size()) {
      decodable.push_back(id);
      emit_new_text();
    } else {
      spdlog::warn("generated id {} has no token (tokenizer vocabulary {}); skipped", id,
                   tok.vocab_size());
    }
  };
  RETURN_IF_ERROR(GreedyGenerate(model, ids, features, gen).status());
  return tok.Decode(decodable);
}

}  // namespace

absl::StatusOr<EvalReport> RunEval(const EvalOptions& options) {
  try {
    return RunEvalImpl(options);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("evaluation failed: ", e.what()));
  }
}

absl::StatusOr<std::string> RunGenerate(const GenerateCliOptions& options) {
  try {
    return RunGenerateImpl(options);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("generation failed: ", e.what()));
  }
}

std::string EvalReportJson(const EvalReport& r) {
  nlohmann::json j = GroupJson(r.overall);
  j["samples_per_second"] = r.samples_per_second;
  j["eval_seconds"] = r.eval_seconds;
  j["gflops_per_sample"] = r.gflops_per_sample;
  j["dense_gflops_per_sample"] = r.dense_gflops_per_sample;
  if (!r.per_type.empty()) {
    nlohmann::json types = nlohmann::json::object();
    for (const auto& [type, g] : r.per_type) types[type] = GroupJson(g);
    j["per_type"] = std::move(types);
  }
  j["model"] = r.model_dir;
  j["samples"] = r.samples_path;
  j["samples_sha256"] = r.samples_sha256;
  j["device"] = r.device;
  j["device_name"] = r.device_name;
  j["threads"] = r.threads;
  j["batch"] = r.batch_size;
  // Replacement on invalid UTF-8 (a type string is user data) instead of throwing.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string EvalReportTable(const EvalReport& r) {
  std::string out;
  absl::StrAppend(&out, "model    ", r.model_dir, "\n", "samples  ", r.samples_path, "\n\n");
  absl::StrAppend(&out, absl::StrFormat("%-20s %8s %10s %10s %10s\n", "type", "samples", "mc",
                                        "accuracy", "mean_loss"));
  auto row = [&out](const std::string& name, const EvalGroup& g) {
    absl::StrAppend(&out, absl::StrFormat("%-20s %8d %10d %10s %10.4f\n", name, g.num_samples,
                                          g.num_multiple_choice, FormatAccuracy(g), g.mean_loss));
  };
  for (const auto& [type, g] : r.per_type) row(type, g);
  row("all", r.overall);
  absl::StrAppend(&out,
                  "(mc: the multiple-choice samples, the ones accuracy counts; mean_loss covers "
                  "all samples)\n");
  absl::StrAppend(
      &out, absl::StrFormat("\nsamples/s %.3f (%s, %d threads, batch %d)   GFLOPs/sample %.4f "
                            "(kept weights; dense %.4f)\n",
                            r.samples_per_second, r.device, r.threads, r.batch_size,
                            r.gflops_per_sample, r.dense_gflops_per_sample));
  return out;
}

std::string OneLineError(const absl::Status& status) {
  return absl::StrReplaceAll(std::string(status.message()), {{"\r", " "}, {"\n", " "}});
}

}  // namespace prunesvc::model
