// Status propagation macros. abseil 20220623 ships none (docs/architecture.md §12), so prunesvc
// defines its own. Header-only; thread-compatible.
#ifndef PRUNESVC_COMMON_STATUS_MACROS_H_
#define PRUNESVC_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PRUNESVC_CONCAT_INNER_(a, b) a##b
#define PRUNESVC_CONCAT_(a, b) PRUNESVC_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define RETURN_IF_ERROR(expr)                            \
  do {                                                   \
    ::absl::Status prunesvc_status_ = (expr);            \
    if (!prunesvc_status_.ok()) return prunesvc_status_; \
  } while (false)

// `ASSIGN_OR_RETURN(lhs, expr)`: evaluates `expr` (an absl::StatusOr<T>); on error returns its
// status, otherwise moves the value into `lhs` (which may be a declaration, e.g. `auto x`).
#define ASSIGN_OR_RETURN(lhs, expr) \
  PRUNESVC_ASSIGN_OR_RETURN_IMPL_(PRUNESVC_CONCAT_(prunesvc_statusor_, __LINE__), lhs, expr)

#define PRUNESVC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // PRUNESVC_COMMON_STATUS_MACROS_H_
