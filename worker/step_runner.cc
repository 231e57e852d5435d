#include "worker/step_runner.h"

#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <new>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/fault.h"
#include "common/job_spec_proto.h"
#include "common/logging.h"
#include "common/model_manifest.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "spdlog/spdlog.h"
#include "torch/version.h"
#include "worker/model/device.h"
#include "worker/model/safetensors.h"
#include "worker/model/torch_guard.h"
#include "worker/prune/artifact.h"

namespace prunesvc::worker {
namespace {

// The sha256 of this process's executable ("" when it cannot be read), computed once: prunesvc's
// code is linked into it, so any change to it — a development build without a version bump
// included — changes the evaluation key.
const std::string& ExecutableSha256() {
  static const std::string* const hash = [] {
    absl::StatusOr<std::string> hex = prune::Sha256OfFile("/proc/self/exe");
    if (hex.ok()) return new std::string(*std::move(hex));
    spdlog::warn("evaluations are not shared across jobs: {}", hex.status().message());
    return new std::string();
  }();
  return *hash;
}

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using nlohmann::json;

std::string DeterministicBytes(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  m.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

// A ProgressSink that asks the step's stop function and the runner's cancel list.
class StepSink : public prune::ProgressSink {
 public:
  explicit StepSink(std::function<bool()> stop) : stop_(std::move(stop)) {}
  bool StopRequested() override { return stop_(); }

 private:
  std::function<bool()> stop_;
};

absl::StatusOr<search::Policy> PolicyOf(const search::PolicySpace& space,
                                        const pb::EvaluatePoliciesRequest::Policy& p, int index) {
  if (p.ratios_size() != space.num_units()) {
    return absl::InvalidArgumentError(absl::StrCat("policies[", index, "] has ", p.ratios_size(),
                                                   " ratios; the job has ", space.num_units(),
                                                   " units"));
  }
  search::Policy policy;
  for (int u = 0; u < p.ratios_size(); ++u) {
    const std::vector<double>& choices = space.ratio_choices();
    int found = -1;
    for (size_t c = 0; c < choices.size(); ++c) {
      if (std::abs(choices[c] - p.ratios(u)) <= 1e-9) found = int(c);
    }
    if (found < 0) {
      return absl::InvalidArgumentError(absl::StrCat("policies[", index, "].ratios[", u,
                                                     "] = ", p.ratios(u),
                                                     " is not one of the job's ratio choices"));
    }
    policy.push_back(found);
  }
  return policy;
}

absl::StatusOr<pb::PolicyEvaluation> EvaluationProto(const search::PolicySpace& space,
                                                     const search::Policy& policy,
                                                     const search::EvalResult& r, int version) {
  pb::PolicyEvaluation e;
  ASSIGN_OR_RETURN(std::vector<double> ratios, space.UnitRatios(policy));
  for (double x : ratios) e.add_ratios(x);
  e.set_fitness(r.loss);  // the worker knows no η: the scheduler computes J
  e.set_loss(r.loss);
  e.set_accuracy(r.accuracy);
  e.set_omega(r.omega);
  ASSIGN_OR_RETURN(double fr, space.FlopsRatio(policy));
  e.set_flops_ratio(fr);
  ASSIGN_OR_RETURN(std::string hash, space.Hash(policy));
  e.set_policy_hash(hash);
  e.set_projector_version(version);
  // The scheduler's UCB / SPLIT / CV fitness needs them (issue 14).
  e.mutable_sample_losses()->Add(r.sample_losses.begin(), r.sample_losses.end());
  e.set_raced_out(r.raced_out);
  e.set_samples_scored(r.samples_scored);
  return e;
}

// The job's sample order as the scheduler sends it (empty: the worker's own, from Prepare).
absl::Status UseRequestedOrder(prune::PreparedJob& job,
                               const google::protobuf::RepeatedField<int32_t>& order) {
  if (order.empty()) return absl::OkStatus();
  return job.UseSampleOrder(std::vector<int>(order.begin(), order.end()));
}

// The request's racing limit (inactive without race_threshold).
absl::StatusOr<search::RaceLimit> RequestedRace(const pb::EvaluatePoliciesRequest& req, int n) {
  search::RaceLimit race;
  if (!req.has_race_threshold()) return race;
  if (std::isnan(req.race_threshold()) || !std::isfinite(req.race_norm_eta()) ||
      (req.race_extra_size() != 0 && req.race_extra_size() != req.policies_size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("race_threshold / race_norm_eta / race_extra: a threshold that is a number, "
                     "a finite eta and one extra term per policy (or none) are required; got ",
                     req.race_extra_size(), " extra terms for ", req.policies_size(), " policies"));
  }
  race.threshold = req.race_threshold();
  race.norm_eta = req.race_norm_eta();
  race.num_samples = n;
  race.extra.assign(req.race_extra().begin(), req.race_extra().end());
  if (req.race_paired_eta() != 0 || req.race_reference_losses_size() != 0) {
    if (!(req.race_paired_eta() >= 0) || !std::isfinite(req.race_paired_eta()) ||
        req.race_reference_losses_size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "race_paired_eta / race_reference_losses: a finite eta ≥ 0 and the reference's loss "
          "on each of the job's ",
          n, " search samples are required; got eta ", req.race_paired_eta(), " and ",
          req.race_reference_losses_size(), " losses"));
    }
    for (int i = 0; i < n; ++i) {
      const double x = req.race_reference_losses(i);
      if (!(x >= 0) || !std::isfinite(x)) {
        return absl::InvalidArgumentError(absl::StrCat("race_reference_losses[", i, "] = ", x,
                                                       ": a per-sample loss is finite and ≥ 0"));
      }
    }
    race.paired_eta = req.race_paired_eta();
    race.reference_losses.assign(req.race_reference_losses().begin(),
                                 req.race_reference_losses().end());
  }
  return race;
}

// The request's sample slice: both bounds 0 = every search sample.
absl::StatusOr<prune::SampleRange> RequestedRange(const pb::EvaluatePoliciesRequest& req, int n) {
  if (req.sample_begin() == 0 && req.sample_end() == 0) return prune::SampleRange{0, n};
  if (req.sample_begin() < 0 || req.sample_begin() >= req.sample_end() || req.sample_end() > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("sample_begin/sample_end: [", req.sample_begin(), ", ", req.sample_end(),
                     ") is empty or outside the job's ", n, " search samples"));
  }
  return prune::SampleRange{req.sample_begin(), req.sample_end()};
}

void DimsToProto(const FlopsModelDims& d, const std::vector<DecoderLayerHeads>& heads,
                 pb::FlopsModelDims* p) {
  pb::VisionFlopsDims* v = p->mutable_vision();
  v->set_width(d.vision.width);
  v->set_mlp_width(d.vision.mlp_width);
  v->set_layers_run(d.vision.layers_run);
  v->set_tokens(d.vision.tokens);
  v->set_patch_size(d.vision.patch_size);
  v->set_channels(d.vision.channels);
  p->set_images_per_sample(d.images_per_sample);
  p->set_image_tokens(d.image_tokens);
  p->set_projector_in(d.projector_in);
  p->set_projector_hidden(d.projector_hidden);
  p->set_projector_out(d.projector_out);
  for (size_t l = 0; l < d.decoder.size(); ++l) {
    pb::DecoderLayerDims* layer = p->add_decoder();
    layer->set_hidden(d.decoder[l].hidden);
    layer->set_q_width(d.decoder[l].q_width);
    layer->set_kv_width(d.decoder[l].kv_width);
    layer->set_mlp_width(d.decoder[l].mlp_width);
    if (l < heads.size()) {
      layer->set_num_heads(heads[l].num_heads);
      layer->set_num_kv_heads(heads[l].num_kv_heads);
      layer->set_head_dim(heads[l].head_dim);
    }
  }
  p->set_vocab(d.vocab);
}

const char* ProjectorTensorName(int i) {
  static const char* const kNames[] = {"linear_1.weight", "linear_1.bias", "linear_2.weight",
                                       "linear_2.bias"};
  return kNames[i];
}

std::array<at::Tensor*, 4> ProjectorTensors(prune::ProjectorWeights& w) {
  return {&w.linear_1_weight, &w.linear_1_bias, &w.linear_2_weight, &w.linear_2_bias};
}

absl::StatusOr<prune::ProjectorWeights> ReadProjector(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open(path));
  prune::ProjectorWeights w;
  std::array<at::Tensor*, 4> tensors = ProjectorTensors(w);
  for (int i = 0; i < 4; ++i) {
    const model::TensorInfo* info = file->Find(ProjectorTensorName(i));
    if (info == nullptr) continue;  // a projector without biases
    at::Tensor t = at::empty(info->shape, at::kFloat);
    RETURN_IF_ERROR(
        file->ReadAsFloat32(*info, absl::MakeSpan(t.data_ptr<float>(), size_t(t.numel()))));
    *tensors[i] = t;
  }
  if (!w.linear_1_weight.defined() || !w.linear_2_weight.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a projector (weights missing)"));
  }
  return w;
}

}  // namespace

pb::StepError StepErrorOf(const absl::Status& status, std::string_view phase) {
  pb::StepError e;
  e.set_phase(std::string(phase));
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kOutOfRange:
      e.set_kind("bad_input");
      e.set_retryable(false);
      break;
    case absl::StatusCode::kResourceExhausted:
      e.set_kind(model::IsOutOfMemory(status) ? "out_of_memory" : "bad_input");
      e.set_retryable(model::IsOutOfMemory(status));
      break;
    case absl::StatusCode::kCancelled:
      e.set_kind("cancelled");
      e.set_retryable(false);
      break;
    default:  // Internal, Unavailable, DeadlineExceeded, …: another worker may succeed
      e.set_kind("internal");
      e.set_retryable(true);
  }
  return e;
}

// One step's bookkeeping: registered as active, the device held, its outcome and time recorded.
class StepRunner::StepScope {
 public:
  StepScope(StepRunner& runner, std::string kind, const pb::StepHeader& header, StopFn stop)
      : runner_(runner),
        kind_(std::move(kind)),
        step_id_(header.step_id()),
        start_(std::chrono::steady_clock::now()),
        sink_([this, stop = std::move(stop)] { return (stop && stop()) || Cancelled(); }),
        ctx_(&sink_) {
    absl::MutexLock lock(&runner_.mu_);
    if (!step_id_.empty()) runner_.active_steps_.insert(step_id_);
  }

  ~StepScope() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (locked_) runner_.device_mu_.Unlock();
    absl::MutexLock lock(&runner_.mu_);
    runner_.active_steps_.erase(step_id_);
    runner_.cancelled_steps_.erase(step_id_);
  }

  // Waits for the device, giving up when the step is stopped.
  absl::Status AcquireDevice() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    while (!runner_.device_mu_.TryLock()) {
      if (sink_.StopRequested())
        return absl::CancelledError("cancelled while waiting for the device");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    locked_ = true;
    // OpenMP's thread count is per calling thread, and each step runs on a thread of its own:
    // without this, a step's reductions run with the default count and differ from prune-local's
    // in the 8th digit.
    return model::SetTorchThreads(runner_.options_.threads).status();
  }

  // Records the outcome; returns `status` unchanged.
  absl::Status Done(const absl::Status& status) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const std::string outcome = status.ok() ? "ok" : StepErrorOf(status, kind_).kind();
    runner_.steps_family_->Add({{"step", kind_}, {"outcome", outcome}}).Increment();
    runner_.step_seconds_family_
        ->Add({{"step", kind_}}, prometheus::Histogram::BucketBoundaries{0.01, 0.1, 0.5, 1, 5, 15,
                                                                         60, 300, 1200, 3600})
        .Observe(seconds);
    if (!status.ok()) {
      spdlog::warn("step={} kind={} failed after {:.2f}s: {}", step_id_, kind_, seconds,
                   status.message());
    } else {
      spdlog::info("step={} kind={} ok in {:.2f}s", step_id_, kind_, seconds);
    }
    return status;
  }

  prune::StepContext& ctx() { return ctx_; }

 private:
  bool Cancelled() {
    absl::MutexLock lock(&runner_.mu_);
    return runner_.cancelled_steps_.count(step_id_) > 0;
  }

  StepRunner& runner_;
  const std::string kind_;
  const std::string step_id_;
  const std::chrono::steady_clock::time_point start_;
  StepSink sink_;
  prune::StepContext ctx_;
  bool locked_ = false;
};

StepRunner::StepRunner(StepRunnerOptions options, BlobCache* blobs, prometheus::Registry* registry)
    : options_(std::move(options)), blobs_(blobs), preparations_(options_.kept_preparations) {
  cache_family_ = &prometheus::BuildCounter()
                       .Name("prunesvc_worker_cache_total")
                       .Help("Prepared-job cache lookups by result (hit, miss)")
                       .Register(*registry);
  cache_hits_ = &cache_family_->Add({{"result", "hit"}});
  cache_misses_ = &cache_family_->Add({{"result", "miss"}});
  steps_family_ = &prometheus::BuildCounter()
                       .Name("prunesvc_worker_steps_total")
                       .Help("Steps run by this worker, by step and outcome")
                       .Register(*registry);
  step_seconds_family_ = &prometheus::BuildHistogram()
                              .Name("prunesvc_worker_step_seconds")
                              .Help("Wall time of a step on this worker (device wait included)")
                              .Register(*registry);
  evaluations_ = &prometheus::BuildCounter()
                      .Name("prunesvc_worker_evaluations_total")
                      .Help("Candidate policies evaluated by this worker")
                      .Register(*registry)
                      .Add({});
}

absl::StatusOr<std::unique_ptr<StepRunner>> StepRunner::Create(StepRunnerOptions options,
                                                               BlobCache* blobs,
                                                               prometheus::Registry* registry) {
  std::vector<std::string> roots;
  for (const std::string& root : options.allowed_model_roots) {
    char* real = realpath(root.c_str(), nullptr);
    if (real == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--allowed-model-roots: ", root, " does not exist"));
    }
    roots.push_back(real);
    free(real);
  }
  options.allowed_model_roots = std::move(roots);
  std::error_code ec;
  fs::create_directories(options.cache_dir + "/scratch", ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.cache_dir, ": cannot create: ", ec.message()));
  }
  return std::unique_ptr<StepRunner>(new StepRunner(std::move(options), blobs, registry));
}

StepRunner::~StepRunner() {
  absl::MutexLock lock(&device_mu_);  // waits for a running step
  cache_.clear();
}

absl::StatusOr<std::string> StepRunner::EnsureBlobModel(const std::string& model_id) {
  const std::string hex = model_id.substr(std::string_view("sha256:").size());
  const std::string models = options_.cache_dir + "/models";
  const std::string dir = absl::StrCat(models, "/", hex);
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return dir;  // renamed into place only when complete
  absl::StatusOr<std::string> manifest_path = blobs_->Get(model_id, /*verify_bytes=*/true);
  if (!manifest_path.ok()) {
    return absl::Status(
        manifest_path.status().code(),
        absl::StrCat("model_uri blob://", model_id, ": ", manifest_path.status().message()));
  }
  std::ifstream in(*manifest_path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<ModelManifest> manifest =
      ParseModelManifest(text, absl::StrCat("manifest ", model_id));
  if (!manifest.ok()) return absl::DataLossError(manifest.status().message());
  const std::string tmp = absl::StrCat(models, "/.tmp-", hex, "-", getpid());
  fs::remove_all(tmp, ec);
  for (const ModelFileEntry& f : manifest->files) {
    const std::string id = absl::StrCat("sha256:", f.sha256);
    absl::StatusOr<std::string> blob = blobs_->Get(id, /*verify_bytes=*/true);
    if (!blob.ok()) {
      fs::remove_all(tmp, ec);
      return absl::Status(blob.status().code(), absl::StrCat("model ", model_id, " file ", f.path,
                                                             ": ", blob.status().message()));
    }
    const fs::path target = fs::path(tmp) / f.path;  // ValidateModelPath: stays under tmp
    fs::create_directories(target.parent_path(), ec);
    if (!ec) fs::create_hard_link(*blob, target, ec);
    if (ec) {  // another file system: copy instead
      ec.clear();
      fs::copy_file(*blob, target, fs::copy_options::overwrite_existing, ec);
    }
    if (ec) {
      fs::remove_all(tmp, ec);
      return absl::InternalError(
          absl::StrCat(target.string(), ": cannot lay out the model: ", ec.message()));
    }
  }
  fs::rename(tmp, dir, ec);
  if (ec && !fs::is_directory(dir)) {
    return absl::InternalError(absl::StrCat(dir, ": ", ec.message()));
  }
  fs::remove_all(tmp, ec);
  spdlog::info("model {} laid out in {} ({} files, {} bytes)", model_id, dir,
               manifest->files.size(), manifest->total_bytes());
  return dir;
}

absl::StatusOr<std::string> StepRunner::ResolveModelDir(const std::string& uri) {
  if (IsBlobModelUri(uri)) {
    ASSIGN_OR_RETURN(std::string model_id, BlobModelId(uri, "model_uri"));
    return EnsureBlobModel(model_id);
  }
  ASSIGN_OR_RETURN(std::string path, FileUriPath(uri, "model_uri"));
  char* real = realpath(path.c_str(), nullptr);
  if (real == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model_uri ", uri, ": no such directory on this worker"));
  }
  const std::string resolved = real;
  free(real);
  for (const std::string& root : options_.allowed_model_roots) {
    if (resolved == root || absl::StartsWith(resolved, root == "/" ? root : root + "/")) {
      return resolved;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "model_uri ", uri, " (", resolved, ") is outside this worker's --allowed-model-roots (",
      options_.allowed_model_roots.empty() ? std::string("none configured")
                                           : absl::StrJoin(options_.allowed_model_roots, ", "),
      ")"));
}

absl::StatusOr<std::string> StepRunner::FetchDataset(const std::string& id,
                                                     const std::string& field) {
  if (!IsContentId(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " \"", id.substr(0, 80), "\" is not a dataset id"));
  }
  absl::StatusOr<std::string> path = blobs_->Get(id, /*verify_bytes=*/false);
  if (!path.ok()) {
    return absl::Status(path.status().code(),
                        absl::StrCat(field, " ", id, ": ", path.status().message()));
  }
  return path;
}

absl::StatusOr<prune::PrepareOptions> StepRunner::ResolvePrepareOptions(const pb::JobSpec& proto) {
  prune::PrepareOptions o;
  ASSIGN_OR_RETURN(o.spec, JobSpecFromProto(proto));
  ASSIGN_OR_RETURN(o.model_dir, ResolveModelDir(o.spec.model_uri));
  ASSIGN_OR_RETURN(o.samples_path, FetchDataset(o.spec.dataset_id, "dataset_id"));
  if (o.spec.eval_dataset_id) {
    ASSIGN_OR_RETURN(o.eval_samples_path, FetchDataset(*o.spec.eval_dataset_id, "eval_dataset_id"));
  }
  o.device = options_.device;
  o.threads = options_.threads;
  o.batch_size = options_.batch_size;
  o.activation_cache_bytes = options_.activation_cache_bytes;
  if (!ExecutableSha256().empty()) {  // without a build identity nothing is shared
    ASSIGN_OR_RETURN(auto model_hash, prune::ModelSha256(o.model_dir));
    ASSIGN_OR_RETURN(std::string side_files, prune::ModelSideFilesSha256(o.model_dir));
    o.model_sha256 = model_hash.first;  // Prepare's response reuses it: hashed once per job
    o.preparations = &preparations_;
    o.preparation_context =
        absl::StrCat("model_weights ", model_hash.first, "\nmodel_side_files ", side_files,
                     "\ndevice_name ", options_.device_name, "\nbuild ", PRUNESVC_VERSION,
                     " torch ", TORCH_VERSION, "\nexecutable ", ExecutableSha256());
  }
  return o;
}

absl::Status StepRunner::MaybeInjectFault(std::string_view step) const {
  if (options_.inject_fault != std::string(step) + ":oom") return absl::OkStatus();
  return model::TorchGuarded("injected fault", []() -> absl::Status { throw std::bad_alloc(); });
}

absl::StatusOr<prune::PreparedJob*> StepRunner::GetOrPrepare(
    const pb::StepHeader& header, const pb::JobSpec& spec, prune::StepContext& ctx,
    bool* cache_hit) ABSL_NO_THREAD_SAFETY_ANALYSIS {  // the caller's StepScope holds device_mu_
  const std::string key = absl::StrCat(header.job_id(), "\n", DeterministicBytes(spec));
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if (it->key != key) continue;
    cache_.splice(cache_.begin(), cache_, it);
    cache_hits_->Increment();
    *cache_hit = true;
    return cache_.front().job.get();
  }
  cache_misses_->Increment();
  *cache_hit = false;
  ASSIGN_OR_RETURN(prune::PrepareOptions options, ResolvePrepareOptions(spec));
  RETURN_IF_ERROR(MaybeInjectFault("prepare"));
  ASSIGN_OR_RETURN(std::unique_ptr<prune::PreparedJob> job,
                   prune::PreparedJob::Prepare(options, ctx));
  const std::string want = options.spec.dataset_id.substr(7);
  if (job->summary().dataset_sha256 != want) {
    return absl::DataLossError(absl::StrCat(
        "dataset ", options.spec.dataset_id,
        " holds a sample set whose content hash is sha256:", job->summary().dataset_sha256));
  }
  cache_.push_front({key, header.job_id(), std::move(job)});
  while (cache_.size() > std::max<size_t>(1, options_.max_prepared_jobs)) cache_.pop_back();
  return cache_.front().job.get();
}

absl::StatusOr<pb::PrepareResponse> StepRunner::Prepare(const pb::PrepareRequest& req,
                                                        const StopFn& stop) {
  StepScope scope(*this, "prepare", req.header(), stop);
  auto run = [&]() -> absl::StatusOr<pb::PrepareResponse> {
    RETURN_IF_ERROR(scope.AcquireDevice());
    bool hit = false;
    ASSIGN_OR_RETURN(prune::PreparedJob * job,
                     GetOrPrepare(req.header(), req.spec(), scope.ctx(), &hit));
    RETURN_IF_ERROR(EnsureProjector(*job, req.projector_version(), req.projector_blob_id()));
    const search::PolicySpace& space = job->space();
    const prune::PrepareSummary& s = job->summary();
    pb::PrepareResponse resp;
    for (int u = 0; u < space.num_units(); ++u) {
      pb::UnitInfo* unit = resp.add_units();
      unit->set_name(space.units().names[u]);
      unit->set_params(space.units().params[u]);
      unit->set_dense_flops(space.units().dense_flops[u]);
    }
    resp.set_dense_flops(space.dense_flops());
    resp.set_min_flops_ratio(space.MinReachableRatio());
    pb::PolicyEvaluation* dense = resp.mutable_dense();
    for (int u = 0; u < space.num_units(); ++u) dense->add_ratios(0);
    dense->set_loss(s.dense_search.loss);
    dense->set_fitness(s.dense_search.loss);
    dense->set_accuracy(s.dense_search.accuracy.value_or(0));
    dense->set_omega(1);
    dense->set_flops_ratio(1);
    resp.set_num_samples(s.num_samples);
    std::string model_sha256 = job->options().model_sha256;
    if (model_sha256.empty()) {
      ASSIGN_OR_RETURN(auto model_hash, prune::ModelSha256(job->options().model_dir));
      model_sha256 = model_hash.first;
    }
    resp.set_model_sha256(model_sha256);
    resp.set_dataset_sha256(s.dataset_sha256);
    DimsToProto(s.dims, s.heads, resp.mutable_flops_dims());
    resp.mutable_token_stats()->set_mean_tokens(s.token_stats.mean_tokens);
    resp.mutable_token_stats()->set_mean_tokens_sq(s.token_stats.mean_tokens_sq);
    resp.mutable_token_stats()->set_mean_answer_tokens(s.token_stats.mean_answer_tokens);
    for (double d : s.owl_outlier_ratios) resp.add_owl_outlier_ratios(d);
    resp.set_cache_hit(hit);
    resp.set_shared_preparation(s.shared_preparation);
    resp.mutable_sample_order()->Assign(s.sample_order.begin(), s.sample_order.end());
    resp.set_scoring_batch_size(options_.batch_size);
    ASSIGN_OR_RETURN(std::string key, EvaluationKey(*job, model_sha256));
    resp.set_evaluation_key(key);
    return resp;
  };
  absl::StatusOr<pb::PrepareResponse> out = run();
  scope.Done(out.status()).IgnoreError();
  return out;
}

absl::StatusOr<std::string> StepRunner::EvaluationKey(const prune::PreparedJob& job,
                                                      const std::string& model_sha256) const {
  const JobSpec& spec = job.options().spec;
  if (ExecutableSha256().empty()) return std::string();  // no key: nothing is shared
  ASSIGN_OR_RETURN(std::string side_files, prune::ModelSideFilesSha256(job.options().model_dir));
  ASSIGN_OR_RETURN(int threads, model::SetTorchThreads(options_.threads));  // the count in effect
  // One field per line, named: what decides a policy's scores on this worker (worker.proto).
  const std::string material = absl::StrCat(
      "prunesvc evaluation key v1\nmodel_weights ", model_sha256, "\nmodel_side_files ", side_files,
      "\ndataset ", job.summary().dataset_sha256, "\ngranularity ", int(spec.granularity), "\nnm ",
      spec.nm.n, ":", spec.nm.m, "\nunit ", int(spec.unit), "\nmask_method ",
      std::string(MaskMethodName(spec.mask_method)), "\nbatch ", options_.batch_size, "\nthreads ",
      threads, "\ndevice ", options_.device, "\ndevice_name ", options_.device_name, "\nbuild ",
      PRUNESVC_VERSION, " torch ", TORCH_VERSION, "\nexecutable ", ExecutableSha256(), "\n");
  return "sha256:" + Sha256Hex(material);
}

absl::Status StepRunner::EnsureProjector(prune::PreparedJob& job, int version,
                                         const std::string& blob_id) {
  if (version == 0 || job.HasProjector(version)) return absl::OkStatus();
  if (blob_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("projector_version ", version,
                     " is unknown to this worker and no projector_blob_id given"));
  }
  ASSIGN_OR_RETURN(std::string path, blobs_->Get(blob_id, /*verify_bytes=*/true));
  ASSIGN_OR_RETURN(prune::ProjectorWeights w, ReadProjector(path));
  return job.RegisterProjector(version, w);
}

absl::StatusOr<std::string> StepRunner::UploadProjector(const prune::ProjectorWeights& w_in,
                                                        int version) {
  prune::ProjectorWeights w = w_in;
  std::array<at::Tensor*, 4> tensors = ProjectorTensors(w);
  std::vector<at::Tensor> cpu(4);
  std::vector<model::WriteTensor> out;
  for (int i = 0; i < 4; ++i) {
    if (!tensors[i]->defined()) continue;
    cpu[i] = tensors[i]->to(at::kCPU, at::kFloat).contiguous();
    model::WriteTensor t;
    t.name = ProjectorTensorName(i);
    t.dtype = model::DType::kF32;
    t.shape = cpu[i].sizes().vec();
    t.data = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(cpu[i].data_ptr<float>()),
                                 size_t(cpu[i].numel()) * sizeof(float));
    out.push_back(std::move(t));
  }
  const std::string path = absl::StrCat(options_.cache_dir, "/scratch/projector-v", version, "-",
                                        getpid(), ".safetensors");
  RETURN_IF_ERROR(model::WriteSafetensors(path, out, {{"format", "prunesvc.projector.v1"}}));
  absl::StatusOr<std::string> id = blobs_->Put(path);
  std::error_code ec;
  fs::remove(path, ec);
  return id;
}

absl::Status StepRunner::EvaluatePolicies(
    const pb::EvaluatePoliciesRequest& req, const StopFn& stop,
    const std::function<void(const pb::EvaluatePoliciesResponse&)>& emit) {
  StepScope scope(*this, "evaluate", req.header(), stop);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.AcquireDevice());
    bool hit = false;
    ASSIGN_OR_RETURN(prune::PreparedJob * job,
                     GetOrPrepare(req.header(), req.spec(), scope.ctx(), &hit));
    RETURN_IF_ERROR(UseRequestedOrder(*job, req.sample_order()));
    RETURN_IF_ERROR(EnsureProjector(*job, req.projector_version(), req.projector_blob_id()));
    std::vector<search::Policy> policies;
    for (int i = 0; i < req.policies_size(); ++i) {
      ASSIGN_OR_RETURN(policies.emplace_back(), PolicyOf(job->space(), req.policies(i), i));
    }
    RETURN_IF_ERROR(MaybeInjectFault("evaluate"));
    absl::Status emitted = absl::OkStatus();
    ASSIGN_OR_RETURN(const prune::SampleRange range,
                     RequestedRange(req, job->summary().num_samples));
    auto on_result = [&](int i, const prune::CandidateResult& r) {
      evaluations_->Increment();
      absl::StatusOr<pb::PolicyEvaluation> e = EvaluationProto(
          job->space(), policies[i], prune::ToEvalResult(r), req.projector_version());
      if (!e.ok()) {
        emitted.Update(e.status());
        return;
      }
      pb::EvaluatePoliciesResponse resp;
      resp.set_index(i);
      *resp.mutable_evaluation() = *std::move(e);
      resp.set_num_correct(r.num_correct);
      resp.set_num_multiple_choice(r.num_multiple_choice);
      emit(resp);
      FaultPoint("worker.evaluate");  // a result sent, the batch not finished
    };
    ASSIGN_OR_RETURN(const search::RaceLimit race, RequestedRace(req, job->summary().num_samples));
    RETURN_IF_ERROR(
        job->Evaluate(policies, req.projector_version(), scope.ctx(), on_result, range, race)
            .status());
    return emitted;
  };
  return scope.Done(run());
}

absl::StatusOr<pb::TrainProjectorResponse> StepRunner::TrainProjector(
    const pb::TrainProjectorRequest& req, const StopFn& stop) {
  StepScope scope(*this, "train", req.header(), stop);
  auto run = [&]() -> absl::StatusOr<pb::TrainProjectorResponse> {
    RETURN_IF_ERROR(scope.AcquireDevice());
    bool hit = false;
    ASSIGN_OR_RETURN(prune::PreparedJob * job,
                     GetOrPrepare(req.header(), req.spec(), scope.ctx(), &hit));
    RETURN_IF_ERROR(UseRequestedOrder(*job, req.sample_order()));
    RETURN_IF_ERROR(EnsureProjector(*job, req.projector_version(), req.projector_blob_id()));
    std::vector<search::Policy> top;
    for (int i = 0; i < req.top_policies_size(); ++i) {
      ASSIGN_OR_RETURN(top.emplace_back(), PolicyOf(job->space(), req.top_policies(i), i));
    }
    RETURN_IF_ERROR(MaybeInjectFault("train"));
    const int version = req.new_projector_version();
    pb::TrainProjectorResponse resp;
    FaultPoint("worker.train");
    if (const search::ProjectorUpdate* done = job->TrainedUpdate(version); done != nullptr) {
      resp.set_loss_before(done->loss_before);  // trained here before (a repeated step)
      resp.set_loss_after(done->loss_after);
    } else if (!job->HasProjector(version)) {
      ASSIGN_OR_RETURN(search::ProjectorUpdate update,
                       job->TrainProjector(top, req.projector_version(), version, scope.ctx()));
      resp.set_loss_before(update.loss_before);
      resp.set_loss_after(update.loss_after);
    }
    ASSIGN_OR_RETURN(std::string id, UploadProjector(*job->projector(version), version));
    resp.set_projector_version(version);
    resp.set_projector_blob_id(id);
    return resp;
  };
  absl::StatusOr<pb::TrainProjectorResponse> out = run();
  scope.Done(out.status()).IgnoreError();
  return out;
}

absl::StatusOr<pb::FinalizeResponse> StepRunner::Finalize(const pb::FinalizeRequest& req,
                                                          const StopFn& stop) {
  StepScope scope(*this, "finalize", req.header(), stop);
  auto run = [&]() -> absl::StatusOr<pb::FinalizeResponse> {
    RETURN_IF_ERROR(scope.AcquireDevice());
    bool hit = false;
    ASSIGN_OR_RETURN(prune::PreparedJob * job,
                     GetOrPrepare(req.header(), req.spec(), scope.ctx(), &hit));
    RETURN_IF_ERROR(EnsureProjector(*job, req.projector_version(), req.projector_blob_id()));
    FaultPoint("worker.finalize");
    prune::FinalizeOptions fin;
    fin.unit_ratios.assign(req.ratios().begin(), req.ratios().end());
    fin.projector_version = req.projector_version();
    if (!req.search_report_json().empty()) {
      json r = json::parse(req.search_report_json(), nullptr, /*allow_exceptions=*/false);
      if (r.is_discarded() || !r.is_object()) {
        return absl::InvalidArgumentError("search_report_json is not a JSON object");
      }
      fin.history = r.value("history", json::array());
      fin.evaluated = r.value("evaluated", json::array());
      fin.search_best = r.value("search_best", json());
      fin.eta = r.value("eta", json());
      fin.search_options = r.value("search_options", json());
      fin.audit = r.value("audit", json());
      fin.owl = r.value("owl", json());
      if (r.contains("uniform_ratio") && r["uniform_ratio"].is_number()) {
        fin.uniform_ratio = r["uniform_ratio"].get<double>();
      }
      fin.evaluations = r.value("evaluations", int64_t{0});
      for (const json& w : r.value("warnings", json::array())) {
        if (w.is_string()) fin.warnings.push_back(w.get<std::string>());
      }
    }
    RETURN_IF_ERROR(MaybeInjectFault("finalize"));
    const std::string scratch = absl::StrCat(options_.cache_dir, "/scratch/", getpid(), "-",
                                             Sha256Hex(req.header().step_id()).substr(0, 16));
    fin.out_dir = scratch + "/artifact";
    std::error_code ec;
    fs::remove_all(scratch, ec);
    fs::create_directories(scratch, ec);
    const std::string artifact_dir = fin.out_dir;
    absl::StatusOr<prune::FinalizeResult> result = job->Finalize(std::move(fin), scope.ctx());
    // The prepared state is spent either way.
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->job.get() == job) {
        cache_.erase(it);
        break;
      }
    }
    absl::StatusOr<pb::FinalizeResponse> resp = [&]() -> absl::StatusOr<pb::FinalizeResponse> {
      RETURN_IF_ERROR(result.status());
      const std::string tar = scratch + "/artifact.tar";
      RETURN_IF_ERROR(prune::TarDirectory(artifact_dir, tar));
      ASSIGN_OR_RETURN(std::string id, blobs_->Put(tar));
      pb::FinalizeResponse r;
      r.set_artifact_blob_id(id);
      r.set_artifact_size_bytes(int64_t(fs::file_size(tar)));
      r.set_flops_ratio(result->flops_ratio);
      r.set_accuracy(result->accuracy.value_or(0));
      r.set_accuracy_set(result->accuracy_set);
      r.set_report_json(result->report.dump());
      return r;
    }();
    fs::remove_all(scratch, ec);
    return resp;
  };
  absl::StatusOr<pb::FinalizeResponse> out = run();
  scope.Done(out.status()).IgnoreError();
  return out;
}

void StepRunner::CancelSteps(const std::vector<std::string>& step_ids) {
  absl::MutexLock lock(&mu_);
  for (const std::string& id : step_ids) cancelled_steps_.insert(id);
}

std::vector<std::string> StepRunner::ActiveSteps() {
  absl::MutexLock lock(&mu_);
  return {active_steps_.begin(), active_steps_.end()};
}

std::vector<std::string> StepRunner::CachedJobs() {
  if (!device_mu_.TryLock()) return {};  // a step is running; report next time
  std::vector<std::string> out;
  for (const CacheEntry& e : cache_) out.push_back(e.job_id);
  device_mu_.Unlock();
  return out;
}

}  // namespace prunesvc::worker
