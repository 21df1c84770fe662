// Answers as `vlmo serve` sends them: what Routes decides (status, type, body, extra headers),
// serialised by Boost.Beast's serializer with the headers every answer carries (Date,
// Content-Type, Content-Length, Connection). An answer to HEAD has the same headers and no body.
#pragma once
#include <ctime>
#include <string>
#include <utility>
#include <vector>

namespace vlmo::serve {

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra ones (Allow, Retry-After, ...)
  // The value of the extra header `name` (as written), or nullptr.
  const std::string* header(const std::string& name) const;
};

// The bytes of `r` as an HTTP/1.1 answer; `head`: an answer to HEAD (no body, the same
// Content-Length); `keep_alive`: "Connection: keep-alive", else "close".
std::string serialize_response(const HttpResponse& r, bool keep_alive, bool head);
// "HTTP/1.1 100 Continue" (RFC 9110 15.2.1), the interim answer to "Expect: 100-continue".
std::string continue_response();
// `t` as an HTTP date (IMF-fixdate, RFC 9110 5.6.7: "Sun, 06 Nov 1994 08:49:37 GMT").
std::string http_date(std::time_t t);

}  // namespace vlmo::serve
