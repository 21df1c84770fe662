#include "serve/data_url.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>

#include "serve/http_request.h"
#include "serve/refusal.h"

namespace vlmo::serve {

std::string base64_decode(const std::string& in, size_t begin, const std::string& field) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<uint8_t>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  std::string out;
  out.reserve(in.size() > begin ? (in.size() - begin) / 4 * 3 : 0);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = begin; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '=') break;
    if (c == '\n' || c == '\r' || c == ' ') continue;
    const int8_t v = table[static_cast<uint8_t>(c)];
    if (v < 0) throw Refusal(RefusalKind::kBadRequest, cat("\"", field, "\": not valid base64 at character ", i));
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

std::string base64_encode(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t v = 0;
    for (size_t k = 0; k < 3; ++k) v = (v << 8) | (k < n ? static_cast<uint8_t>(bytes[i + k]) : 0u);
    for (size_t k = 0; k < 4; ++k) out.push_back(k <= n ? alphabet[(v >> (18 - 6 * k)) & 63] : '=');
  }
  return out;
}

bool is_data_url(const std::string& value) {
  static const std::string scheme = "data:";
  if (value.size() < scheme.size()) return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(value[i])) != scheme[i]) return false;
  return true;
}

std::string data_url_bytes(const std::string& value, const std::string& field) {
  const size_t comma = value.find(',');
  const std::string head = ascii_lower(comma == std::string::npos ? "" : value.substr(0, comma));  // case-insensitive
  if (!is_data_url(value) || comma == std::string::npos || head.find(";base64") == std::string::npos)
    throw Refusal(RefusalKind::kBadRequest, cat("\"", field, "\": a data: URL must be base64 (data:image/png;base64,...)"));
  return base64_decode(value, comma + 1, field);
}

}  // namespace vlmo::serve
