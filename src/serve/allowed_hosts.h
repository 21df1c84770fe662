// The names `vlmo serve` answers to. A request whose Host (or absolute-form target) names
// another host is refused with 421 before any route sees it, GETs included: a page on a
// DNS-rebinding name (evil.example resolving to 127.0.0.1) is "same origin" with that name to
// the browser, so the Origin check alone cannot stop it reading the served collection or running
// the models. Ports are not compared: a reverse proxy may forward its own.
#pragma once
#include <string>
#include <vector>

namespace vlmo::serve {

class AllowedHosts {
 public:
  // localhost, 127.0.0.1, [::1], `listen_host` (the --host value, unless a wildcard address such
  // as 0.0.0.0, which names no host) and each of `extra` (--allowed-host). Throws Error naming
  // --allowed-host for a value that is not a host name or IP address.
  AllowedHosts(const std::string& listen_host, const std::vector<std::string>& extra);
  // `host` as parse_authority gives it (lower case, IPv6 in brackets, no port).
  bool allows(const std::string& host) const;
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::vector<std::string> names_;
};

}  // namespace vlmo::serve
