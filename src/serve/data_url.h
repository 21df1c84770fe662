// Uploaded images arrive as data: URLs ("data:image/png;base64,...", RFC 2397) in JSON fields;
// embeddings may leave as base64.
#pragma once
#include <string>

namespace vlmo::serve {

// RFC 4648 base64 from position `begin` of `in`, up to the first '='; line breaks and spaces
// are skipped. Hand-written (20 lines): no Debian library offers it without a larger dependency.
// Throws Refusal kBadRequest naming `field` and the position of a character outside the alphabet.
std::string base64_decode(const std::string& in, size_t begin, const std::string& field = "image");
// RFC 4648 base64 with padding (the "base64" encoding_format of /v1/embeddings).
std::string base64_encode(const std::string& bytes);

// Whether a field's value is a data: URL (the scheme is case-insensitive).
bool is_data_url(const std::string& value);
// The bytes of a base64 data: URL; throws Refusal kBadRequest naming `field` when it is not one.
std::string data_url_bytes(const std::string& value, const std::string& field = "image");

}  // namespace vlmo::serve
