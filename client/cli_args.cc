#include "client/cli_args.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace prunesvc::client {

std::map<std::string, std::vector<std::string>> ExtractRepeatedFlags(
    std::vector<std::string>& args, const std::vector<std::string>& names) {
  std::map<std::string, std::vector<std::string>> out;
  std::vector<std::string> rest;
  bool literal = false;  // after "--"
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--") literal = true;
    bool taken = false;
    for (const std::string& name : names) {
      if (literal || taken) break;
      const std::string flag = absl::StrCat("--", name);
      if (absl::StartsWith(args[i], flag + "=")) {
        out[name].push_back(args[i].substr(flag.size() + 1));
        taken = true;
      } else if (args[i] == flag && i + 1 < args.size()) {
        out[name].push_back(args[++i]);
        taken = true;
      }
    }
    if (!taken) rest.push_back(args[i]);
  }
  args = std::move(rest);
  return out;
}

std::set<std::string> GivenFlagNames(const std::vector<std::string>& args) {
  std::set<std::string> names;
  for (const std::string& a : args) {
    if (a == "--") break;
    if (a.size() < 2 || a[0] != '-') continue;
    std::string name(absl::StripPrefix(absl::StripPrefix(a, "-"), "-"));
    name = name.substr(0, name.find('='));
    std::replace(name.begin(), name.end(), '_', '-');
    if (!name.empty()) names.insert(name);
  }
  return names;
}

}  // namespace prunesvc::client
