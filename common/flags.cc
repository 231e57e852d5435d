#include "common/flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/cli_exit.h"
#include "common/mutex_mode.h"

#ifndef PRUNESVC_VERSION
#define PRUNESVC_VERSION "unknown"
#endif
#ifndef PRUNESVC_BUILD_TYPE
#define PRUNESVC_BUILD_TYPE "unknown"
#endif

namespace prunesvc {
namespace {

std::string Hyphenated(absl::string_view name) { return absl::StrReplaceAll(name, {{"_", "-"}}); }

bool IsAbseilFlag(const absl::CommandLineFlag& flag) {
  return absl::StrContains(flag.Filename(), "absl/");
}

// The binary's own flag named `name` (underscores), or null.
absl::CommandLineFlag* FindOwnFlag(absl::string_view name) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr || flag->IsRetired() || IsAbseilFlag(*flag)) return nullptr;
  return flag;
}

// Appends `text` to `out` word-wrapped at `width` columns, every line indented by `indent`.
void AppendWrapped(absl::string_view text, size_t indent, size_t width, std::string& out) {
  std::string line(indent, ' ');
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (line.size() > indent && line.size() + 1 + word.size() > width) {
      absl::StrAppend(&out, line, "\n");
      line.assign(indent, ' ');
    }
    if (line.size() > indent) line += ' ';
    absl::StrAppend(&line, word);
  }
  if (line.size() > indent) absl::StrAppend(&out, line, "\n");
}

// The flags the last ParseCommandLineArgs set (FlagGiven); written from main before any other
// thread starts (the flags.h thread contract).
std::set<std::string>& GivenFlags() {
  static auto* given = new std::set<std::string>();
  return *given;
}

}  // namespace

bool FlagGiven(absl::string_view name) { return GivenFlags().count(std::string(name)) != 0; }

absl::StatusOr<ParsedCommandLine> ParseCommandLineArgs(const std::vector<std::string>& args) {
  GivenFlags().clear();
  ParsedCommandLine parsed;
  if (!args.empty()) parsed.positional.push_back(args[0]);
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      parsed.positional.insert(parsed.positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      parsed.positional.push_back(arg);
      continue;
    }
    const size_t dashes = arg[1] == '-' ? 2 : 1;
    const size_t eq = arg.find('=');
    std::string name =
        arg.substr(dashes, eq == std::string::npos ? std::string::npos : eq - dashes);
    absl::StrReplaceAll({{"-", "_"}}, &name);
    const bool has_value = eq != std::string::npos;
    if (name == "help" || name == "helpfull" || name == "helpshort" || name == "h") {
      parsed.action = ParsedCommandLine::Action::kHelp;
      continue;
    }
    if (name == "version" && !has_value) {
      if (parsed.action == ParsedCommandLine::Action::kRun) {
        parsed.action = ParsedCommandLine::Action::kVersion;
      }
      continue;
    }
    const std::string shown = "--" + Hyphenated(name);
    if (name.empty()) return absl::InvalidArgumentError(absl::StrCat("malformed flag '", arg, "'"));
    absl::CommandLineFlag* flag = FindOwnFlag(name);
    std::string value;
    if (flag == nullptr && !has_value && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = FindOwnFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) {
        flag = negated;
        value = "false";
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", shown));
    }
    if (has_value) {
      value = arg.substr(eq + 1);
    } else if (value.empty()) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag ", shown, " needs a value (", shown, "=VALUE)"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid value '", value, "' for ", shown, ": ", error));
    }
    GivenFlags().insert(std::string(flag->Name()));
  }
  return parsed;
}

std::string FlagsHelp(absl::string_view usage) {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!flag->IsRetired() && !IsAbseilFlag(*flag)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
              return a->Name() < b->Name();
            });
  std::string out = absl::StrCat(usage, "\n\nFlags:\n");
  for (const absl::CommandLineFlag* flag : flags) {
    absl::StrAppend(&out, "  --", Hyphenated(flag->Name()), "\n");
    std::string default_value = flag->DefaultValue();
    if (flag->IsOfType<std::string>()) default_value = absl::StrCat("\"", default_value, "\"");
    AppendWrapped(absl::StrCat(flag->Help(), " (default: ", default_value, ")"), 6, 100, out);
  }
  absl::StrAppend(&out,
                  "\nBuilt-in: --help (this text), --version. A boolean flag takes --name or "
                  "--noname; any other flag --name=VALUE or --name VALUE.\n");
  return out;
}

std::string VersionString() {
  return absl::StrCat(PRUNESVC_VERSION, " (", PRUNESVC_BUILD_TYPE, " build)");
}

std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage) {
  const std::vector<std::string> args(argv, argv + argc);
  std::string program = args.empty() ? "prunesvc" : args[0];
  if (const size_t slash = program.rfind('/'); slash != std::string::npos) {
    program = program.substr(slash + 1);
  }
  absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLineArgs(args);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s: %s (see %s --help)\n", program.c_str(),
                 std::string(parsed.status().message()).c_str(), program.c_str());
    std::exit(kExitUsage);
  }
  switch (parsed->action) {
    case ParsedCommandLine::Action::kHelp:
      std::fputs(FlagsHelp(usage).c_str(), stdout);
      std::exit(kExitOk);
    case ParsedCommandLine::Action::kVersion:
      std::printf("%s %s\n", program.c_str(), VersionString().c_str());
      std::exit(kExitOk);
    case ParsedCommandLine::Action::kRun:
      break;
  }
  if (absl::Status s = ConfigureMutexDeadlockDetection(); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), std::string(s.message()).c_str());
    std::exit(kExitUsage);
  }
  return parsed->positional;
}

}  // namespace prunesvc
