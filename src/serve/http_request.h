// HTTP/1.1 requests as `vlmo serve` reads them. The framing is Boost.Beast's parser
// (http::request_parser), fed incrementally with what each connection reads; this file adds only
// the rules a server must hold that a parser leaves to its user (RFC 9112): exactly one Host,
// Transfer-Encoding only as a final "chunked" and never with Content-Length or on HTTP/1.0, the
// request-target's form, the version, Expect. Limits are checked while parsing, before what would
// pass them is buffered: the head's size (431; 414 when the URI is what is too long), the header
// count, the body (413, Content-Length or chunked), and the memory all bodies may take together
// (BodyBudget: 503). No sockets here: the server feeds what it reads, the fuzz target and the
// tests feed bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "serve/body_budget.h"

namespace vlmo::serve {

struct HttpLimits {
  size_t max_head_bytes = 32 << 10;   // request line + headers (431 beyond; 414 when the URI is)
  size_t max_uri_bytes = 8 << 10;     // 414 beyond
  size_t max_headers = 100;           // header lines; 431 beyond
  size_t max_body_bytes = 16u << 20;  // Content-Length or the chunks' sum; 413 as soon as passed
};

struct HttpRequest {
  std::string method, target;                                // as sent ("GET", "/api/image?id=x")
  int version = 11;                                          // 10: HTTP/1.0, 11: HTTP/1.1
  std::string path;                                          // the target's path, percent-decoded
  std::map<std::string, std::string> query;                  // decoded query parameters (the last of a name)
  std::vector<std::pair<std::string, std::string>> headers;  // the head's (no trailers), names in lower case
  std::string host;        // the host the request names (Host, or an absolute-form target's), lower case, no port
  std::string body;        // de-chunked
  BodyLease lease;         // the body's share of the budget, given back when the request goes
  bool keep_alive = true;  // the connection stays open after the answer
  // The value of header `name` (lower case), or nullptr.
  const std::string* header(const std::string& name) const;
};

class RequestParser {
 public:
  // `budget`: what every body in flight may take together (nullptr: no bound but the body limit).
  explicit RequestParser(HttpLimits limits = {}, BodyBudget* budget = nullptr);
  ~RequestParser();
  RequestParser(RequestParser&&) noexcept;
  RequestParser& operator=(RequestParser&&) noexcept;

  // Reads from `data`, which starts with the bytes of this request that were given before and not
  // used (a head is parsed once it is whole). Returns how many bytes it used: it stops at the end
  // of the head (head_done() turns true, so the caller can refuse the request before its body
  // comes), at the end of the request (the rest is the next pipelined one), at the first error,
  // or when it needs more bytes.
  size_t feed(const char* data, size_t size);

  bool started() const { return started_; }  // a byte of this request has arrived
  bool head_done() const { return head_done_; }
  bool done() const { return done_; }
  bool failed() const { return status_ != 0; }
  int error_status() const { return status_; }  // 400, 413, 414, 417, 431, 501, 503, 505
  const std::string& error() const { return error_; }
  // After the head: a body is still to come (Content-Length above 0, or chunked).
  bool body_to_come() const { return head_done_ && !done_ && !failed(); }
  // An HTTP/1.1 head asked for "Expect: 100-continue" and its body is still to come.
  bool expects_continue() const { return expect_continue_ && body_to_come(); }
  // The request read so far: its head once head_done(), its body too once done().
  const HttpRequest& request() const { return req_; }
  HttpRequest take();

 private:
  struct Beast;
  void fail(int status, std::string why);
  void check_head();
  void take_head();

  HttpLimits limits_;
  BodyBudget* budget_;
  std::unique_ptr<Beast> beast_;
  HttpRequest req_;
  bool started_ = false, line_done_ = false, head_done_ = false, done_ = false, expect_continue_ = false;
  int status_ = 0;
  std::string error_;
};

// ASCII lower case (header names, tokens, schemes); `s` without leading / trailing spaces and tabs.
std::string ascii_lower(std::string s);
std::string trim_blanks(const std::string& s);

// Percent-decoding (and '+' as a space in query strings); false on a malformed escape.
bool percent_decode(const std::string& in, bool plus_is_space, std::string& out);
// Whether `s` is valid UTF-8 (no overlong forms, no surrogates); `bad` gets the first bad offset.
bool valid_utf8(const std::string& s, size_t* bad = nullptr);
// The deepest nesting of JSON arrays and objects in `text` (strings skipped), counted up to
// `stop` (returns stop + 1 as soon as it is passed): a bound checked before parsing.
size_t json_nesting(const std::string& text, size_t stop);

// An authority ("host[:port]", RFC 9110 4.2 / 7.2): `host` gets the host in lower case (an IPv6
// literal keeps its brackets); false when it is not one.
bool parse_authority(const std::string& authority, std::string& host);

}  // namespace vlmo::serve
