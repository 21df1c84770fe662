#include "serve/http_response.h"

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstdio>

namespace vlmo::serve {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;

template <class Message>
std::string bytes_of(const Message& m) {
  std::string out;
  http::serializer<false, typename Message::body_type> sr{m};
  beast::error_code ec;
  do {
    sr.next(ec, [&](beast::error_code& e, const auto& buffers) {
      e = {};
      for (const auto b : beast::buffers_range_ref(buffers)) out.append(static_cast<const char*>(b.data()), b.size());
      sr.consume(beast::buffer_bytes(buffers));
    });
  } while (!ec && !sr.is_done());
  return out;
}

}  // namespace

const std::string* HttpResponse::header(const std::string& name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return &v;
  return nullptr;
}

std::string http_date(std::time_t t) {
  static const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

std::string serialize_response(const HttpResponse& r, bool keep_alive, bool head) {
  http::response<http::string_body> res{static_cast<http::status>(r.status), 11};
  res.set(http::field::date, http_date(std::time(nullptr)));
  res.set(http::field::content_type, r.content_type);
  res.set(http::field::connection, keep_alive ? "keep-alive" : "close");
  for (const auto& [k, v] : r.headers) res.insert(k, v);
  res.content_length(r.body.size());
  if (head) return bytes_of(http::response<http::empty_body>(std::move(res.base())));
  res.body() = r.body;
  return bytes_of(res);
}

std::string continue_response() { return bytes_of(http::response<http::empty_body>(http::status::continue_, 11)); }

}  // namespace vlmo::serve
