// The web page of `vlmo serve` (web/ in the source tree), compiled into the program by
// cmake/embed_web.cmake so that an installed vlmo needs no data files.
#pragma once
#include <cstddef>
#include <string>

namespace vlmo::serve {

struct WebAsset {
  const char* name;  // "index.html", "app.js", "style.css"
  const char* content_type;
  const char* data;
  size_t size;
};
const WebAsset* find_web_asset(const std::string& name);  // nullptr when unknown

}  // namespace vlmo::serve
