// Command-line helpers shared by every binary. Flags are documented with hyphens
// (`--flops-budget`); absl names them with underscores, so argv is rewritten before parsing.
#ifndef PRUNESVC_COMMON_FLAGS_H_
#define PRUNESVC_COMMON_FLAGS_H_

#include <string>
#include <vector>

namespace prunesvc {

// Rewrites `--a-b[=v]` to `--a_b[=v]` (only the name part; values and positional arguments are
// untouched, everything after a bare `--` is left as is).
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Rewrites argv as above, sets the usage message, and runs absl::ParseCommandLine. `--help`
// prints the flags with hyphenated names. Returns positional arguments (argv[0] first).
std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_FLAGS_H_
