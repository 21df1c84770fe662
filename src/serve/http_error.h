// A request-level error of the server: the HTTP status and the message of its JSON body.
#pragma once
#include <string>

#include "vlmo/error.h"

namespace vlmo::serve {

struct HttpError : Error {
  int status;
  HttpError(int s, const std::string& m) : Error(m), status(s) {}
};

}  // namespace vlmo::serve
