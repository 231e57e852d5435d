// libFuzzer target: the --auth-tokens file parser (server/auth.cc ParseTokens) on arbitrary
// bytes. Any input must give a table or an INVALID_ARGUMENT naming a line, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "server/auth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto table = prunesvc::server::ParseTokens(text, "fuzz");
  if (!table.ok()) {
    if (!absl::IsInvalidArgument(table.status()) ||
        !absl::StartsWith(table.status().message(), "fuzz:")) {
      __builtin_trap();
    }
    return 0;
  }
  for (const auto& [hash, entry] : table->by_hash) {
    if (hash.size() != 64 || entry.tenant.empty() || entry.line < 1) __builtin_trap();
  }
  return 0;
}
