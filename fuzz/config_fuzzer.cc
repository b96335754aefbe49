// The configuration loader: the input's lines are NAME=VALUE environment
// entries until an empty line, then command-line arguments.
#include <cstddef>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "server/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  std::map<std::string, std::string> env;
  std::vector<std::string> args;
  std::string line;
  bool in_env = true;
  while (std::getline(in, line)) {
    if (in_env && line.empty()) {
      in_env = false;
    } else if (in_env) {
      const auto eq = line.find('=');
      env[line.substr(0, eq)] = eq == std::string::npos ? "" : line.substr(eq + 1);
    } else {
      args.push_back(line);
    }
  }
  auto lookup = [&env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  (void)dbpool::config::Load(lookup, args);
  return 0;
}
