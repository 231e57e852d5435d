#include "server/search_driver.h"

#include <chrono>
#include <cmath>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fault.h"
#include "common/job_spec_proto.h"
#include "common/logging.h"
#include "common/model_manifest.h"
#include "common/owl.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "server/dispatcher.h"
#include "server/model_upload.h"
#include "server/remote_policy_evaluator.h"
#include "server/search_checkpoint.h"

namespace prunesvc::server {
namespace {

namespace pb = ::prune::v1;
using nlohmann::json;

pb::JobEvent StateEvent(pb::JobState from, pb::JobState to, const std::string& reason) {
  pb::JobEvent e;
  e.mutable_state_changed()->set_from(from);
  e.mutable_state_changed()->set_to(to);
  e.mutable_state_changed()->set_reason(reason);
  return e;
}

}  // namespace

SearchDriver::SearchDriver(Dispatcher* dispatcher, std::string job_id)
    : dispatcher_(dispatcher), job_id_(std::move(job_id)) {}

void SearchDriver::Cancel() {
  stop_.store(true);
  absl::MutexLock lock(&cancel_mu_);
  for (StepCancel* c : cancels_) c->Cancel();
}

StepCancel* SearchDriver::NewCancel() {
  auto* c = new StepCancel;
  absl::MutexLock lock(&cancel_mu_);
  if (stop_.load()) c->Cancel();
  cancels_.insert(c);
  return c;
}

void SearchDriver::DropCancel(StepCancel* c) {
  {
    absl::MutexLock lock(&cancel_mu_);
    cancels_.erase(c);
  }
  delete c;
}

std::string SearchDriver::NextStepId(const std::string& kind) {
  return absl::StrCat(job_id_, "/", kind, "-", ++step_counter_);
}

void SearchDriver::RecordStep(const std::string& kind, const absl::Status& status, double seconds) {
  const std::string outcome = status.ok()           ? "ok"
                              : IsRetryable(status) ? "retryable_error"
                              : stopped()           ? "cancelled"
                                                    : "error";
  DispatcherMetrics& m = dispatcher_->metrics();
  m.steps->Add({{"step", kind}, {"outcome", outcome}}).Increment();
  m.step_seconds
      ->Add({{"step", kind}}, prometheus::Histogram::BucketBoundaries{0.001, 0.01, 0.1, 0.5, 1, 5,
                                                                      15, 60, 300, 1200, 3600})
      .Observe(seconds);
}

absl::Status SearchDriver::RunStep(
    const std::string& kind, absl::Duration deadline,
    const std::function<absl::Status(const WorkerLease&, StepCancel*)>& call) {
  Dispatcher& d = *dispatcher_;
  absl::Status last;
  absl::Duration backoff = d.options().retry_backoff;
  d.SetJobBlobs(job_id_, tenant_, StepBlobs());
  for (int attempt = 1; attempt <= d.options().max_attempts; ++attempt) {
    if (stopped()) return absl::CancelledError("the job was cancelled");
    ASSIGN_OR_RETURN(WorkerLease lease,
                     d.Acquire(job_id_, priority_, [this] { return stopped(); }));
    StepCancel* cancel = NewCancel();
    const auto t0 = std::chrono::steady_clock::now();
    last = call(lease, cancel);
    DropCancel(cancel);
    RecordStep(kind, last,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    d.NoteAffinity(job_id_, lease.worker_id);
    d.Release(lease, IsRetryable(last));
    if (last.ok() || !IsRetryable(last) || stopped()) return last;
    spdlog::warn("job={} step={} attempt={} on worker={} failed (retrying elsewhere): {}", job_id_,
                 kind, attempt, lease.worker_id, last.message());
    d.metrics().retries->Increment();
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff *= 2;
  }
  return absl::Status(last.code(), absl::StrCat(kind, " failed on ", d.options().max_attempts,
                                                " attempts; last: ", last.message()));
}

std::set<std::string> SearchDriver::StepBlobs() const {
  std::set<std::string> ids;
  for (const std::string& id : {spec_proto_.dataset_id(), spec_proto_.eval_dataset_id()}) {
    if (!id.empty()) ids.insert(id);
  }
  for (const auto& [version, id] : projector_blobs_) ids.insert(id);
  ids.insert(model_blobs_.begin(), model_blobs_.end());
  return ids;
}

absl::Status SearchDriver::IndexForTenant(const std::string& blob_id, BlobKind kind) {
  if (tenant_.empty() || blob_id.empty()) return absl::OkStatus();  // PutBlob indexed it for ""
  JobStore* store = dispatcher_->store();
  ASSIGN_OR_RETURN(BlobRecord stored, store->GetBlob("", blob_id));
  BlobRecord mine = stored;
  mine.tenant = tenant_;
  mine.kind = kind;
  return store->PutBlob(mine).status();
}

absl::Status SearchDriver::Commit(const JobMutation& mutation, std::vector<pb::JobEvent> events,
                                  const std::optional<Checkpoint>& checkpoint) {
  for (pb::JobEvent& e : events) e.set_job_id(job_id_);
  const DispatcherOptions& o = dispatcher_->options();
  for (absl::Duration wait = o.commit_retry_backoff;;
       wait = std::min(2 * wait, o.commit_retry_max)) {
    absl::StatusOr<CommitResult> r =
        dispatcher_->store()->Commit(job_id_, mutation, events, checkpoint);
    if (r.ok()) {
      state_ = r->job.state();
      dispatcher_->hub()->Publish(r->events);
      return absl::OkStatus();
    }
    if (!absl::IsResourceExhausted(r.status()) || stopped()) return r.status();
    spdlog::warn("job={} cannot commit, retrying in {}: {}", job_id_, absl::FormatDuration(wait),
                 r.status().message());
    dispatcher_->metrics().commit_retries->Increment();
    for (absl::Time until = absl::Now() + wait; absl::Now() < until && !stopped();) {
      absl::SleepFor(std::min(absl::Milliseconds(100), until - absl::Now()));
    }
  }
}

absl::Status SearchDriver::Transition(pb::JobState to, const std::string& reason) {
  if (state_ == to) return absl::OkStatus();
  JobMutation m;
  m.state = to;
  m.expected_states = {state_};
  return Commit(m, {StateEvent(state_, to, reason)});
}

void SearchDriver::Fail(const absl::Status& status) {
  JobMutation m;
  m.state = pb::FAILED;
  m.error = std::string(status.message());
  m.error_code = int(status.code());
  absl::Status s = Commit(m, {StateEvent(state_, pb::FAILED, std::string(status.message()))});
  if (!s.ok()) spdlog::warn("job={} could not record its failure: {}", job_id_, s.message());
}

void SearchDriver::Run() {
  absl::Status s = RunJob();
  if (s.ok() || stopped()) return;
  absl::StatusOr<pb::Job> now = dispatcher_->store()->GetJob(job_id_);
  if (now.ok() && IsTerminalState(now->state())) return;  // cancelled under us
  spdlog::warn("job={} failed: {}", job_id_, s.message());
  Fail(s);
}

absl::Status SearchDriver::RunJob() {
  ASSIGN_OR_RETURN(pb::Job job, dispatcher_->store()->GetJob(job_id_));
  if (IsTerminalState(job.state())) return absl::OkStatus();
  state_ = job.state();
  tenant_ = job.tenant();
  spec_proto_ = job.spec();
  priority_ = spec_proto_.priority();
  ASSIGN_OR_RETURN(spec_, JobSpecFromProto(spec_proto_));
  RETURN_IF_ERROR(LoadModelBlobs());
  RETURN_IF_ERROR(Prepare());
  // A job resumed in FINALIZING re-derives its policy from the finished checkpoint (Search() runs
  // no generation) and must not step back to SEARCHING.
  if (state_ != pb::FINALIZING) RETURN_IF_ERROR(Transition(pb::SEARCHING, "search started"));
  if (spec_.searching()) {
    RETURN_IF_ERROR(Search());
  } else if (spec_.strategy == search::Strategy::kOwl) {
    RETURN_IF_ERROR(SolveOwl());
  } else {
    RETURN_IF_ERROR(SolveUniform());
  }
  RETURN_IF_ERROR(Transition(pb::FINALIZING, "writing the artifact"));
  return Finalize();
}

absl::Status SearchDriver::LoadModelBlobs() {
  if (!IsBlobModelUri(spec_.model_uri)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string model_id, BlobModelId(spec_.model_uri, "model_uri"));
  if (dispatcher_->blobs() == nullptr) {
    return absl::FailedPreconditionError("this scheduler has no blob store for blob:// models");
  }
  ASSIGN_OR_RETURN(
      ModelManifest manifest,
      LoadModelManifest(*dispatcher_->store(), *dispatcher_->blobs(), tenant_, model_id));
  model_blobs_ = ModelBlobIds(model_id, manifest);
  return absl::OkStatus();
}

absl::Status SearchDriver::Prepare() {
  pb::PrepareRequest req;
  req.mutable_header()->set_job_id(job_id_);
  *req.mutable_spec() = spec_proto_;
  RETURN_IF_ERROR(RunStep(
      "prepare", dispatcher_->options().prepare_deadline,
      [&](const WorkerLease& lease, StepCancel* cancel) -> absl::Status {
        // QUEUED until a worker is granted.
        if (state_ == pb::QUEUED) {
          RETURN_IF_ERROR(
              Transition(pb::PREPARING, absl::StrCat("worker ", lease.worker_id, " prepares it")));
        }
        req.mutable_header()->set_step_id(NextStepId("prepare"));
        ASSIGN_OR_RETURN(
            prepared_, lease.client->Prepare(req, dispatcher_->options().prepare_deadline, cancel));
        return absl::OkStatus();
      }));
  ASSIGN_OR_RETURN(search::PolicySpace space, PolicySpaceFromPrepare(spec_, prepared_));
  space_ = std::make_unique<search::PolicySpace>(std::move(space));
  sample_order_.assign(prepared_.sample_order().begin(), prepared_.sample_order().end());
  if (absl::Status b = space_->CheckBudget(spec_.flops_budget); !b.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("flops_budget: ", b.message()));
  }
  return absl::OkStatus();
}

pb::PolicyEvaluation SearchDriver::BestProto(const search::ScoredPolicy& best) const {
  pb::PolicyEvaluation e;
  absl::StatusOr<std::vector<double>> ratios = space_->UnitRatios(best.policy);
  if (ratios.ok()) e.mutable_ratios()->Assign(ratios->begin(), ratios->end());
  e.set_fitness(best.fitness);
  e.set_loss(best.result.loss);
  e.set_accuracy(best.result.accuracy);
  e.set_omega(best.result.omega);
  e.set_flops_ratio(best.flops_ratio);
  e.set_policy_hash(best.hash);
  return e;
}

absl::StatusOr<SearchDriver::GenerationCommit> SearchDriver::PrepareGenerationCommit(
    const search::EvolutionarySearch& search, const json& evaluated, bool trained) {
  const search::GenerationStats& g = search.history().back();
  ASSIGN_OR_RETURN(search::ScoredPolicy best, search.Best());
  pb::JobEvent gen;
  pb::JobEvent::GenerationFinished* f = gen.mutable_generation_finished();
  f->set_generation(g.generation);
  f->set_generations_total(spec_.generations + 1);
  *f->mutable_best() = BestProto(best);
  f->mutable_best()->set_projector_version(g.projector_version);
  f->set_mean_fitness(g.mean_fitness);
  f->set_std_fitness(g.std_fitness);
  f->set_evaluations(g.evaluations);
  f->set_cache_hits(g.cache_hits);
  f->set_eta(g.eta);
  // The search records the method when an issue-14 option is in use; otherwise it is the spec's.
  f->set_eta_method(!g.eta_method.empty()                               ? g.eta_method
                    : spec_.strategy == search::Strategy::kRandomSearch ? "zero"
                    : spec_.eta.has_value()                             ? "explicit"
                                                                        : "auto");
  f->set_estimator(std::string(search::EstimatorName(spec_.estimator)));
  if (g.eta_cv_rho.has_value()) f->set_eta_cv_rho(*g.eta_cv_rho);
  std::vector<pb::JobEvent> events = {gen};
  if (trained) {
    RETURN_IF_ERROR(IndexForTenant(projector_blobs_[g.projector_version], BlobKind::kProjector));
    pb::JobEvent p;
    p.mutable_projector_updated()->set_version(g.projector_version);
    p.mutable_projector_updated()->set_loss_before(g.projector_loss_before);
    p.mutable_projector_updated()->set_loss_after(g.projector_loss_after);
    p.mutable_projector_updated()->set_blob_id(projector_blobs_[g.projector_version]);
    events.push_back(p);
  }
  GenerationCommit gc;
  gc.events = std::move(events);
  JobMutation& m = gc.mutation;
  m.generation = g.generation;
  m.projector_version = g.projector_version;
  m.best = f->best();
  m.progress = 0.05 + 0.85 * double(g.generation + 1) / double(spec_.generations + 1);
  // Incremental: the head and what this generation added (server/search_checkpoint.h), taken
  // when the write starts — after the next generation's calls are out — from what is true now.
  gc.take_snapshot = [this, &search, &evaluated, evaluated_end = evaluated.size(),
                      evaluations = evaluations_, blobs = projector_blobs_] {
    return checkpoint_log_.Snapshot(search.state(), blobs, evaluated, evaluations, sample_order_,
                                    evaluated_end);
  };
  gc.generation = g.generation;
  return gc;
}

void SearchDriver::StartCommit(GenerationCommit gc) {
  pending_commit_ = std::make_unique<PendingCommit>();
  dispatcher_->step_threads().Run([this, gc = std::move(gc), p = pending_commit_.get()]() mutable {
    CheckpointDelta delta = gc.snapshot.Serialize();
    Checkpoint c;
    c.generation = gc.generation;
    c.search_state_json = std::move(delta.head);
    c.log = std::move(delta.records);
    c.cache_entries = std::move(gc.cache_entries);
    p->status = Commit(gc.mutation, std::move(gc.events), c);
    if (p->status.ok()) {
      checkpoint_log_.Committed(delta);
      dispatcher_->ReportSearchBest(job_id_, gc.mutation.best->accuracy(),
                                    gc.mutation.best->flops_ratio());
      FaultPoint("scheduler.checkpoint");
    }
    p->done.Notify();
  });
}

void SearchDriver::StartDeferredCommit() {
  if (!deferred_commit_.has_value()) return;
  GenerationCommit gc = *std::move(deferred_commit_);
  deferred_commit_.reset();
  gc.snapshot = std::exchange(gc.take_snapshot, nullptr)();
  StartCommit(std::move(gc));
}

absl::Status SearchDriver::AwaitCommit() {
  StartDeferredCommit();
  if (pending_commit_ == nullptr) return absl::OkStatus();
  pending_commit_->done.WaitForNotification();
  absl::Status s = std::move(pending_commit_->status);
  pending_commit_.reset();
  return s;
}

absl::StatusOr<std::vector<double>> SearchDriver::UniformRatios() const {
  double r = space_->max_ratio();
  if (spec_.granularity != search::Granularity::kNM) {
    ASSIGN_OR_RETURN(r, space_->UniformContinuousRatio(spec_.flops_budget));
  }
  return std::vector<double>(space_->num_units(), r);
}

absl::StatusOr<std::vector<double>> SearchDriver::OwlRatios() const {
  const std::vector<double> outliers(prepared_.owl_outlier_ratios().begin(),
                                     prepared_.owl_outlier_ratios().end());
  if (spec_.granularity == search::Granularity::kNM) {
    return search::OwlNmRatios(*space_, outliers, spec_.flops_budget);
  }
  ASSIGN_OR_RETURN(std::vector<double> deviations, search::OwlDeviations(outliers));
  return space_->ShiftToBudget(deviations, spec_.flops_budget);
}

absl::StatusOr<std::vector<std::vector<double>>> SearchDriver::WarmStartRatios(size_t limit) const {
  const std::string& id = spec_.warm_start_job_id;
  absl::StatusOr<std::optional<Checkpoint>> c = dispatcher_->store()->LoadCheckpoint(id);
  if (absl::IsNotFound(c.status())) {  // deleted since SubmitJob checked it
    return absl::FailedPreconditionError(
        absl::StrCat("warm_start_job_id: job ", id, " was deleted before this job started"));
  }
  if (!c.ok()) return c.status();
  if (!c->has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("warm_start_job_id: job ", id, " left no search state to start from"));
  }
  absl::StatusOr<SearchCheckpoint> sc = ParseSearchCheckpoint((*c)->search_state_json, (*c)->log);
  if (!sc.ok()) {
    return absl::DataLossError(
        absl::StrCat("warm_start_job_id: job ", id, "'s search state: ", sc.status().message()));
  }
  const search::SearchState& from = sc->state;
  if (from.num_units != space_->num_units()) {
    return absl::FailedPreconditionError(
        absl::StrCat("warm_start_job_id: job ", id, " searched ", from.num_units,
                     " units, this job's model has ", space_->num_units()));
  }
  std::vector<std::vector<double>> out;
  for (const search::Policy& p : from.ranked) {
    if (out.size() >= limit) break;
    std::vector<double>& ratios = out.emplace_back();
    for (int choice : p) {
      if (choice < 0 || size_t(choice) >= from.ratio_choices.size()) {
        return absl::DataLossError(absl::StrCat("warm_start_job_id: job ", id,
                                                "'s ranked policies name ratio choice ", choice,
                                                " of ", from.ratio_choices.size()));
      }
      ratios.push_back(from.ratio_choices[size_t(choice)]);
    }
  }
  return out;
}

absl::Status SearchDriver::Search() {
  absl::Status s = SearchGenerations();
  // Never leave with a write in flight: whatever the driver commits next comes after it.
  absl::Status written = AwaitCommit();
  return s.ok() ? written : s;
}

absl::Status SearchDriver::SearchGenerations() {
  search::SearchConfig config = spec_.ToSearchConfig(prepared_.num_samples());
  // The continuous seeds prune-local's --seed-with-uniform / --seed-with-owl add, in that order,
  // recorded like prune-local's (report.json's search.seed_unit_ratios).
  json seeds = json::object();
  if (spec_.seed_with_uniform) {
    ASSIGN_OR_RETURN(config.seed_unit_ratios.emplace_back(), UniformRatios());
    seeds["UNIFORM"] = config.seed_unit_ratios.back();
  }
  if (spec_.seed_with_owl) {
    ASSIGN_OR_RETURN(config.seed_unit_ratios.emplace_back(), OwlRatios());
    seeds["OWL"] = config.seed_unit_ratios.back();
  }
  std::unique_ptr<search::EvolutionarySearch> search;
  int latest = 0;
  ASSIGN_OR_RETURN(std::optional<Checkpoint> checkpoint,
                   dispatcher_->store()->LoadCheckpoint(job_id_));
  RemotePolicyEvaluator* evaluator = nullptr;
  std::unique_ptr<RemotePolicyEvaluator> owned;
  if (checkpoint.has_value()) {  // resume at the last generation boundary
    ASSIGN_OR_RETURN(SearchCheckpoint sc,
                     ParseSearchCheckpoint(checkpoint->search_state_json, checkpoint->log));
    checkpoint_log_ = CheckpointLog::Resumed(sc, checkpoint->log);
    projector_blobs_ = sc.projector_blobs;
    // Its cached losses count positions of the order they were scored in: the workers score in
    // it again (a checkpoint without one was scored in index order).
    if (sc.sample_order.has_value()) {
      sample_order_ = *sc.sample_order;
    } else {
      sample_order_.resize(size_t(prepared_.num_samples()));
      std::iota(sample_order_.begin(), sample_order_.end(), 0);
    }
    if (!projector_blobs_.empty()) latest = projector_blobs_.rbegin()->first;
    report_["evaluated"] = std::move(sc.evaluated);
    evaluations_ = sc.evaluations;
    ASSIGN_OR_RETURN(search, search::EvolutionarySearch::Resume(space_.get(), std::move(sc.state)));
    spdlog::info("job={} resumes its search at generation {}", job_id_, search->state().generation);
  } else {
    if (!spec_.warm_start_job_id.empty()) {
      const size_t room = size_t(std::max(0, spec_.population - 1));
      ASSIGN_OR_RETURN(std::vector<std::vector<double>> warm, WarmStartRatios(room));
      spdlog::info("job={} starts from {} ranked policies of job {}", job_id_, warm.size(),
                   spec_.warm_start_job_id);
      for (std::vector<double>& r : warm) config.seed_unit_ratios.push_back(std::move(r));
    }
    ASSIGN_OR_RETURN(search, search::EvolutionarySearch::Create(space_.get(), config));
  }
  owned = std::make_unique<RemotePolicyEvaluator>(this, space_.get(), latest);
  evaluator = owned.get();
  // A generation's write reads the search and the evaluator when it starts: whatever way this
  // returns, it starts while both are alive.
  absl::Cleanup start_write = [this] { StartDeferredCommit(); };
  evaluator->evaluated() = report_.value("evaluated", json::array());
  evaluator->set_evaluations(evaluations_);
  json history = json::array();
  while (!search->done()) {
    if (stopped()) return absl::CancelledError("the job was cancelled");
    const int before = evaluator->latest_version();
    // Generation g - 1's write starts once g's calls are out (the evaluator's hook) or, when g
    // dispatches nothing, just before g's state replaces g - 1's (Step's hook), never later: its
    // snapshot is of g - 1's state.
    RETURN_IF_ERROR(search->Step(*evaluator, [this] { StartDeferredCommit(); }));
    evaluations_ = evaluator->evaluations();
    // g - 1's write must be done before g's is prepared: a crash resumes at most one generation
    // earlier than with the write on the critical path.
    RETURN_IF_ERROR(AwaitCommit());
    ASSIGN_OR_RETURN(GenerationCommit gc,
                     PrepareGenerationCommit(*search, evaluator->evaluated(),
                                             evaluator->latest_version() != before));
    gc.cache_entries = evaluator->TakeCacheEntries();
    deferred_commit_ = std::move(gc);
    evaluator->set_after_dispatch([this] { StartDeferredCommit(); });
  }
  evaluator->set_after_dispatch(nullptr);
  StartDeferredCommit();  // the last generation's: nothing is dispatched after it
  report_["evaluated"] = evaluator->evaluated();
  // Of those, answered from the evaluation cache across jobs (this run of the driver; the
  // scheduler's record: the worker's report.json keeps prune-local's fields only).
  report_["evaluations_reused"] = evaluator->reused();
  if (evaluator->reused() > 0) {
    spdlog::info("job={} reused {} evaluations from the tenant's earlier jobs", job_id_,
                 evaluator->reused());
  }
  ASSIGN_OR_RETURN(search::ScoredPolicy best, search->Best());
  ASSIGN_OR_RETURN(unit_ratios_, space_->UnitRatios(best.policy));
  for (const auto& g : search->history()) history.push_back(g.ToJson());
  report_["history"] = history;
  report_["search_best"] = {{"hash", best.hash},
                            {"fitness", best.fitness},
                            {"loss", best.result.loss},
                            {"accuracy", best.result.accuracy},
                            {"omega", best.result.omega},
                            {"flops_ratio_nominal", best.flops_ratio},
                            {"projector_version", search->state().projector_version}};
  report_["eta"] = SearchEtaJson(spec_, search->state().eta.value_or(0.0), search->history());
  json options = SearchOptionsJson(spec_, search->history());
  if (!seeds.empty()) options["seed_unit_ratios"] = std::move(seeds);
  if (!options.empty()) report_["search_options"] = std::move(options);
  final_projector_version_ = evaluator->latest_version();
  return absl::OkStatus();
}

absl::Status SearchDriver::SolveUniform() {
  ASSIGN_OR_RETURN(unit_ratios_, UniformRatios());
  report_["uniform_ratio"] = unit_ratios_.front();
  report_["eta"] = {{"value", nullptr}, {"mode", "unused (UNIFORM has no fitness)"}};
  return absl::OkStatus();
}

absl::Status SearchDriver::SolveOwl() {
  const std::vector<double> outliers(prepared_.owl_outlier_ratios().begin(),
                                     prepared_.owl_outlier_ratios().end());
  ASSIGN_OR_RETURN(std::vector<double> deviations, search::OwlDeviations(outliers));
  const bool nm = spec_.granularity == search::Granularity::kNM;
  ASSIGN_OR_RETURN(unit_ratios_, OwlRatios());
  double mean = 0;
  for (double r : unit_ratios_) mean += r / double(unit_ratios_.size());
  report_["owl"] = {{"outlier_multiple", search::kOwlOutlierMultiple},
                    {"lambda", search::kOwlLambda},
                    {"units", space_->units().names},
                    {"outlier_ratios", outliers},
                    {"deviations", deviations},
                    {"ratios", unit_ratios_},
                    {"mean_ratio", mean},
                    {"rule", nm ? "N:M: units made dense in decreasing outlier ratio while the "
                                  "budget holds (stop at the first that does not fit)"
                                : "ratio = clamp(deviation + t, 0, max ratio), smallest t "
                                  "meeting the budget"}};
  report_["eta"] = {{"value", nullptr}, {"mode", "unused (OWL has no fitness)"}};
  return absl::OkStatus();
}

absl::Status SearchDriver::Finalize() {
  pb::FinalizeRequest req;
  req.mutable_header()->set_job_id(job_id_);
  *req.mutable_spec() = spec_proto_;
  req.mutable_ratios()->Assign(unit_ratios_.begin(), unit_ratios_.end());
  req.set_projector_version(final_projector_version_);
  auto blob = projector_blobs_.find(final_projector_version_);
  if (blob != projector_blobs_.end()) req.set_projector_blob_id(blob->second);
  json r = report_;
  r["evaluations"] = evaluations_;
  req.set_search_report_json(r.dump());
  pb::FinalizeResponse resp;
  RETURN_IF_ERROR(RunStep("finalize", dispatcher_->options().finalize_deadline,
                          [&](const WorkerLease& lease, StepCancel* cancel) -> absl::Status {
                            req.mutable_header()->set_step_id(NextStepId("finalize"));
                            ASSIGN_OR_RETURN(
                                resp, lease.client->Finalize(
                                          req, dispatcher_->options().finalize_deadline, cancel));
                            return absl::OkStatus();
                          }));
  FaultPoint("scheduler.finalize");  // the artifact is stored, the job not yet SUCCEEDED
  RETURN_IF_ERROR(IndexForTenant(resp.artifact_blob_id(), BlobKind::kArtifact));
  pb::JobEvent ready;
  pb::JobEvent::ArtifactReady* a = ready.mutable_artifact_ready();
  a->set_artifact_id(resp.artifact_blob_id());
  a->set_sha256(resp.artifact_blob_id().substr(7));
  a->set_size_bytes(resp.artifact_size_bytes());
  a->set_flops_ratio(resp.flops_ratio());
  a->set_accuracy(resp.accuracy());
  a->set_accuracy_set(resp.accuracy_set());
  // ArtifactReady and the terminal StateChanged in one commit, in that order.
  JobMutation m;
  m.expected_states = {state_};
  m.state = pb::SUCCEEDED;
  m.artifact_id = resp.artifact_blob_id();
  m.artifact_sha256 = resp.artifact_blob_id().substr(7);
  m.progress = 1.0;
  return Commit(m, {ready, StateEvent(state_, pb::SUCCEEDED, "artifact ready")});
}

}  // namespace prunesvc::server
