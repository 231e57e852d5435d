#include "common/fault.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"

namespace prunesvc {
namespace {

bool ValidPointName(absl::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

struct Armed {
  FaultSpec spec;
  int passes = 0;
};

// The parsed environment, once per process.
class Faults {
 public:
  static Faults& Get() {
    static Faults* f = new Faults;
    return *f;
  }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  void Pass(absl::string_view point) {
    FaultSpec::Action action;
    {
      absl::MutexLock lock(&mu_);
      auto it = armed_.find(std::string(point));
      if (it == armed_.end() || ++it->second.passes != it->second.spec.count) return;
      if (!ClaimMarker(point)) return;  // fired in an earlier process
      action = it->second.spec.action;
    }
    const int sig = action == FaultSpec::Action::kKill   ? SIGKILL
                    : action == FaultSpec::Action::kStop ? SIGSTOP
                                                         : SIGTERM;
    const char* name = sig == SIGKILL ? "SIGKILL" : sig == SIGSTOP ? "SIGSTOP" : "SIGTERM";
    std::fprintf(stderr, "PRUNESVC_FAULT: %s at point %.*s (pid %d)\n", name, int(point.size()),
                 point.data(), int(getpid()));
    std::fflush(stderr);
    // kill(), not raise(): SIGTERM must reach the process (its signal thread), not this thread.
    kill(getpid(), sig);
    if (sig == SIGTERM) std::this_thread::sleep_for(std::chrono::seconds(1));
  }

 private:
  Faults() {
    const char* text = std::getenv("PRUNESVC_FAULT");
    if (text == nullptr || *text == '\0') return;
    absl::StatusOr<std::vector<FaultSpec>> specs = ParseFaultSpecs(text);
    if (!specs.ok()) {
      std::fprintf(stderr, "PRUNESVC_FAULT ignored: %s\n",
                   std::string(specs.status().message()).c_str());
      return;
    }
    for (const FaultSpec& s : *specs) armed_[s.point] = Armed{s, 0};
    const char* dir = std::getenv("PRUNESVC_FAULT_DIR");
    if (dir != nullptr) marker_dir_ = dir;
    enabled_.store(!armed_.empty());
  }

  // True when this process may fire `point` (no marker dir, or the marker was created now).
  bool ClaimMarker(absl::string_view point) {
    if (marker_dir_.empty()) return true;
    const std::string path = absl::StrCat(marker_dir_, "/", point);
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    fsync(fd);
    close(fd);
    return true;
  }

  std::atomic<bool> enabled_{false};
  std::string marker_dir_;  // constant after construction
  absl::Mutex mu_;
  std::map<std::string, Armed> armed_;  // keys constant after construction; passes guarded by mu_
};

}  // namespace

absl::StatusOr<std::vector<FaultSpec>> ParseFaultSpecs(absl::string_view text) {
  std::vector<FaultSpec> out;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    FaultSpec spec;
    const size_t colon = entry.find(':');
    absl::string_view head = entry.substr(0, colon);
    if (colon != absl::string_view::npos) {
      const absl::string_view action = entry.substr(colon + 1);
      if (action == "kill") {
        spec.action = FaultSpec::Action::kKill;
      } else if (action == "stop") {
        spec.action = FaultSpec::Action::kStop;
      } else if (action == "term") {
        spec.action = FaultSpec::Action::kTerm;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("PRUNESVC_FAULT entry '", entry, "': action must be kill, stop or term"));
      }
    }
    const size_t at = head.find('@');
    if (at != absl::string_view::npos) {
      if (!absl::SimpleAtoi(head.substr(at + 1), &spec.count) || spec.count < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("PRUNESVC_FAULT entry '", entry, "': the count after @ must be ≥ 1"));
      }
      head = head.substr(0, at);
    }
    if (!ValidPointName(head)) {
      return absl::InvalidArgumentError(
          absl::StrCat("PRUNESVC_FAULT entry '", entry, "': a point is 1-64 of [A-Za-z0-9._-]"));
    }
    spec.point = std::string(head);
    for (const FaultSpec& s : out) {
      if (s.point == spec.point) {
        return absl::InvalidArgumentError(
            absl::StrCat("PRUNESVC_FAULT: point ", spec.point, " is named twice"));
      }
    }
    out.push_back(std::move(spec));
  }
  return out;
}

void FaultPoint(absl::string_view point) {
  Faults& f = Faults::Get();
  if (f.enabled()) f.Pass(point);
}

}  // namespace prunesvc
