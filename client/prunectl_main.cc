// prunectl: command-line client for prunesvc. Thin: parsing and printing only; calls go through
// client/client.h and the multi-call operations in client/operations.h.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/batch.h"
#include "client/cli_args.h"
#include "client/client.h"
#include "client/job_file.h"
#include "client/operations.h"
#include "client/progress.h"
#include "common/cli_exit.h"
#include "common/flags.h"
#include "common/tls.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "Server address host:port.");
ABSL_FLAG(std::string, token, "",
          "Bearer token for the scheduler's --auth-tokens (default: $PRUNESVC_TOKEN; prefer the "
          "variable or --token-file: a flag shows in ps).");
ABSL_FLAG(std::string, token_file, "", "File holding the bearer token (instead of --token).");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that verifies the scheduler's certificate: turns on TLS (default: "
          "$PRUNESVC_TLS_CA).");
ABSL_FLAG(bool, tls, false, "TLS verified against the system's CA roots (without --tls-ca).");
ABSL_FLAG(std::string, service, "",
          "health: the service to check (e.g. prune.v1.PruningService); empty = whole server.");
ABSL_FLAG(double, timeout, 5.0, "Deadline for each unary call, seconds.");
ABSL_FLAG(double, stream_timeout, 3600.0,
          "Deadline for one streaming call (an upload, a fetch attempt, one watch connection; "
          "watch and fetch reconnect and resume after it), seconds.");
ABSL_FLAG(bool, json, false, "Read commands: print one JSON object on stdout (logs on stderr).");
// upload-dataset
ABSL_FLAG(std::string, name, "",
          "upload-dataset, upload-model: display name (default: the path's base name).");
// submit: every flag is sent only when given (the server fills the documented defaults).
ABSL_FLAG(std::string, file, "",
          "submit: a JSON or YAML job file (JobSpec field names); flags "
          "override its values.");
ABSL_FLAG(std::string, model, "", "submit: model_uri: file:///abs/dir or a plain path.");
ABSL_FLAG(std::string, dataset, "", "submit: dataset_id (sha256:<hex> from upload-dataset).");
ABSL_FLAG(std::string, eval_dataset, "", "submit: eval_dataset_id (held-out set).");
ABSL_FLAG(std::string, flops_budget, "", "submit: FLOPs budget in (0, 1].");
ABSL_FLAG(std::string, granularity, "", "submit: UNSTRUCTURED | N_M | STRUCTURED.");
ABSL_FLAG(std::string, nm, "", "submit: N:M pattern with N_M: 2:4 | 4:8.");
ABSL_FLAG(std::string, unit, "", "submit: LAYER | LINEAR.");
ABSL_FLAG(std::string, strategy, "", "submit: EFFICIENTLLAVA | UNIFORM | OWL | RANDOM_SEARCH.");
ABSL_FLAG(std::string, mask_method, "", "submit: search mask: MAGNITUDE | WANDA.");
ABSL_FLAG(std::string, final_mask_method, "",
          "submit: artifact mask: MAGNITUDE | WANDA | "
          "SPARSEGPT.");
ABSL_FLAG(std::string, population, "", "submit: population, [4, 1024].");
ABSL_FLAG(std::string, generations, "", "submit: generations, [1, 1000].");
ABSL_FLAG(std::string, parents, "", "submit: parents, [2, population).");
ABSL_FLAG(std::string, mutation, "", "submit: per-unit mutation probability, [0, 1].");
ABSL_FLAG(std::string, ratio_choices, "", "submit: comma-separated ratios, each in [0, 1).");
ABSL_FLAG(std::string, eta, "", "submit: SRM weight: auto or a number >= 0.");
ABSL_FLAG(std::string, projector_every, "", "submit: generations between projector trainings.");
ABSL_FLAG(std::string, projector_steps, "", "submit: Adam steps per projector training.");
ABSL_FLAG(std::string, projector_lr, "", "submit: projector learning rate.");
ABSL_FLAG(std::string, projector_decay, "", "submit: projector weight decay mu.");
ABSL_FLAG(std::string, seed, "", "submit: random seed (unsigned).");
ABSL_FLAG(std::string, priority, "", "submit: priority, [-100, 100].");
ABSL_FLAG(std::string, request_id, "", "submit: idempotency key.");
ABSL_FLAG(std::string, warm_start, "",
          "submit: a SUCCEEDED job of the same model, dataset, granularity and unit whose ranked "
          "policies join the initial population (warm_start_job_id).");
ABSL_FLAG(std::vector<std::string>, label, {},
          "submit: a label k=v; list: a label filter k=v. Repeatable.");
// watch, list, cancel, fetch
ABSL_FLAG(int64_t, from_sequence, 0, "watch: resume after this event sequence.");
ABSL_FLAG(std::vector<std::string>, state, {},
          "list: a state filter (e.g. SEARCHING). "
          "Repeatable.");
ABSL_FLAG(int32_t, page_size, 0, "list: jobs per page (server default 50, max 500).");
ABSL_FLAG(bool, all, false, "list: follow page tokens to the end.");
ABSL_FLAG(std::string, reason, "", "cancel: the reason recorded with the job.");
ABSL_FLAG(std::string, out, "", "fetch: the directory to create (must not exist or be empty).");

namespace {

namespace pb = ::prune::v1;
using prunesvc::ExitCodeForStatus;
using prunesvc::client::Client;

constexpr char kUsage[] =
    "prunectl: command-line client for prunesvc.\n"
    "Usage: prunectl COMMAND [ARGS] [--addr=HOST:PORT] [flags]\n"
    "Commands:\n"
    "  health                      SERVING / NOT_SERVING of a scheduler or worker\n"
    "  workers [--json]            the workers registered with a scheduler\n"
    "  upload-dataset DIR|TAR [--name=N] [--json]\n"
    "                              upload a sample set (a directory with samples.jsonl at its\n"
    "                              root is packed into a tar); prints the dataset id\n"
    "  upload-model DIR [--name=N] [--json]\n"
    "                              store a model directory in the scheduler (file by file,\n"
    "                              resumable: a re-run sends only missing files); prints the\n"
    "                              blob://sha256:... URI to submit with --model\n"
    "  submit [--file=job.yaml|job.json] [--model=... --dataset=... --flops-budget=...] [--json]\n"
    "                              submit a job (flags override the file); prints the job id\n"
    "  watch JOB [--from-sequence=N] [--json]\n"
    "                              follow a job to its end (reconnects and resumes)\n"
    "  get JOB [--json]            one job\n"
    "  list [--state=S]... [--label=k=v]... [--page-size=N] [--all] [--json]\n"
    "  cancel JOB [--reason=R] [--json]\n"
    "  delete JOB                  delete a finished job (its events, artifact, projectors)\n"
    "  datasets [--json]           the datasets you uploaded\n"
    "  delete-dataset DATASET      delete a dataset no unfinished job uses\n"
    "  models [--json]             the models you uploaded (upload-model)\n"
    "  delete-model MODEL          delete an uploaded model no unfinished job uses\n"
    "  fetch JOB --out=DIR [--json] download, verify (sha256, MANIFEST.sha256) and unpack the\n"
    "                              artifact of a SUCCEEDED job (resumes after a dropped\n"
    "                              connection and across runs)\n"
    "  batch JOBS.yaml             submit a grid of jobs (models x budgets x strategies x ...),\n"
    "                              follow them, fetch the artifacts, write summary.csv/.md;\n"
    "                              a re-run submits and fetches only what is missing\n"
    "Credentials (a scheduler with --auth-tokens / TLS): --token, --token-file or\n"
    "  $PRUNESVC_TOKEN; --tls-ca=CA.pem or $PRUNESVC_TLS_CA (or --tls for the system roots)\n"
    "Exit codes (common/cli_exit.h):\n"
    "  0    success (watch: the job SUCCEEDED)\n"
    "  1    other failures: server unreachable or unavailable, internal errors, a missing or\n"
    "       invalid token (UNAUTHENTICATED, PERMISSION_DENIED) (health: not\n"
    "       SERVING; watch: the job FAILED for an internal reason)\n"
    "  2    input to fix: bad flags, job file or spec (INVALID_ARGUMENT), unknown job or dataset\n"
    "       (NOT_FOUND), an existing --out, a corrupt download (DATA_LOSS), FAILED_PRECONDITION\n"
    "       (watch: the job FAILED with one of these codes, e.g. an unreachable budget)\n"
    "  130  cancelled (watch: the job was CANCELLED)";

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "prunectl: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return ExitCodeForStatus(s);
}

// A usage error (exit 2); `full` adds the command list.
int Usage(const std::string& why, bool full = false) {
  std::fprintf(stderr, "prunectl: %s\n%s%s(run prunectl --help for commands, flags, exit codes)\n",
               why.c_str(), full ? kUsage : "", full ? "\n" : "");
  return 2;
}

void PrintJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  std::printf("%s", out.c_str());
}

bool StderrIsTty() { return isatty(STDERR_FILENO) == 1; }

// A progress callback drawing a bar on stderr when it is a terminal and the transfer is large.
prunesvc::client::ProgressFn TransferBar(const char* what) {
  if (!StderrIsTty()) return nullptr;
  return [what, last = absl::InfinitePast()](int64_t done, int64_t total) mutable {
    const absl::Time now = absl::Now();
    const bool end = total > 0 && done >= total;
    if (total < (4 << 20) && total > 0) return;
    if (!end && now - last < absl::Milliseconds(200)) return;
    last = now;
    std::fprintf(stderr, "\r\033[K%s %s%s", what,
                 prunesvc::client::FormatTransferBar(done, total).c_str(), end ? "\n" : "");
  };
}

void NoteRetry(const absl::Status& s, absl::Duration delay) {
  std::fprintf(stderr, "\nprunectl: %s; retrying in %s\n", std::string(s.message()).c_str(),
               absl::FormatDuration(delay).c_str());
}

// --- commands -----------------------------------------------------------------------------

struct Context {
  Client& client;
  std::vector<std::string> args;  // positional, after the command
  std::map<std::string, std::vector<std::string>> repeated;
  std::set<std::string> given;  // flag names on the command line, hyphenated
  bool json;
};

int CmdHealth(Context& c) {
  const std::string service = absl::GetFlag(FLAGS_service);
  auto status = c.client.Health(service);
  const std::string name =
      status.ok() ? prunesvc::client::ServingStatusName(*status) : std::string("NOT_SERVING");
  if (c.json) {
    nlohmann::json j = {{"address", c.client.address()}, {"service", service}, {"status", name}};
    if (!status.ok()) j["error"] = std::string(status.status().message());
    std::printf("%s\n", j.dump(1).c_str());
  } else {
    std::printf("%s\n", name.c_str());
  }
  if (!status.ok()) {
    std::fprintf(stderr, "prunectl: %s unreachable: %s\n", c.client.address().c_str(),
                 std::string(status.status().message()).c_str());
    return 1;
  }
  return *status == prunesvc::client::ServingStatus::kServing ? 0 : 1;
}

int CmdWorkers(Context& c) {
  auto workers = c.client.ListWorkers();
  if (!workers.ok()) return Fail(workers.status());
  if (c.json) {
    pb::ListWorkersResponse resp;
    for (const auto& w : *workers) *resp.add_workers() = w;
    PrintJson(resp);
    return 0;
  }
  std::printf("%-8s %-22s %-8s %-8s %-8s %-7s %s\n", "ID", "ADDRESS", "DEVICE", "STATE", "PID",
              "THREADS", "METRICS");
  for (const auto& w : *workers) {
    std::string state = pb::WorkerState_Name(w.state());
    if (state.rfind("WORKER_", 0) == 0) state = state.substr(7);
    std::printf("%-8s %-22s %-8s %-8s %-8lld %-7d %d\n", w.worker_id().c_str(), w.address().c_str(),
                w.device().c_str(), state.c_str(), static_cast<long long>(w.pid()), w.threads(),
                w.metrics_port());
  }
  return 0;
}

int CmdUpload(Context& c) {
  if (c.args.size() != 1) return Usage("upload-dataset takes one DIR or TAR");
  auto resp = prunesvc::client::UploadDatasetPath(c.client, c.args[0], absl::GetFlag(FLAGS_name),
                                                  TransferBar("upload"));
  if (!resp.ok()) return Fail(resp.status());
  if (c.json) {
    PrintJson(*resp);
  } else {
    std::printf("%s\n", resp->dataset_id().c_str());
    std::fprintf(stderr, "%d samples, %s%s\n", resp->num_samples(),
                 prunesvc::client::FormatBytes(resp->size_bytes()).c_str(),
                 resp->already_present() ? ", already present" : "");
  }
  return 0;
}

int CmdUploadModel(Context& c) {
  if (c.args.size() != 1) return Usage("upload-model takes one DIR");
  auto resp =
      prunesvc::client::UploadModelDir(c.client, c.args[0], absl::GetFlag(FLAGS_name),
                                       TransferBar("hash"), TransferBar("upload"), NoteRetry);
  if (!resp.ok()) return Fail(resp.status());
  if (c.json) {
    PrintJson(*resp);
  } else {
    std::printf("%s\n", resp->model_uri().c_str());
    std::fprintf(stderr, "model %s, %s%s\n", resp->model_id().c_str(),
                 prunesvc::client::FormatBytes(resp->size_bytes()).c_str(),
                 resp->already_present() ? ", already present" : "");
  }
  return 0;
}

// The submit flags the user gave, in SubmitFlagFields order, labels last.
std::vector<std::pair<std::string, std::string>> GivenSubmitFlags(const Context& c) {
  std::vector<std::pair<std::string, std::string>> given;
  for (const auto& [flag, field] : prunesvc::client::SubmitFlagFields()) {
    if (flag == "label") continue;
    std::string absl_name = flag;
    std::replace(absl_name.begin(), absl_name.end(), '-', '_');
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(absl_name);
    if (f != nullptr && c.given.count(flag)) given.emplace_back(flag, f->CurrentValue());
  }
  auto it = c.repeated.find("label");
  if (it != c.repeated.end()) {
    for (const std::string& l : it->second) given.emplace_back("label", l);
  }
  return given;
}

absl::StatusOr<prunesvc::client::JobRequest> BuildJobRequest(const Context& c) {
  prunesvc::client::JobRequest request;
  const std::string file = absl::GetFlag(FLAGS_file);
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return absl::InvalidArgumentError("--file: cannot read " + file);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    absl::Status s = prunesvc::client::ParseJobFile(
        text, prunesvc::client::DetectJobFileFormat(file, text), file, request);
    if (!s.ok()) return s;
  }
  absl::Status s = prunesvc::client::ApplySubmitFlags(GivenSubmitFlags(c), request);
  if (s.ok()) s = prunesvc::client::ValidateJobRequest(request);
  if (!s.ok()) return s;
  return request;
}

int CmdSubmit(Context& c) {
  if (!c.args.empty()) return Usage("submit takes no positional arguments");
  auto request = BuildJobRequest(c);
  if (!request.ok()) return Fail(request.status());
  auto resp = c.client.SubmitJob(request->spec);
  if (!resp.ok()) return Fail(resp.status());
  if (resp->deduplicated()) {
    std::fprintf(stderr, "prunectl: request_id matched an existing job\n");
  }
  if (c.json) {
    PrintJson(resp->job());
  } else {
    std::printf("%s\n", resp->job().job_id().c_str());
  }
  return 0;
}

void PrintJobText(const pb::Job& job) {
  std::printf("job        %s\nstate      %s\n", job.job_id().c_str(),
              prunesvc::client::StateName(job.state()).c_str());
  std::printf("model      %s\ndataset    %s\nbudget     %g\n", job.spec().model_uri().c_str(),
              job.spec().dataset_id().c_str(), job.spec().flops_budget());
  std::printf("generation %d/%d  progress %.0f%%\n", job.generation(), job.spec().generations(),
              100 * job.progress());
  if (job.has_best()) {
    std::printf("best       acc %.1f%%  flops %.3f  fitness %.4f\n", 100 * job.best().accuracy(),
                job.best().flops_ratio(), job.best().fitness());
  }
  if (!job.error().empty()) {
    std::printf("error      %s: %s\n",
                absl::StatusCodeToString(static_cast<absl::StatusCode>(job.error_code())).c_str(),
                job.error().c_str());
  }
  if (!job.artifact_id().empty()) std::printf("artifact   %s\n", job.artifact_id().c_str());
}

int CmdGet(Context& c) {
  if (c.args.size() != 1) return Usage("get takes one JOB");
  auto job = c.client.GetJob(c.args[0]);
  if (!job.ok()) return Fail(job.status());
  if (c.json) {
    PrintJson(*job);
  } else {
    PrintJobText(*job);
  }
  return 0;
}

absl::StatusOr<pb::ListJobsRequest> BuildListRequest(const Context& c) {
  pb::ListJobsRequest req;
  req.set_page_size(absl::GetFlag(FLAGS_page_size));
  for (const std::string& s :
       c.repeated.count("state") ? c.repeated.at("state") : std::vector<std::string>{}) {
    pb::JobState state;
    if (!pb::JobState_Parse(absl::AsciiStrToUpper(s), &state) || state == 0) {
      return absl::InvalidArgumentError("--state: unknown state \"" + s + "\"");
    }
    req.add_states(state);
  }
  for (const std::string& l :
       c.repeated.count("label") ? c.repeated.at("label") : std::vector<std::string>{}) {
    auto kv = prunesvc::client::ParseLabel(l, "--label");
    if (!kv.ok()) return kv.status();
    (*req.mutable_labels())[kv->first] = kv->second;
  }
  return req;
}

int CmdList(Context& c) {
  if (!c.args.empty()) return Usage("list takes no positional arguments");
  auto req = BuildListRequest(c);
  if (!req.ok()) return Fail(req.status());
  pb::ListJobsResponse all;
  do {
    auto page = c.client.ListJobs(*req);
    if (!page.ok()) return Fail(page.status());
    for (auto& j : *page->mutable_jobs()) *all.add_jobs() = std::move(j);
    all.set_next_page_token(page->next_page_token());
    req->set_page_token(page->next_page_token());
  } while (absl::GetFlag(FLAGS_all) && !req->page_token().empty());
  if (c.json) {
    PrintJson(all);
    return 0;
  }
  std::printf("%-28s %-11s %-9s %-8s %-7s %s\n", "JOB", "STATE", "GEN", "BEST_ACC", "FLOPS",
              "CREATED");
  for (const auto& j : all.jobs()) {
    std::printf(
        "%-28s %-11s %-9s %-8s %-7s %s\n", j.job_id().c_str(),
        prunesvc::client::StateName(j.state()).c_str(),
        absl::StrCat(j.generation(), "/", j.spec().generations()).c_str(),
        j.has_best() ? absl::StrFormat("%.1f%%", 100 * j.best().accuracy()).c_str() : "-",
        j.has_best() ? absl::StrFormat("%.3f", j.best().flops_ratio()).c_str() : "-",
        absl::FormatTime("%Y-%m-%d %H:%M:%S", prunesvc::client::TimeFromProto(j.create_time()),
                         absl::UTCTimeZone())
            .c_str());
  }
  if (!all.next_page_token().empty()) {
    std::fprintf(stderr, "prunectl: more jobs: --all follows the pages\n");
  }
  return 0;
}

int CmdCancel(Context& c) {
  if (c.args.size() != 1) return Usage("cancel takes one JOB");
  auto job = c.client.CancelJob(c.args[0], absl::GetFlag(FLAGS_reason));
  if (!job.ok()) return Fail(job.status());
  if (c.json) {
    PrintJson(*job);
  } else {
    std::printf("%s %s\n", job->job_id().c_str(),
                prunesvc::client::StateName(job->state()).c_str());
  }
  return 0;
}

int CmdDelete(Context& c) {
  if (c.args.size() != 1) return Usage("delete takes one JOB");
  if (absl::Status s = c.client.DeleteJob(c.args[0]); !s.ok()) return Fail(s);
  std::printf("%s deleted\n", c.args[0].c_str());
  return 0;
}

int CmdDatasets(Context& c) {
  auto datasets = c.client.ListDatasets();
  if (!datasets.ok()) return Fail(datasets.status());
  if (c.json) {
    pb::ListDatasetsResponse resp;
    for (const auto& d : *datasets) *resp.add_datasets() = d;
    PrintJson(resp);
    return 0;
  }
  std::printf("%-71s %-20s %8s %10s\n", "DATASET", "NAME", "SAMPLES", "BYTES");
  for (const auto& d : *datasets) {
    std::printf("%-71s %-20s %8d %10lld\n", d.dataset_id().c_str(), d.name().c_str(),
                d.num_samples(), static_cast<long long>(d.size_bytes()));
  }
  return 0;
}

int CmdDeleteDataset(Context& c) {
  if (c.args.size() != 1) return Usage("delete-dataset takes one DATASET id");
  if (absl::Status s = c.client.DeleteDataset(c.args[0]); !s.ok()) return Fail(s);
  std::printf("%s deleted\n", c.args[0].c_str());
  return 0;
}

int CmdModels(Context& c) {
  auto models = c.client.ListModels();
  if (!models.ok()) return Fail(models.status());
  if (c.json) {
    pb::ListModelsResponse resp;
    for (const auto& m : *models) *resp.add_models() = m;
    PrintJson(resp);
    return 0;
  }
  std::printf("%-78s %-20s %6s %12s\n", "MODEL", "NAME", "FILES", "BYTES");
  for (const auto& m : *models) {
    std::printf("%-78s %-20s %6d %12lld\n", m.model_uri().c_str(), m.name().c_str(), m.num_files(),
                static_cast<long long>(m.size_bytes()));
  }
  return 0;
}

int CmdDeleteModel(Context& c) {
  if (c.args.size() != 1) return Usage("delete-model takes one MODEL (sha256:... or blob://...)");
  auto resp = c.client.DeleteModel(c.args[0]);
  if (!resp.ok()) return Fail(resp.status());
  std::printf("%s deleted\n", c.args[0].c_str());
  return 0;
}

int CmdWatch(Context& c) {
  if (c.args.size() != 1) return Usage("watch takes one JOB");
  FILE* out = c.json ? stderr : stdout;
  const bool tty = isatty(fileno(out)) == 1;
  prunesvc::client::WatchProgress progress;
  auto on_event = [&](const pb::JobEvent& e) {
    progress.Apply(e);
    if (!tty) {
      std::fprintf(out, "%s\n", prunesvc::client::FormatEventLine(e).c_str());
      std::fflush(out);
      return;
    }
    if (e.has_state_changed() || e.has_log() || e.has_artifact_ready()) {
      std::fprintf(out, "\r\033[K%s\n", prunesvc::client::FormatEventLine(e).c_str());
    }
    std::fprintf(out, "\r\033[K%s", progress.Line().c_str());
    std::fflush(out);
  };
  auto job = prunesvc::client::WatchUntilTerminal(
      c.client, c.args[0], absl::GetFlag(FLAGS_from_sequence), on_event, NoteRetry);
  if (tty) std::fprintf(out, "\n");
  if (!job.ok()) return Fail(job.status());
  if (c.json) PrintJson(*job);
  if (job->state() == pb::FAILED) {
    std::fprintf(stderr, "prunectl: job FAILED: %s\n", job->error().c_str());
  }
  return prunesvc::client::ExitCodeForJob(*job);
}

int CmdBatch(Context& c) {
  if (c.args.size() != 1) return Usage("batch takes one argument: the batch file (jobs.yaml)");
  prunesvc::client::BatchOptions options;
  options.tty = StderrIsTty();
  return prunesvc::client::RunBatch(c.client, c.args[0], options);
}

int CmdFetch(Context& c) {
  if (c.args.size() != 1) return Usage("fetch takes one JOB");
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return Usage("fetch needs --out=DIR");
  auto fetched = prunesvc::client::FetchArtifactToDir(c.client, c.args[0], out,
                                                      TransferBar("fetch"), NoteRetry);
  if (!fetched.ok()) return Fail(fetched.status());
  if (c.json) {
    const nlohmann::json j = {{"jobId", c.args[0]},
                              {"artifactId", fetched->artifact_id},
                              {"sha256", fetched->sha256},
                              {"sizeBytes", fetched->size_bytes},
                              {"out", out}};
    std::printf("%s\n", j.dump(1).c_str());
  } else {
    std::printf("%s\n", out.c_str());
  }
  return 0;
}

// --token / --token-file / $PRUNESVC_TOKEN and --tls-ca / $PRUNESVC_TLS_CA / --tls into the
// options; 2 (with a message) when a file cannot be read.
int Credentials(prunesvc::client::ClientOptions& options) {
  options.token = absl::GetFlag(FLAGS_token);
  const std::string token_file = absl::GetFlag(FLAGS_token_file);
  if (!token_file.empty()) {
    if (!options.token.empty()) return Usage("--token and --token-file exclude each other");
    absl::StatusOr<std::string> t = prunesvc::ReadTokenFile(token_file, "--token-file");
    if (!t.ok()) return Usage(std::string(t.status().message()));
    options.token = *t;
  }
  if (options.token.empty()) {
    if (const char* env = std::getenv("PRUNESVC_TOKEN")) options.token = env;
  }
  options.tls.ca = absl::GetFlag(FLAGS_tls_ca);
  if (options.tls.ca.empty()) {
    if (const char* env = std::getenv("PRUNESVC_TLS_CA")) options.tls.ca = env;
  }
  options.tls_enabled = absl::GetFlag(FLAGS_tls) || !options.tls.ca.empty();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> raw(argv, argv + argc);
  auto repeated = prunesvc::client::ExtractRepeatedFlags(raw, {"label", "state"});
  std::vector<char*> ptrs;
  for (auto& s : raw) ptrs.push_back(s.data());
  std::vector<std::string> args =
      prunesvc::ParseFlags(static_cast<int>(ptrs.size()), ptrs.data(), kUsage);
  if (args.size() < 2) return Usage("no command", /*full=*/true);
  prunesvc::client::ClientOptions options;
  options.deadline = absl::Seconds(absl::GetFlag(FLAGS_timeout));
  options.stream_deadline = absl::Seconds(absl::GetFlag(FLAGS_stream_timeout));
  if (int rc = Credentials(options); rc != 0) return rc;
  Client client(absl::GetFlag(FLAGS_addr), options);
  if (!client.setup_status().ok()) {
    std::fprintf(stderr, "prunectl: %s\n", std::string(client.setup_status().message()).c_str());
    return prunesvc::kExitUsage;
  }
  Context ctx{client, std::vector<std::string>(args.begin() + 2, args.end()), repeated,
              prunesvc::client::GivenFlagNames(raw), absl::GetFlag(FLAGS_json)};
  const std::map<std::string, std::function<int(Context&)>> commands = {
      {"health", CmdHealth},
      {"workers", CmdWorkers},
      {"upload-dataset", CmdUpload},
      {"submit", CmdSubmit},
      {"watch", CmdWatch},
      {"get", CmdGet},
      {"list", CmdList},
      {"cancel", CmdCancel},
      {"fetch", CmdFetch},
      {"delete", CmdDelete},
      {"datasets", CmdDatasets},
      {"delete-dataset", CmdDeleteDataset},
      {"batch", CmdBatch},
      {"upload-model", CmdUploadModel},
      {"models", CmdModels},
      {"delete-model", CmdDeleteModel},
  };
  auto it = commands.find(args[1]);
  if (it == commands.end()) return Usage("unknown command '" + args[1] + "'", /*full=*/true);
  if (args[1] == "health" || args[1] == "workers" || args[1] == "datasets" || args[1] == "models") {
    if (!ctx.args.empty()) return Usage(args[1] + " takes no positional arguments");
  }
  return it->second(ctx);
}
