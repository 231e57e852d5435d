// prunectl: command-line client for prunesvc. Thin: parsing and printing only; calls go through
// client/client.h.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/flags.h"
#include "google/protobuf/util/json_util.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "Server address host:port.");
ABSL_FLAG(std::string, service, "",
          "health: the service to check (e.g. prune.v1.PruningService); empty = whole server.");
ABSL_FLAG(double, timeout, 5.0, "Deadline for each call, seconds.");
ABSL_FLAG(bool, json, false, "Print machine-readable JSON.");

namespace {

constexpr char kUsage[] =
    "prunectl: command-line client for prunesvc.\n"
    "Usage: prunectl COMMAND [--addr=HOST:PORT] [flags]\n"
    "Commands:\n"
    "  health    print SERVING / NOT_SERVING for a scheduler or worker; exit 0 only if SERVING\n"
    "  workers   list the workers registered with a scheduler";

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "prunectl: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args = prunesvc::ParseFlags(argc, argv, kUsage);
  if (args.size() != 2) {
    std::fprintf(stderr, "%s\n(run prunectl --help for flags)\n", kUsage);
    return 2;
  }
  const std::string& command = args[1];
  prunesvc::client::ClientOptions options;
  options.deadline = absl::Seconds(absl::GetFlag(FLAGS_timeout));
  prunesvc::client::Client client(absl::GetFlag(FLAGS_addr), options);

  if (command == "health") {
    auto status = client.Health(absl::GetFlag(FLAGS_service));
    if (!status.ok()) {
      std::printf("NOT_SERVING\n");
      std::fprintf(stderr, "prunectl: %s unreachable: %s\n", client.address().c_str(),
                   std::string(status.status().message()).c_str());
      return 1;
    }
    std::printf("%s\n", prunesvc::client::ServingStatusName(*status).c_str());
    return *status == prunesvc::client::ServingStatus::kServing ? 0 : 1;
  }
  if (command == "workers") {
    auto workers = client.ListWorkers();
    if (!workers.ok()) return Fail(workers.status());
    if (absl::GetFlag(FLAGS_json)) {
      prune::v1::ListWorkersResponse resp;
      for (const auto& w : *workers) *resp.add_workers() = w;
      std::string out;
      google::protobuf::util::JsonPrintOptions opts;
      opts.add_whitespace = true;
      (void)google::protobuf::util::MessageToJsonString(resp, &out, opts);
      std::printf("%s", out.c_str());
      return 0;
    }
    std::printf("%-8s %-22s %-8s %-8s %-8s %-7s %s\n", "ID", "ADDRESS", "DEVICE", "STATE", "PID",
                "THREADS", "METRICS");
    for (const auto& w : *workers) {
      std::string state = prune::v1::WorkerState_Name(w.state());
      if (state.rfind("WORKER_", 0) == 0) state = state.substr(7);
      std::printf("%-8s %-22s %-8s %-8s %-8lld %-7d %d\n", w.worker_id().c_str(),
                  w.address().c_str(), w.device().c_str(), state.c_str(),
                  static_cast<long long>(w.pid()), w.threads(), w.metrics_port());
    }
    return 0;
  }
  std::fprintf(stderr, "prunectl: unknown command '%s'\n%s\n", command.c_str(), kUsage);
  return 2;
}
