#include "client/batch.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/operations.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace prunesvc::client {
namespace {

namespace fs = std::filesystem;
namespace pb = ::prune::v1;
using json = nlohmann::json;

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// A dataset id as given, or the path uploaded (the scheduler de-duplicates).
absl::StatusOr<std::string> DatasetId(Client& client, const std::string& given, FILE* progress) {
  if (absl::StartsWith(given, "sha256:")) return given;
  ASSIGN_OR_RETURN(pb::UploadDatasetResponse r, UploadDatasetPath(client, given, "", nullptr));
  std::fprintf(progress, "dataset %s: %s (%d samples%s)\n", given.c_str(), r.dataset_id().c_str(),
               r.num_samples(), r.already_present() ? ", already there" : "");
  return r.dataset_id();
}

struct Tracked {
  BatchJob job;
  std::string job_id;
  pb::Job last;
  std::string out;  // where the artifact is unpacked
  std::string fetch_error;
};

std::string StatusLine(const Tracked& t) {
  const pb::Job& j = t.last;
  std::string line = absl::StrFormat("%-40s %-10s", t.job.name, pb::JobState_Name(j.state()));
  if (j.spec().generations() > 0 && j.state() == pb::SEARCHING) {
    absl::StrAppend(&line,
                    absl::StrFormat(" gen %d/%d", j.generation() + 1, j.spec().generations() + 1));
  }
  if (j.has_best() && j.best().flops_ratio() > 0) {
    absl::StrAppend(&line, absl::StrFormat(" best acc %.3f flops %.3f", j.best().accuracy(),
                                           j.best().flops_ratio()));
  }
  if (j.state() == pb::FAILED) absl::StrAppend(&line, " ", j.error().substr(0, 80));
  return line;
}

// One row of the summary from the unpacked artifact's report.json.
std::vector<std::string> SummaryRow(const Tracked& t) {
  std::vector<std::string> row = {t.job.name, pb::JobState_Name(t.last.state())};
  json report;
  if (t.last.state() == pb::SUCCEEDED && t.fetch_error.empty()) {
    report = json::parse(ReadFileOrEmpty(t.out + "/report.json"), nullptr, false);
  }
  auto num = [&](std::initializer_list<const char*> path, int decimals) -> std::string {
    const json* node = &report;
    for (const char* k : path) {
      if (!node->is_object() || !node->contains(k)) return "";
      node = &(*node)[k];
    }
    return node->is_number() ? absl::StrFormat("%.*f", decimals, node->get<double>())
                             : std::string();
  };
  row.push_back(num({"dense", "accuracy"}, 4));
  row.push_back(num({"pruned", "accuracy"}, 4));
  row.push_back(num({"flops_ratio"}, 4));
  row.push_back(num({"dense", "latency_ms"}, 2));
  row.push_back(num({"pruned", "latency_ms"}, 2));
  row.push_back(t.last.state() == pb::SUCCEEDED && t.fetch_error.empty() ? t.out : t.fetch_error);
  return row;
}

bool IsTerminal(pb::JobState s) {
  return s == pb::SUCCEEDED || s == pb::FAILED || s == pb::CANCELLED;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

absl::Status WriteSummary(const std::string& out, const std::vector<Tracked>& jobs,
                          std::string* markdown) {
  const std::vector<std::string> header = {"job",
                                           "state",
                                           "dense_accuracy",
                                           "pruned_accuracy",
                                           "flops_ratio",
                                           "dense_latency_ms",
                                           "pruned_latency_ms",
                                           "artifact"};
  std::string csv = absl::StrJoin(header, ",") + "\n";
  std::string md = "| " + absl::StrJoin(header, " | ") + " |\n|";
  for (size_t i = 0; i < header.size(); ++i) md += "---|";
  md += "\n";
  for (const Tracked& t : jobs) {
    const std::vector<std::string> row = SummaryRow(t);
    std::vector<std::string> quoted;
    for (const std::string& f : row) quoted.push_back(CsvField(f));
    absl::StrAppend(&csv, absl::StrJoin(quoted, ","), "\n");
    absl::StrAppend(&md, "| ", absl::StrJoin(row, " | "), " |\n");
  }
  for (const auto& [name, text] : {std::pair{"summary.csv", csv}, {"summary.md", md}}) {
    std::ofstream f(out + "/" + name, std::ios::trunc);
    f << text;
    if (!f) return absl::InternalError(absl::StrCat(out, "/", name, ": cannot write"));
  }
  *markdown = md;
  return absl::OkStatus();
}

}  // namespace

int RunBatch(Client& client, const std::string& path, const BatchOptions& options) {
  FILE* log = options.progress;
  const std::string text = ReadFileOrEmpty(path);
  if (text.empty()) {
    std::fprintf(stderr, "prunectl: batch: %s: cannot read (or empty)\n", path.c_str());
    return 2;
  }
  absl::StatusOr<BatchFile> file = ParseBatchFile(text, path);
  if (!file.ok()) {
    std::fprintf(stderr, "prunectl: batch: %s\n", std::string(file.status().message()).c_str());
    return 2;
  }
  // Every job is checked (with stand-in dataset ids) before anything is uploaded or submitted.
  const std::string stand_in = "sha256:" + std::string(64, '0');
  if (absl::StatusOr<std::vector<BatchJob>> check =
          ExpandBatch(*file, stand_in, file->eval_dataset.empty() ? "" : stand_in);
      !check.ok()) {
    std::fprintf(stderr, "prunectl: batch: %s\n", std::string(check.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::string> dataset = DatasetId(client, file->dataset, log);
  absl::StatusOr<std::string> eval = file->eval_dataset.empty()
                                         ? absl::StatusOr<std::string>(std::string())
                                         : DatasetId(client, file->eval_dataset, log);
  for (const absl::Status& s : {dataset.status(), eval.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "prunectl: batch: upload: %s\n", s.ToString().c_str());
      return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
  }
  absl::StatusOr<std::vector<BatchJob>> expanded = ExpandBatch(*file, *dataset, *eval);
  if (!expanded.ok()) {
    std::fprintf(stderr, "prunectl: batch: %s\n", std::string(expanded.status().message()).c_str());
    return 2;
  }
  std::error_code ec;
  fs::create_directories(file->out, ec);
  if (ec) {
    std::fprintf(stderr, "prunectl: batch: %s: %s\n", file->out.c_str(), ec.message().c_str());
    return 2;
  }

  // Submit (deduplicated by request id).
  std::vector<Tracked> jobs;
  int submitted = 0, existing = 0;
  for (BatchJob& j : *expanded) {
    j.request.spec.set_request_id(BatchRequestId(file->name, j.request.spec));
    absl::StatusOr<pb::SubmitJobResponse> r = client.SubmitJob(j.request.spec);
    if (!r.ok()) {
      std::fprintf(stderr, "prunectl: batch: %s: %s\n", j.name.c_str(),
                   r.status().ToString().c_str());
      return absl::IsInvalidArgument(r.status()) ? 2 : 1;
    }
    (r->deduplicated() ? existing : submitted) += 1;
    Tracked t{std::move(j), r->job().job_id(), r->job(), "", ""};
    t.out = file->out + "/" + t.job.name;
    jobs.push_back(std::move(t));
  }
  std::fprintf(log, "batch %s: %zu jobs: %d submitted, %d already there\n", file->name.c_str(),
               jobs.size(), submitted, existing);

  // Follow every job (GetJob polling: one line per job, redrawn on a terminal).
  std::vector<std::string> shown(jobs.size());
  bool drawn = false;
  while (true) {
    bool all_done = true;
    for (Tracked& t : jobs) {
      if (!IsTerminal(t.last.state())) {
        absl::StatusOr<pb::Job> now = client.GetJob(t.job_id);
        if (now.ok()) t.last = *now;
      }
      all_done &= IsTerminal(t.last.state());
    }
    if (options.tty) {
      if (drawn) std::fprintf(log, "\x1b[%zuA", jobs.size());
      for (const Tracked& t : jobs) std::fprintf(log, "\x1b[2K%s\n", StatusLine(t).c_str());
      drawn = true;
    } else {
      for (size_t i = 0; i < jobs.size(); ++i) {
        const std::string line = StatusLine(jobs[i]);
        if (line != shown[i]) std::fprintf(log, "%s\n", line.c_str());
        shown[i] = line;
      }
    }
    std::fflush(log);
    if (all_done) break;
    absl::SleepFor(options.poll);
  }

  // Fetch what succeeded and is not unpacked yet.
  int failed = 0;
  for (Tracked& t : jobs) {
    if (t.last.state() != pb::SUCCEEDED) {
      ++failed;
      continue;
    }
    if (fs::exists(t.out + "/MANIFEST.sha256")) continue;  // fetched by an earlier run
    absl::StatusOr<FetchResult> f = FetchArtifactToDir(client, t.job_id, t.out, nullptr, nullptr);
    if (!f.ok()) {
      t.fetch_error = "fetch failed: " + f.status().ToString();
      ++failed;
    }
  }
  std::string markdown;
  if (absl::Status s = WriteSummary(file->out, jobs, &markdown); !s.ok()) {
    std::fprintf(stderr, "prunectl: batch: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("%s", markdown.c_str());
  std::fprintf(log, "summary: %s/summary.csv, %s/summary.md\n", file->out.c_str(),
               file->out.c_str());
  return failed == 0 ? 0 : 1;
}

}  // namespace prunesvc::client
