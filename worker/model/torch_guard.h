// The worker's boundary with libtorch: runs a lambda that calls libtorch and turns any exception
// (c10::Error or std::exception) into absl::InternalError naming the phase, so no exception
// escapes the model runtime's or the pruning engine's API (DESIGN.md §11). Header-only;
// thread-safe (stateless).
#ifndef PRUNESVC_WORKER_MODEL_TORCH_GUARD_H_
#define PRUNESVC_WORKER_MODEL_TORCH_GUARD_H_

#include <c10/util/Exception.h>

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prunesvc::model {

// `f` returns absl::Status or absl::StatusOr<T>.
template <typename F>
auto TorchGuarded(const char* phase, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(phase, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(phase, ": ", e.what()));
  }
}

}  // namespace prunesvc::model

#endif  // PRUNESVC_WORKER_MODEL_TORCH_GUARD_H_
