#include "common/flags.h"

#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_replace.h"

namespace prunesvc {

std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> out;
  out.reserve(argc);
  bool passthrough = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !passthrough && arg == "--") passthrough = true;
    if (i == 0 || passthrough || arg.size() < 3 || arg[0] != '-') {
      out.push_back(std::move(arg));
      continue;
    }
    size_t start = arg[1] == '-' ? 2 : 1;
    size_t end = arg.find('=');
    if (end == std::string::npos) end = arg.size();
    for (size_t k = start; k < end; ++k) {
      if (arg[k] == '-') arg[k] = '_';
    }
    out.push_back(std::move(arg));
  }
  return out;
}

std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage) {
  absl::FlagsUsageConfig config;
  // Only list our own flags in --help, not abseil's internals.
  config.contains_help_flags = [](absl::string_view file) {
    return file.find("absl/") == absl::string_view::npos;
  };
  config.normalize_filename = [](absl::string_view f) { return std::string(f); };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage +
                               "\n\nFlags are written with hyphens (--metrics-port); the listing "
                               "below shows abseil's underscore names, which are accepted too.");
  std::vector<std::string> normalized = NormalizeFlagNames(argc, argv);
  std::vector<char*> ptrs;
  ptrs.reserve(normalized.size() + 1);
  for (auto& s : normalized) ptrs.push_back(s.data());
  ptrs.push_back(nullptr);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(normalized.size()), ptrs.data());
  return std::vector<std::string>(positional.begin(), positional.end());
}

}  // namespace prunesvc
