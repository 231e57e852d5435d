// Command-line parsing shared by every prunesvc binary, in front of abseil's flag registry.
//
// Flags are written with hyphens (`--flops-budget=0.5`; abseil's underscore names are accepted
// too), as `--name=value`, `--name value`, or for booleans `--name` / `--noname`. Unlike
// absl::ParseCommandLine (abseil 20220623 exits 1 on a bad flag and on --help), ParseFlags
// follows the exit-code table of common/cli_exit.h: `--help` / `-h` prints the usage and every
// flag with its hyphenated name and exits 0, `--version` prints the project version and build
// type and exits 0, and an unknown flag, a missing or unparsable value exits 2 with one line
// that names the flag as the user writes it.
//
// Thread contract: call once, from main, before any other thread starts (it writes abseil's
// global flag values).
#ifndef PRUNESVC_COMMON_FLAGS_H_
#define PRUNESVC_COMMON_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prunesvc {

// What the command line asked for, when it parsed.
struct ParsedCommandLine {
  enum class Action { kRun, kHelp, kVersion };
  Action action = Action::kRun;
  std::vector<std::string> positional;  // argv[0] first, then the non-flag arguments in order
};

// Parses `args` (argv[0] first) and sets the flags it names. INVALID_ARGUMENT, naming the flag
// with hyphens, for an unknown flag, a missing value or a value the flag's type refuses; flags
// set before the error keep their new values. Testable form of ParseFlags.
absl::StatusOr<ParsedCommandLine> ParseCommandLineArgs(const std::vector<std::string>& args);

// The `--help` text: `usage`, then every flag of this binary (abseil's own excluded) sorted by
// name, hyphenated, with its help text and default, wrapped at 100 columns.
std::string FlagsHelp(absl::string_view usage);

// "VERSION (BUILD_TYPE build)", e.g. "0.1.0 (RelWithDebInfo build)".
std::string VersionString();

// Parses argv as above. On --help or --version prints to stdout and exits 0; on an error prints
// "PROGRAM: MESSAGE (see PROGRAM --help)" to stderr and exits 2. Returns the positional
// arguments (argv[0] first).
std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage);

// Whether the last parse set the flag (abseil name, underscores), even to its default value: a
// flag given as its default still counts as the user's choice (e.g. prune-local's
// --seed-with-uniform with --strategy=RANDOM_SEARCH is an error, not a no-op).
bool FlagGiven(absl::string_view name);

}  // namespace prunesvc

#endif  // PRUNESVC_COMMON_FLAGS_H_
