#include "serve/http_request.h"

#include <algorithm>
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <cctype>
#include <cstring>
#include <string_view>

#include "vlmo/error.h"

namespace vlmo::serve {
namespace {

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

bool parse_authority(const std::string& authority, std::string& host) {
  std::string h, port;
  if (!authority.empty() && authority[0] == '[') {  // an IP literal (IPv6), brackets kept
    const size_t close = authority.find(']');
    if (close == std::string::npos || close < 3) return false;
    h = authority.substr(0, close + 1);
    if (h.find_first_not_of("0123456789abcdefABCDEF:.", 1) != close) return false;
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return false;
      port = authority.substr(close + 2);
    }
  } else {
    const size_t colon = authority.find(':');
    h = authority.substr(0, colon);
    if (colon != std::string::npos) port = authority.substr(colon + 1);
    // reg-name or IPv4: unreserved, percent-escapes and sub-delims (RFC 3986 3.2.2); never empty
    static const std::string allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=";
    if (h.empty() || h.find_first_not_of(allowed) != std::string::npos) return false;
    if (h.size() > 1 && h.back() == '.') h.pop_back();  // the fully qualified form names the same host
  }
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return false;
  host = ascii_lower(h);
  return true;
}

namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;

// A request body for Beast's parser that grows only with the bytes that arrive, charged to the
// budget (BudgetedBytes): Beast's string_body would reserve the declared Content-Length at once.
struct BudgetedBody {
  using value_type = BudgetedBytes;
  static std::uint64_t size(const value_type& v) { return v.data.size(); }
  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}
    void init(const boost::optional<std::uint64_t>& length, beast::error_code& ec) {
      most_ = length ? static_cast<size_t>(*length) : body_.limit;  // a body never grows past these
      ec = {};
    }
    template <class Buffers>
    std::size_t put(const Buffers& buffers, beast::error_code& ec) {
      size_t n = 0;
      for (const auto b : beast::buffers_range_ref(buffers)) {
        if (!body_.append(static_cast<const char*>(b.data()), b.size(), most_)) {
          ec = make_error_code(boost::system::errc::not_enough_memory);
          return n;
        }
        n += b.size();
      }
      ec = {};
      return n;
    }
    void finish(beast::error_code& ec) { ec = {}; }

   private:
    value_type& body_;
    size_t most_ = 0;
  };
};

// The comma-separated elements of the values of every header `name` of the head, lower case,
// without blanks; empty elements dropped (RFC 9110 5.6.1).
std::vector<std::string> list_values(const HttpRequest& r, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& [k, v] : r.headers) {
    if (k != name) continue;
    for (size_t b = 0; b <= v.size();) {
      size_t e = v.find(',', b);
      if (e == std::string::npos) e = v.size();
      const std::string item = ascii_lower(trim_blanks(v.substr(b, e - b)));
      if (!item.empty()) out.push_back(item);
      b = e + 1;
    }
  }
  return out;
}

size_t count_headers(const HttpRequest& r, const std::string& name) {
  return static_cast<size_t>(std::count_if(r.headers.begin(), r.headers.end(), [&](const auto& h) { return h.first == name; }));
}

// "HTTP/d.d" at the end of the request line: a version, only not one this server speaks.
bool names_other_version(const char* data, size_t size) {
  const char* eol = static_cast<const char*>(std::memchr(data, '\r', size));
  const std::string line(data, eol ? static_cast<size_t>(eol - data) : size);
  const size_t sp = line.rfind(' ');
  const std::string v = sp == std::string::npos ? "" : line.substr(sp + 1);
  return v.size() == 8 && v.compare(0, 5, "HTTP/") == 0 && std::isdigit(static_cast<unsigned char>(v[5])) && v[6] == '.' &&
         std::isdigit(static_cast<unsigned char>(v[7]));
}

std::string busy_bodies_message(const BodyBudget* budget) {
  return cat("the server is busy: request bodies in flight take the whole budget of ", budget ? budget->limit() >> 20 : 0,
             " MiB (--max-inflight-mb); retry shortly");
}

// The path and query of an origin-form target ("/path?query"); false with `why` when malformed.
bool parse_origin_form(const std::string& target, HttpRequest& r, std::string& why) {
  const size_t q = target.find('?');
  if (!percent_decode(target.substr(0, q), false, r.path)) return why = "request path: malformed percent-escape", false;
  if (q == std::string::npos) return true;
  const std::string query = target.substr(q + 1);
  for (size_t b = 0; b <= query.size();) {
    size_t e = query.find('&', b);
    if (e == std::string::npos) e = query.size();
    const std::string pair = query.substr(b, e - b);
    if (!pair.empty()) {
      const size_t eq = pair.find('=');
      std::string key, value;
      if (!percent_decode(pair.substr(0, eq), true, key) ||
          !percent_decode(eq == std::string::npos ? "" : pair.substr(eq + 1), true, value))
        return why = "query string: malformed percent-escape", false;
      r.query[key] = value;
    }
    b = e + 1;
  }
  return true;
}

}  // namespace

struct RequestParser::Beast {
  http::request_parser<BudgetedBody> parser;

  // The status and message of a request Beast's parser refused with `ec`; `data` is what it was given.
  // `line_done`: the request line was taken.
  std::pair<int, std::string> refusal(const beast::error_code& ec, const char* data, size_t size, const HttpLimits& limits,
                                      bool line_done) {
    if (ec == http::error::header_limit) {
      if (!line_done && !std::memchr(data, '\n', size))
        return {414, cat("request URI longer than ", limits.max_uri_bytes, " bytes")};
      return {431, cat("request head larger than ", limits.max_head_bytes, " bytes")};
    }
    if (ec == http::error::body_limit) {
      const auto declared = parser.content_length();
      if (declared)
        return {413, cat("request body too large: ", *declared, " bytes, the limit is ", limits.max_body_bytes,
                         " bytes (--max-body-mb)")};
      return {413, cat("request body too large: over the limit of ", limits.max_body_bytes, " bytes (--max-body-mb)")};
    }
    if (parser.get().body().lease.refused()) return {503, ""};
    if (ec == http::error::bad_version && !line_done && names_other_version(data, size))
      return {505, "HTTP version not supported (HTTP/1.1 and HTTP/1.0 are)"};
    if (ec == http::error::bad_transfer_encoding) return {400, "Transfer-Encoding given twice, or with Content-Length"};
    if (ec == http::error::bad_content_length)
      return {400, "Content-Length: not a number, or with Transfer-Encoding, or with another value"};
    return {400, cat("malformed request: ", ec.message())};
  }
};

RequestParser::RequestParser(HttpLimits limits, BodyBudget* budget)
    : limits_(limits), budget_(budget), beast_(std::make_unique<Beast>()) {
  auto& p = beast_->parser;
  p.header_limit(static_cast<std::uint32_t>(std::min<size_t>(limits_.max_head_bytes, UINT32_MAX)));
  p.body_limit(static_cast<std::uint64_t>(limits_.max_body_bytes));
  p.eager(false);  // stop after the head: the server may refuse the request before its body
  p.get().body().lease = BodyLease(budget_);
  p.get().body().limit = limits_.max_body_bytes;
}

RequestParser::~RequestParser() = default;
RequestParser::RequestParser(RequestParser&&) noexcept = default;
RequestParser& RequestParser::operator=(RequestParser&&) noexcept = default;

void RequestParser::fail(int status, std::string why) {
  if (status_ != 0) return;  // the first reason stands
  status_ = status;
  error_ = std::move(why);
}

HttpRequest RequestParser::take() {
  HttpRequest r = std::move(req_);
  *this = RequestParser(limits_, budget_);
  return r;
}

size_t RequestParser::feed(const char* data, size_t size) {
  if (done_ || failed() || size == 0) return 0;
  auto& p = beast_->parser;
  if (!p.got_some()) {  // empty lines before a request are ignored (RFC 9112 2.2)
    size_t blank = 0;
    while (blank + 1 < size && data[blank] == '\r' && data[blank + 1] == '\n') blank += 2;
    if (blank > 0 || (size == 1 && data[0] == '\r')) return blank;
  }
  started_ = true;
  if (!head_done_) {
    // Beast waits for CRLF CRLF before it reads a head given piece by piece: a bare LF would
    // only be found once the head limit or its deadline passed. (Only the head: a body follows.)
    const std::string_view given(data, size);
    const size_t end = given.find("\r\n\r\n");
    const std::string_view head = given.substr(0, end == std::string_view::npos ? size : end + 4);
    for (size_t nl = head.find('\n'); nl != std::string_view::npos; nl = head.find('\n', nl + 1))
      if (nl == 0 || head[nl - 1] != '\r') {
        fail(400, "malformed request: a line of the head ends with a bare LF (CRLF expected)");
        return 0;
      }
  }
  beast::error_code ec;
  const size_t used = p.put(boost::asio::const_buffer(data, size), ec);
  if (!head_done_ && used > 0) line_done_ = true;  // Beast takes the request line first
  if (ec == http::error::need_more) {
    // What waits to be parsed is bounded here where Beast has no bound of its own: a request line
    // before its end, a chunk line, the trailers.
    if (!line_done_ && !std::memchr(data, '\n', size) && size > limits_.max_uri_bytes + 32)
      fail(414, cat("request URI longer than ", limits_.max_uri_bytes, " bytes"));
    else if (head_done_ && size - used > limits_.max_head_bytes)
      fail(431, cat("chunk header or trailer section larger than ", limits_.max_head_bytes, " bytes"));
    return used;
  }
  if (ec) {
    const auto [status, why] = beast_->refusal(ec, data, size, limits_, line_done_);
    fail(status, status == 503 ? busy_bodies_message(budget_) : why);
    return used;
  }
  if (!head_done_) {
    head_done_ = true;
    take_head();
    check_head();
    if (failed()) return used;
    p.eager(true);
  }
  if (p.is_done()) {
    done_ = true;
    req_.body = std::move(p.get().body().data);
    req_.lease = std::move(p.get().body().lease);
  }
  return used;
}

void RequestParser::take_head() {
  const auto& m = beast_->parser.get();
  req_.method = std::string(m.method_string());
  req_.target = std::string(m.target());
  req_.version = m.version();
  req_.keep_alive = beast_->parser.keep_alive();
  for (const auto& f : m) req_.headers.emplace_back(ascii_lower(std::string(f.name_string())), std::string(f.value()));
}

// What RFC 9112 asks of a server that a parser leaves to it, and this server's limits on the head.
void RequestParser::check_head() {
  HttpRequest& r = req_;
  if (r.headers.size() > limits_.max_headers) return fail(431, cat("more than ", limits_.max_headers, " request headers"));
  if (r.target.size() > limits_.max_uri_bytes) return fail(414, cat("request URI longer than ", limits_.max_uri_bytes, " bytes"));
  // Transfer-Encoding: only "chunked", as the one and final coding, on HTTP/1.1, without
  // Content-Length (RFC 9112 6.1, 6.3); anything else could frame the body differently from a
  // proxy in front.
  if (count_headers(r, "transfer-encoding") > 0) {
    const std::vector<std::string> codings = list_values(r, "transfer-encoding");
    if (r.version < 11) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (count_headers(r, "content-length") > 0) return fail(400, "both Transfer-Encoding and Content-Length");
    if (codings.empty() || codings.back() != "chunked") return fail(400, "Transfer-Encoding: the final coding must be chunked");
    if (std::count(codings.begin(), codings.end(), "chunked") > 1) return fail(400, "Transfer-Encoding: chunked more than once");
    if (codings.size() > 1) return fail(501, "only the chunked Transfer-Encoding is supported");
  }
  // The target: a path (origin-form) or an absolute http(s) URL, whose authority then names the
  // host (RFC 9112 3.2.1, 3.2.2). Exactly one Host header either way (3.2).
  std::string why;
  const std::string lower = ascii_lower(r.target.substr(0, 8));
  const size_t scheme = lower.rfind("http://", 0) == 0 ? 7 : lower.rfind("https://", 0) == 0 ? 8 : 0;
  if (!r.target.empty() && r.target[0] == '/') {
    if (!parse_origin_form(r.target, r, why)) return fail(400, why);
  } else if (scheme > 0) {
    const size_t end = std::min(r.target.find_first_of("/?", scheme), r.target.size());
    const std::string authority = r.target.substr(scheme, end - scheme);
    if (authority.find('@') != std::string::npos || !parse_authority(authority, r.host))
      return fail(400, "request target: not an http URL with a host (userinfo is refused)");
    const std::string rest = r.target.substr(end);
    if (!parse_origin_form(rest.empty() || rest[0] != '/' ? "/" + rest : rest, r, why)) return fail(400, why);
  } else {
    return fail(400, "request target must be a path beginning with / (or an absolute http:// URL)");
  }
  const size_t hosts = count_headers(r, "host");
  if (hosts == 0) return fail(400, "no Host header (every request must name the server it is for)");
  if (hosts > 1) return fail(400, "more than one Host header");
  if (scheme == 0 && !parse_authority(*r.header("host"), r.host)) return fail(400, "Host header: not a host[:port]");
  // Expect: 100-continue is the only expectation; HTTP/1.0 clients' is ignored (RFC 9110 10.1.1).
  if (count_headers(r, "expect") > 0) {
    const std::vector<std::string> expect = list_values(r, "expect");
    if (expect != std::vector<std::string>{"100-continue"})
      return fail(417, cat("unsupported Expect: ", r.header("expect")->substr(0, 100)));
    expect_continue_ = r.version >= 11;
  }
  // A declared length that does not fit in what is left of the budget now: refused before it comes.
  const auto declared = beast_->parser.content_length();
  if (budget_ && declared && *declared > budget_->limit() - std::min(budget_->limit(), budget_->used()))
    return fail(503, busy_bodies_message(budget_));
}

}  // namespace vlmo::serve
