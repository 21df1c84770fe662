#include "serve/allowed_hosts.h"

#include <algorithm>

#include "serve/http_request.h"
#include "vlmo/error.h"

namespace vlmo::serve {
namespace {

// `value` as a Host header would name it: IPv6 addresses in brackets; "" when it is not a host
// (or carries a port, a scheme or a path).
std::string host_name(std::string value) {
  if (value.empty()) return "";
  if (value.find(':') != std::string::npos && value.front() != '[') value = "[" + value + "]";
  std::string host;
  if (!parse_authority(value, host)) return "";
  const std::string lower = ascii_lower(value);
  return lower == host || lower == host + "." ? host : "";
}

}  // namespace

AllowedHosts::AllowedHosts(const std::string& listen_host, const std::vector<std::string>& extra)
    : names_{"localhost", "127.0.0.1", "[::1]"} {
  auto add = [&](const std::string& name) {
    if (std::find(names_.begin(), names_.end(), name) == names_.end()) names_.push_back(name);
  };
  const std::string listen = host_name(listen_host);
  if (!listen.empty() && listen != "0.0.0.0" && listen != "[::]") add(listen);
  for (const std::string& e : extra) {
    const std::string name = host_name(e);
    if (name.empty())
      throw Error(cat("--allowed-host \"", e, "\": expected a host name or IP address as clients write it, without a port"));
    add(name);
  }
}

bool AllowedHosts::allows(const std::string& host) const { return std::find(names_.begin(), names_.end(), host) != names_.end(); }

}  // namespace vlmo::serve
