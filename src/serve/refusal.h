// Why the serving core (Batcher, Service, ServedImages, data: URLs) turns a request away, in its
// own terms. The HTTP edge decides what each kind is answered (serve/routes.h: http_status).
#pragma once
#include <string>

#include "vlmo/error.h"

namespace vlmo::serve {

enum class RefusalKind {
  kBadRequest,  // the body or a field of it is not what the task takes (not JSON, a bad image, ...)
  kNotFound,    // no such task on this server, or no such image in the collection
  kBusy,        // the queue in front of the model is full; the same request may succeed later
  kStopping,    // the server is stopping: it takes no new requests and drops the queued ones
};

// A request refused, with the message the client is shown.
struct Refusal : Error {
  RefusalKind kind;
  Refusal(RefusalKind k, const std::string& why) : Error(why), kind(k) {}
};

}  // namespace vlmo::serve
