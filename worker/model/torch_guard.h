// The worker's boundary with libtorch: runs a lambda that calls libtorch and turns any exception
// into an absl::Status naming the phase, so no exception escapes the model runtime's or the
// pruning engine's API (docs/architecture.md §11):
//  - out of memory (c10::OutOfMemoryError from a device allocator, std::bad_alloc from the host)
//    → ResourceExhausted carrying the kOutOfMemoryPayload payload: IsOutOfMemory() tells it from
//    the ResourceExhausted of an input limit, because a scheduler retries it elsewhere while an
//    input limit fails the job;
//  - any other c10::Error or std::exception → Internal.
// Header-only; thread-safe (stateless).
#ifndef PRUNESVC_WORKER_MODEL_TORCH_GUARD_H_
#define PRUNESVC_WORKER_MODEL_TORCH_GUARD_H_

#include <c10/util/Exception.h>

#include <exception>
#include <new>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace prunesvc::model {

inline constexpr char kOutOfMemoryPayload[] = "type.prunesvc.dev/out-of-memory";

inline absl::Status OutOfMemoryError(absl::string_view phase, absl::string_view what) {
  absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
      phase, ": out of memory (", what, "); the step may succeed on a worker with more memory"));
  s.SetPayload(kOutOfMemoryPayload, absl::Cord("1"));
  return s;
}

inline bool IsOutOfMemory(const absl::Status& status) {
  return status.code() == absl::StatusCode::kResourceExhausted &&
         status.GetPayload(kOutOfMemoryPayload).has_value();
}

// `f` returns absl::Status or absl::StatusOr<T>.
template <typename F>
auto TorchGuarded(const char* phase, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::OutOfMemoryError& e) {
    return OutOfMemoryError(phase, e.what_without_backtrace());
  } catch (const std::bad_alloc& e) {
    return OutOfMemoryError(phase, e.what());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(phase, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(phase, ": ", e.what()));
  }
}

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_TORCH_GUARD_H_
