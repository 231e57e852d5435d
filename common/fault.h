// Crash points for the reliability tests (issue 16): a process passing a named point can be made
// to die there as `kill -9` would, so tests kill the scheduler and workers at exact places (during
// an evaluation batch, right after a checkpoint, …) instead of guessing with sleeps.
//
// Off unless the environment asks for it:
//   PRUNESVC_FAULT="POINT[@N][:ACTION][,POINT[@N][:ACTION]...]"
//     the N-th time (default 1) this process passes POINT, ACTION happens: `kill` (default) sends
//     the process SIGKILL (no destructor, flush or atexit runs); `stop` sends it SIGSTOP (it hangs
//     with its sockets open, as a wedged process does); `term` sends it SIGTERM (the orderly
//     shutdown an operator asks for) and returns after a second, so the shutdown meets the
//     point's work still in flight.
//   PRUNESVC_FAULT_DIR=DIR (optional)
//     each POINT fires once per DIR across processes: the marker file DIR/POINT is created before
//     the action, and a point whose marker exists never fires again. A restarted process with the
//     same environment therefore runs through, and local workers respawned by the scheduler do not
//     die at the same place forever.
// A malformed PRUNESVC_FAULT is reported on stderr once and ignored (tests check the log).
//
// Points in use (grep FaultPoint): scheduler.evaluate, scheduler.checkpoint, scheduler.projector,
// scheduler.finalize; worker.evaluate, worker.train, worker.finalize.
//
// Thread-safe; costs one relaxed atomic load when PRUNESVC_FAULT is unset.
#ifndef PRUNESVC_COMMON_FAULT_H_
#define PRUNESVC_COMMON_FAULT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc {

struct FaultSpec {
  enum class Action { kKill, kStop, kTerm };
  std::string point;
  int count = 1;  // fires on the count-th pass
  Action action = Action::kKill;
};

// Parses PRUNESVC_FAULT's syntax (above); an error names the bad entry.
absl::StatusOr<std::vector<FaultSpec>> ParseFaultSpecs(absl::string_view text);

// Passes the named point (see the file comment). Returns normally unless a fault fires.
void FaultPoint(absl::string_view point);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_FAULT_H_
