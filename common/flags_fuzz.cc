// libFuzzer target for the command-line parser every binary runs first (common/flags.h): the
// input, split at NUL bytes, is argv after the program name. Any input must give a parse result
// or an error, never a crash; --help text is rendered once per input that asks for it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "common/flags.h"

// One flag of each type the binaries use.
ABSL_FLAG(bool, fuzz_switch, false, "a boolean");
ABSL_FLAG(int, fuzz_count, 8, "an int");
ABSL_FLAG(double, fuzz_budget, 0.5, "a double");
ABSL_FLAG(std::string, fuzz_name, "", "a string");
ABSL_FLAG(std::vector<std::string>, fuzz_list, {}, "a list");
ABSL_FLAG(int64_t, fuzz_bytes, 0, "an int64");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args = {"fuzz"};
  std::string current;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(current);
      current.clear();
    } else {
      current.push_back(char(data[i]));
    }
  }
  args.push_back(current);
  auto parsed = prunesvc::ParseCommandLineArgs(args);
  if (parsed.ok() && parsed->action == prunesvc::ParsedCommandLine::Action::kHelp) {
    (void)prunesvc::FlagsHelp("usage: fuzz");
  }
  return 0;
}
