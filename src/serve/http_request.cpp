#include "serve/http_request.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "vlmo/error.h"

namespace vlmo::serve {
namespace {

bool is_token(const std::string& s) {
  if (s.empty()) return false;
  for (const char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string("!#$%&'*+-.^_`|~").find(c) != std::string::npos))
      return false;
  return true;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string ascii_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim_blanks(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}

const std::string* HttpRequest::header(const std::string& name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return &v;
  return nullptr;
}

bool percent_decode(const std::string& in, bool plus_is_space, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = hex_digit(in[i + 1]), lo = hex_digit(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(plus_is_space && in[i] == '+' ? ' ' : in[i]);
    }
  }
  return true;
}

bool valid_utf8(const std::string& s, size_t* bad) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) len = 1, cp = c;
    else if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) {
      if (bad) *bad = i;
      return false;
    }
    i += len;
  }
  return true;
}

size_t json_nesting(const std::string& text, size_t stop) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > stop) return stop + 1;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

size_t RequestParser::fail(int status, std::string why, size_t consumed) {
  state_ = State::kError;
  error_status_ = status;
  error_ = std::move(why);
  return consumed;
}

void RequestParser::reset() { *this = RequestParser(limits_); }

HttpRequest RequestParser::take() {
  HttpRequest r = std::move(req_);
  reset();
  return r;
}

size_t RequestParser::feed(const char* data, size_t size) {
  if (size) started_ = true;
  size_t used = 0;
  while (used < size && state_ == State::kHead) {
    const char* nl = static_cast<const char*>(std::memchr(data + used, '\n', size - used));
    const size_t take = nl ? static_cast<size_t>(nl - (data + used)) + 1 : size - used;
    const size_t room = limits_.max_head_bytes - std::min(limits_.max_head_bytes, head_.size());
    if (take > room) {  // the head would pass its limit
      const bool in_uri = head_.find('\n') == std::string::npos && std::count(head_.begin(), head_.end(), ' ') < 2;
      if (in_uri) return fail(414, cat("request URI longer than ", limits_.max_uri_bytes, " bytes"), used + room);
      return fail(431, cat("request head larger than ", limits_.max_head_bytes, " bytes"), used + room);
    }
    head_.append(data + used, take);
    used += take;
    if (head_.find('\n') == std::string::npos && head_.size() > limits_.max_uri_bytes + 16)
      return fail(414, cat("request URI longer than ", limits_.max_uri_bytes, " bytes"), used);
    const size_t n = head_.size();
    if (nl && (head_.compare(n >= 4 ? n - 4 : 0, 4, "\r\n\r\n") == 0 || head_.compare(n >= 2 ? n - 2 : 0, 2, "\n\n") == 0) &&
        head_.find_first_not_of("\r\n") != std::string::npos) {
      if (!parse_head()) return used;
    } else if (nl && head_.find_first_not_of("\r\n") == std::string::npos) {
      head_.clear();  // blank lines before a request are ignored (RFC 9112 2.2)
    }
  }
  if (state_ == State::kBody) used += feed_body(data + used, size - used);
  if (state_ == State::kChunkSize || state_ == State::kChunkData || state_ == State::kChunkEnd || state_ == State::kTrailer)
    used += feed_chunked(data + used, size - used);
  return used;
}

bool RequestParser::parse_head() {
  std::vector<std::string> lines;
  size_t b = 0;
  while (b < head_.size()) {
    size_t e = head_.find('\n', b);
    if (e == std::string::npos) e = head_.size();
    std::string line = head_.substr(b, e - b);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    b = e + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  while (!lines.empty() && lines.front().empty()) lines.erase(lines.begin());
  if (lines.empty() || !parse_request_line(lines[0])) {
    if (state_ != State::kError) fail(400, "malformed request line (expected METHOD /path HTTP/1.1)", 0);
    return false;
  }
  if (lines.size() - 1 > limits_.max_headers)
    return fail(431, cat("more than ", limits_.max_headers, " request headers"), 0), false;
  for (size_t i = 1; i < lines.size(); ++i)
    if (!take_header(lines[i])) return false;
  head_.clear();
  return body_framing();
}

bool RequestParser::parse_request_line(const std::string& line) {
  const size_t a = line.find(' '), z = line.rfind(' ');
  if (a == std::string::npos || z == a) return false;
  req_.method = line.substr(0, a);
  req_.target = line.substr(a + 1, z - a - 1);
  req_.version = line.substr(z + 1);
  if (!is_token(req_.method) || req_.target.empty() || req_.target.find(' ') != std::string::npos) return false;
  if (req_.target.size() > limits_.max_uri_bytes)
    return fail(414, cat("request URI longer than ", limits_.max_uri_bytes, " bytes"), 0), false;
  if (req_.version != "HTTP/1.1" && req_.version != "HTTP/1.0") {
    if (req_.version.rfind("HTTP/", 0) == 0) return fail(505, cat("HTTP version ", req_.version, " is not supported"), 0), false;
    return false;
  }
  req_.keep_alive = req_.version == "HTTP/1.1";
  if (req_.target[0] != '/') return fail(400, "request target must be a path beginning with /", 0), false;
  const size_t q = req_.target.find('?');
  if (!percent_decode(req_.target.substr(0, q), false, req_.path))
    return fail(400, "request path: malformed percent-escape", 0), false;
  if (q == std::string::npos) return true;
  const std::string query = req_.target.substr(q + 1);
  for (size_t b = 0; b <= query.size();) {
    size_t e = query.find('&', b);
    if (e == std::string::npos) e = query.size();
    const std::string pair = query.substr(b, e - b);
    if (!pair.empty()) {
      const size_t eq = pair.find('=');
      std::string key, value;
      if (!percent_decode(pair.substr(0, eq), true, key) ||
          !percent_decode(eq == std::string::npos ? "" : pair.substr(eq + 1), true, value))
        return fail(400, "query string: malformed percent-escape", 0), false;
      req_.query[key] = value;
    }
    b = e + 1;
  }
  return true;
}

bool RequestParser::take_header(const std::string& line) {
  const size_t colon = line.find(':');
  if (colon == std::string::npos || line[0] == ' ' || line[0] == '\t') return fail(400, "malformed header line", 0), false;
  const std::string name = line.substr(0, colon);
  if (!is_token(name)) return fail(400, "malformed header name", 0), false;
  req_.headers.emplace_back(ascii_lower(name), trim_blanks(line.substr(colon + 1)));
  return true;
}

bool RequestParser::body_framing() {
  const std::string* te = req_.header("transfer-encoding");
  const std::string* cl = nullptr;
  for (const auto& [k, v] : req_.headers)
    if (k == "content-length") {
      if (cl && *cl != v) return fail(400, "conflicting Content-Length headers", 0), false;
      cl = &v;
    }
  if (const std::string* c = req_.header("connection")) {
    const std::string v = ascii_lower(*c);
    if (v.find("close") != std::string::npos) req_.keep_alive = false;
    else if (v.find("keep-alive") != std::string::npos) req_.keep_alive = true;
  }
  if (te && cl) return fail(400, "both Transfer-Encoding and Content-Length", 0), false;
  if (const std::string* ex = req_.header("expect")) {
    if (ascii_lower(*ex) != "100-continue") return fail(417, cat("unsupported Expect: ", ex->substr(0, 100)), 0), false;
    expect_continue_ = true;
  }
  if (te) {
    if (ascii_lower(*te) != "chunked") return fail(501, "only the chunked Transfer-Encoding is supported", 0), false;
    state_ = State::kChunkSize;
    return true;
  }
  if (cl) {
    if (cl->empty() || cl->size() > 18 || cl->find_first_not_of("0123456789") != std::string::npos)
      return fail(400, "Content-Length is not a number", 0), false;
    remaining_ = std::stoull(*cl);
    if (remaining_ > limits_.max_body_bytes)
      return fail(413,
                  cat("request body too large: ", remaining_, " bytes, the limit is ", limits_.max_body_bytes,
                      " bytes (--max-body-mb)"),
                  0),
             false;
    req_.body.reserve(remaining_);
  }
  state_ = remaining_ > 0 ? State::kBody : State::kDone;
  return true;
}

bool RequestParser::add_body(const char* data, size_t n) {
  if (req_.body.size() + n > limits_.max_body_bytes) {
    fail(413, cat("request body too large: over the limit of ", limits_.max_body_bytes, " bytes (--max-body-mb)"), 0);
    return false;
  }
  req_.body.append(data, n);
  return true;
}

size_t RequestParser::feed_body(const char* data, size_t size) {
  const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, size));
  req_.body.append(data, n);
  remaining_ -= n;
  if (remaining_ == 0) state_ = State::kDone;
  return n;
}

size_t RequestParser::feed_chunked(const char* data, size_t size) {
  size_t used = 0;
  while (used < size && state_ != State::kDone && state_ != State::kError) {
    if (state_ == State::kChunkData) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, size - used));
      if (!add_body(data + used, n)) return used;
      used += n;
      remaining_ -= n;
      if (remaining_ == 0) state_ = State::kChunkEnd;
      continue;
    }
    const char c = data[used++];  // a line: the chunk size, the CRLF after a chunk, or a trailer
    if (c != '\n') {
      if (line_.size() >= 1024) return fail(400, "chunked body: line too long", used);
      line_.push_back(c);
      continue;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    const std::string line = std::move(line_);
    line_.clear();
    if (state_ == State::kChunkEnd) {
      if (!line.empty()) return fail(400, "chunked body: missing CRLF after a chunk", used);
      state_ = State::kChunkSize;
    } else if (state_ == State::kTrailer) {
      if (line.empty()) state_ = State::kDone;
      else if (++trailer_lines_ + req_.headers.size() > limits_.max_headers)
        return fail(431, cat("more than ", limits_.max_headers, " request headers"), used);
    } else {
      const std::string hex = trim_blanks(line.substr(0, line.find(';')));
      if (hex.empty() || hex.size() > 15 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
        return fail(400, "chunked body: bad chunk size", used);
      remaining_ = std::stoull(hex, nullptr, 16);
      if (req_.body.size() + remaining_ > limits_.max_body_bytes)
        return fail(413, cat("request body too large: over the limit of ", limits_.max_body_bytes, " bytes (--max-body-mb)"),
                    used);
      state_ = remaining_ == 0 ? State::kTrailer : State::kChunkData;
    }
  }
  return used;
}

}  // namespace vlmo::serve
