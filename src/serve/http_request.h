// HTTP/1.1 requests as `vlmo serve` reads them: an incremental parser that holds every request to
// limits before it has read what would exceed them (the head's size and header count, the URI's
// length, the body's size whether Content-Length or chunked), so a client cannot make the server
// buffer more than the limits, and a refusal names what was too large. No sockets here: the
// server feeds what it reads, the fuzz target and the tests feed bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace vlmo::serve {

struct HttpLimits {
  size_t max_head_bytes = 32 << 10;   // request line + headers (431 beyond; 414 when the URI is)
  size_t max_uri_bytes = 8 << 10;     // 414 beyond
  size_t max_headers = 100;           // header (and trailer) lines; 431 beyond
  size_t max_body_bytes = 16u << 20;  // Content-Length or the chunks' sum; 413 as soon as passed
};

struct HttpRequest {
  std::string method, target, version;                       // as sent ("GET", "/api/image?id=x", "HTTP/1.1")
  std::string path;                                          // the target's path, percent-decoded
  std::map<std::string, std::string> query;                  // decoded query parameters (the last of a name)
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;                                          // de-chunked
  bool keep_alive = true;                                    // the connection stays open after the answer
  // The value of header `name` (lower case), or nullptr.
  const std::string* header(const std::string& name) const;
};

class RequestParser {
 public:
  explicit RequestParser(HttpLimits limits = {}) : limits_(limits) {}

  // Reads from `data`; returns how many bytes belong to this request (the rest is the next
  // pipelined one). Stops at the end of the request or at the first error.
  size_t feed(const char* data, size_t size);

  bool started() const { return started_; }  // a byte of this request has arrived
  bool head_done() const { return state_ != State::kHead; }
  bool done() const { return state_ == State::kDone; }
  bool failed() const { return state_ == State::kError; }
  int error_status() const { return error_status_; }  // 400, 413, 414, 431, 501, 505
  const std::string& error() const { return error_; }
  // The head asked for "Expect: 100-continue" and a body is still to come.
  bool expects_continue() const { return expect_continue_ && state_ != State::kDone && state_ != State::kError; }
  // The request read so far (complete once done()).
  const HttpRequest& request() const { return req_; }
  HttpRequest take();
  void reset();

 private:
  enum class State { kHead, kBody, kChunkSize, kChunkData, kChunkEnd, kTrailer, kDone, kError };
  size_t fail(int status, std::string why, size_t consumed);
  bool parse_head();  // false: failed
  bool parse_request_line(const std::string& line);
  bool take_header(const std::string& line);
  bool body_framing();
  size_t feed_body(const char* data, size_t size);
  size_t feed_chunked(const char* data, size_t size);
  bool add_body(const char* data, size_t n);

  HttpLimits limits_;
  HttpRequest req_;
  State state_ = State::kHead;
  bool started_ = false, expect_continue_ = false;
  std::string head_, line_;
  uint64_t remaining_ = 0;  // body bytes (Content-Length) or bytes of the current chunk
  size_t trailer_lines_ = 0;
  int error_status_ = 0;
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

}  // namespace vlmo::serve
