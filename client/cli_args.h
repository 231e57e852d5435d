// prunectl's argv handling that abseil's flags do not cover: repeatable flags (--label, --state;
// absl keeps only the last occurrence) and which flags were written at all (this abseil keeps
// CommandLineFlag::IsSpecifiedOnCommandLine private), so `submit` sends only what was given.
//
// Pure functions; thread-safe.
#ifndef PRUNESVC_CLIENT_CLI_ARGS_H_
#define PRUNESVC_CLIENT_CLI_ARGS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

namespace prunesvc::client {

// Removes every `--NAME=V` and `--NAME V` of the given names from `args` (up to a bare "--") and
// returns the values by name, in order.
std::map<std::string, std::vector<std::string>> ExtractRepeatedFlags(
    std::vector<std::string>& args, const std::vector<std::string>& names);

// The flag names written in `args` (before a bare "--"), hyphenated: "--flops_budget=1" and
// "-flops-budget" both give "flops-budget".
std::set<std::string> GivenFlagNames(const std::vector<std::string>& args);

}  // namespace prunesvc::client

#endif  // PRUNESVC_CLIENT_CLI_ARGS_H_
