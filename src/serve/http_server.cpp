#include "serve/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "serve/access_log.h"
#include "serve/allowed_hosts.h"
#include "serve/body_budget.h"
#include "serve/routes.h"
#include "vlmo/error.h"
#include "vlmo/signals.h"

namespace vlmo::serve {
namespace {

using Clock = std::chrono::steady_clock;

// Request threads: answer complete requests (Routes::handle) and hand the answers back. At most
// `max_pending` requests wait for a thread; beyond, submit() refuses.
class RequestThreads {
 public:
  struct Done {
    uint64_t conn;
    HttpResponse response;
    std::string endpoint;
  };
  RequestThreads(size_t n, size_t max_pending, const Routes& routes, int wake_fd)
      : routes_(routes), wake_fd_(wake_fd), max_pending_(max_pending) {
    for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  ~RequestThreads() { close(); }
  bool submit(uint64_t conn, HttpRequest& req) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (jobs_.size() >= max_pending_) return false;
      jobs_.push_back({conn, std::move(req)});
    }
    cv_.notify_one();
    return true;
  }
  std::vector<Done> take_done() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Done> d(std::make_move_iterator(done_.begin()), std::make_move_iterator(done_.end()));
    done_.clear();
    return d;
  }
  void close() {  // finishes the queued jobs, then joins
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::pair<uint64_t, HttpRequest> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !jobs_.empty() || closing_; });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      Done d{job.first, {}, "other"};
      try {
        d.response = routes_.handle(job.second, d.endpoint);
      } catch (const std::bad_alloc&) {
        d.response = error_for(job.second.path, 503, "the server ran out of memory for this request; retry shortly");
      } catch (const std::exception& e) {
        d.response = error_for(job.second.path, 500, e.what());
      }
      job.second = HttpRequest();  // the body goes, and gives back its share of the budget
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.push_back(std::move(d));
      }
      const uint64_t one = 1;
      if (::write(wake_fd_, &one, sizeof(one)) < 0) { /* the loop also polls */
      }
    }
  }
  const Routes& routes_;
  const int wake_fd_;
  const size_t max_pending_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, HttpRequest>> jobs_;
  std::deque<Done> done_;
  bool closing_ = false;
  std::vector<std::thread> threads_;
};

struct Conn {
  int fd = -1;
  RequestParser parser;
  std::string in, out;
  size_t out_sent = 0;
  enum class State { kReading, kBusy, kWriting, kLingering } state = State::kReading;
  Clock::time_point since;  // accept / last answer (reading), first byte, write start
  bool close_after = false, peer_closed = false;
  bool head_checked = false;  // the head of the request being read passed the checks before its body
  bool unread = false;        // answered before all it sent was read: discard the rest before closing
  bool head = false;          // the request being answered is a HEAD: no body
  bool over_cap = false;      // a newcomer beyond --max-connections, only answered 503
  uint32_t events = 0;        // what epoll watches for it (0: not in the set)
  // For the access log and metrics.
  std::string method, endpoint;
  int status = 0;
  size_t bytes_in = 0;
  bool routed = false;
  Clock::time_point request_done;

  // Waiting for a request's first byte (new, or kept alive after an answer).
  bool idle() const { return state == State::kReading && !parser.started() && in.empty() && out.empty() && !over_cap; }
};

// The network thread: every connection, its deadlines, and the stop.
class EventLoop {
 public:
  EventLoop(const HttpOptions& o, int listen_fd, Metrics& metrics, const Routes& routes)
      : o_(o),
        listen_fd_(listen_fd),
        metrics_(metrics),
        routes_(routes),
        hosts_(o.host, o.allowed_hosts),
        budget_(o.max_inflight_bytes),
        log_(o.log_fd, o.log_queue),
        epoll_(epoll_create1(EPOLL_CLOEXEC)),
        wake_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (epoll_ < 0 || wake_ < 0) throw Error(cat("cannot start the server: ", std::strerror(errno)));
    limits_.max_body_bytes = o.max_body_bytes;
    metrics_.network.body_budget = o.max_inflight_bytes;
    watch(listen_fd_, EPOLLIN, kListen, EPOLL_CTL_ADD);
    watch(wake_, EPOLLIN, kWake, EPOLL_CTL_ADD);
  }
  ~EventLoop() {
    if (listen_fd_ >= 0) ::close(listen_fd_);
    for (auto& [id, c] : conns_) ::close(c.fd);
    ::close(epoll_);
    ::close(wake_);
  }
  int wake_fd() const { return wake_; }
  void run(RequestThreads& threads, Batcher& batcher);
  // Writes what the access log holds for up to `wait`, then ends its thread.
  void close_log(std::chrono::milliseconds wait) { log_.close(wait); }

 private:
  static constexpr uint64_t kListen = 0, kWake = 1;
  static constexpr size_t kLingerBytes = 16u << 20;  // what a refused client may still send (dropped) before it is cut off
  static constexpr size_t kOverCap = 16;             // newcomers beyond the cap being answered 503 at once
  void watch(int fd, uint32_t events, uint64_t key, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = key;
    epoll_ctl(epoll_, op, fd, &ev);
  }
  void set_events(uint64_t id, Conn& c, uint32_t events) {
    if (events == c.events) return;
    if (events == 0) epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
    else watch(c.fd, events, id, c.events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD);
    c.events = events;
  }
  void accept_all();
  bool make_room();
  void on_event(uint64_t id, uint32_t events);
  void guarded(uint64_t id, const std::function<void()>& f);
  void read_from(uint64_t id, Conn& c);
  void advance(uint64_t id, Conn& c);
  bool check_head(uint64_t id, Conn& c);
  void submit(uint64_t id, Conn& c);
  void refuse(uint64_t id, Conn& c, const HttpResponse& r, const std::string& method, const std::string& endpoint = "refused");
  void answer(uint64_t id, Conn& c, const HttpResponse& r);
  void write_to(uint64_t id, Conn& c);
  void finish(uint64_t id, Conn& c);
  void drop(uint64_t id);
  void check_deadlines();
  void begin_stop();
  void log(const Conn& c);
  size_t over_cap() const {
    return static_cast<size_t>(std::count_if(conns_.begin(), conns_.end(), [](const auto& e) { return e.second.over_cap; }));
  }

  const HttpOptions& o_;
  int listen_fd_;
  Metrics& metrics_;
  const Routes& routes_;
  const AllowedHosts hosts_;
  BodyBudget budget_;
  AccessLog log_;
  HttpLimits limits_;
  int epoll_, wake_;
  RequestThreads* threads_ = nullptr;
  std::map<uint64_t, Conn> conns_;
  uint64_t next_id_ = 2;
  bool stopping_ = false, accept_paused_ = false, abandoned_ = false;
  Clock::time_point stop_grace_end_, stop_deadline_;
};

// At the cap: closes the connection idle longest (RFC 9112 9.6 lets a server close an idle
// connection at any time); false when none is idle.
bool EventLoop::make_room() {
  uint64_t oldest = 0;
  for (const auto& [id, c] : conns_)
    if (c.idle() && (oldest == 0 || c.since < conns_.at(oldest).since)) oldest = id;
  if (oldest == 0) return false;
  drop(oldest);
  ++metrics_.network.idle_closed;
  return true;
}

void EventLoop::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
      // Out of descriptors: stop accepting until a connection closes (else the loop would spin).
      epoll_ctl(epoll_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      accept_paused_ = true;
      return;
    }
    if (fd < 0) return;  // EAGAIN, or a client gone before it was accepted
    const size_t beyond = over_cap();
    const bool full = conns_.size() - beyond >= o_.max_connections && !make_room();
    if (full && beyond >= kOverCap) {  // already answering that many newcomers 503: this one is closed
      ::close(fd);
      continue;
    }
    const uint64_t id = next_id_++;
    Conn& c = conns_[id];
    c.fd = fd;
    c.parser = RequestParser(limits_, &budget_);
    c.since = Clock::now();
    if (full) {
      c.over_cap = true;
      ++metrics_.network.capacity_refused;
      refuse(id, c,
             json_error(503, cat("the server is at its limit of ", o_.max_connections,
                                 " connections (--max-connections), none of them idle; retry shortly")),
             "");
      continue;
    }
    set_events(id, c, EPOLLIN | EPOLLRDHUP);
  }
}

void EventLoop::drop(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  set_events(id, it->second, 0);
  ::close(it->second.fd);
  conns_.erase(it);  // with its parser: a body being read gives back its share of the budget
}

// Runs `f` for connection `id`; if it throws (a failed allocation), that connection is answered
// 5xx and closed, or dropped when even that fails: one connection never ends the process.
void EventLoop::guarded(uint64_t id, const std::function<void()>& f) {
  try {
    f();
    return;
  } catch (...) {
  }
  try {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    c.parser = RequestParser(limits_, &budget_);  // whatever it held goes first
    c.in.clear();
    c.in.shrink_to_fit();
    if (c.state == Conn::State::kReading || c.state == Conn::State::kBusy)
      return refuse(id, c, json_error(503, "the server could not take this request (out of memory); retry shortly"), c.method);
  } catch (...) {
  }
  drop(id);
}

void EventLoop::on_event(uint64_t id, uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (events & EPOLLERR) return drop(id);
  if (!c.out.empty()) {  // an answer, or the interim 100 Continue, still to write
    write_to(id, c);
    if (!conns_.count(id) || !c.out.empty() || c.state != Conn::State::kReading) return;
  }
  if (c.state == Conn::State::kReading || c.state == Conn::State::kLingering) read_from(id, c);
}

void EventLoop::read_from(uint64_t id, Conn& c) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      if (c.state == Conn::State::kLingering) {  // discarded (the answer is sent), up to a bound
        c.bytes_in += static_cast<size_t>(n);
        if (c.bytes_in > kLingerBytes) return drop(id);
        continue;
      }
      if (!c.parser.started() && c.in.empty()) c.since = Clock::now();
      c.in.append(buf, static_cast<size_t>(n));
      advance(id, c);
      if (!conns_.count(id) || c.state != Conn::State::kReading) return;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    // End of the client's data (or an error). A complete request is still answered (a client
    // may half-close after sending); a partial one cannot be.
    c.peer_closed = true;
    if (c.state == Conn::State::kReading || c.state == Conn::State::kLingering) return drop(id);
    return;
  }
}

// Parses what has arrived: a bad request is answered, a head is checked before its body comes,
// a complete request goes to a request thread.
void EventLoop::advance(uint64_t id, Conn& c) {
  while (c.state == Conn::State::kReading && !c.in.empty()) {
    const size_t used = c.parser.feed(c.in.data(), c.in.size());
    c.in.erase(0, used);
    if (c.parser.failed()) {
      if (c.parser.error_status() == 503) ++metrics_.network.bodies_refused;
      return refuse(id, c, error_for(c.parser.request().path, c.parser.error_status(), c.parser.error()),
                    c.parser.request().method);
    }
    if (c.parser.head_done() && !c.head_checked && !check_head(id, c)) return;
    if (c.parser.done()) {
      submit(id, c);
      if (!conns_.count(id)) return;
      continue;
    }
    if (used == 0) return;  // more bytes needed
  }
}

// The head of a request, before its body: only this server's names (421); a body that no route
// would take is not read (the answer, then close); "100 Continue" only for a body a route takes.
bool EventLoop::check_head(uint64_t id, Conn& c) {
  c.head_checked = true;
  const HttpRequest& head = c.parser.request();
  if (!hosts_.allows(head.host)) {
    std::string names;
    for (const std::string& n : hosts_.names()) names += (names.empty() ? "" : ", ") + n;
    refuse(id, c,
           error_for(head.path, 421,
                     cat("this server does not answer to the host \"", head.host.substr(0, 100), "\" (it answers to ", names,
                         "; give it more names with --allowed-host)")),
           head.method);
    return false;
  }
  if (!c.parser.body_to_come()) return true;
  std::string endpoint;
  if (std::optional<HttpResponse> r = routes_.refusal_before_body(head, endpoint)) {
    c.head = head.method == "HEAD";
    refuse(id, c, *r, head.method, endpoint);
    return false;
  }
  if (c.parser.expects_continue()) {
    c.out = continue_response();
    c.out_sent = 0;
    write_to(id, c);
    return conns_.count(id) > 0;
  }
  return true;
}

// A complete request: to a request thread, or 503 when they all are busy and enough wait.
void EventLoop::submit(uint64_t id, Conn& c) {
  HttpRequest req = c.parser.take();
  c.head_checked = false;
  c.close_after = !req.keep_alive || stopping_;
  c.head = req.method == "HEAD";
  c.method = req.method.substr(0, 32);
  c.bytes_in = req.body.size();
  c.routed = true;
  c.request_done = Clock::now();
  c.state = Conn::State::kBusy;
  set_events(id, c, 0);  // nothing more is read until it is answered
  if (threads_->submit(id, req)) return;
  ++metrics_.network.pending_refused;
  c.routed = false;
  c.endpoint = "refused";
  answer(id, c,
         error_for(req.path, 503, "the server is busy: every request thread is taken and enough requests wait; retry shortly"));
}

// Answers a request refused before a route (or before its body was read), then closes.
void EventLoop::refuse(uint64_t id, Conn& c, const HttpResponse& r, const std::string& method, const std::string& endpoint) {
  c.close_after = true;
  c.unread = !c.peer_closed;
  c.method = method.substr(0, 32);
  c.endpoint = endpoint;
  c.routed = false;
  c.bytes_in = 0;
  c.request_done = Clock::now();
  answer(id, c, r);
}

void EventLoop::answer(uint64_t id, Conn& c, const HttpResponse& r) {
  c.status = r.status;
  // A 100 Continue not yet fully written goes first.
  c.out = c.out.substr(std::min(c.out_sent, c.out.size())) + serialize_response(r, !c.close_after, c.head);
  c.out_sent = 0;
  c.state = Conn::State::kWriting;
  c.since = Clock::now();
  write_to(id, c);
}

// Writes what c.out holds: the answer (then finish), or the interim 100 Continue (then reading
// goes on). A client that does not take it waits for EPOLLOUT.
void EventLoop::write_to(uint64_t id, Conn& c) {
  while (c.out_sent < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_events(id, c, c.state == Conn::State::kReading ? EPOLLOUT | EPOLLIN | EPOLLRDHUP : EPOLLOUT);
      return;
    } else if (!(n < 0 && errno == EINTR)) {
      return drop(id);  // the client went away
    }
  }
  if (c.state != Conn::State::kWriting) {  // the interim answer is out
    c.out.clear();
    c.out_sent = 0;
    set_events(id, c, EPOLLIN | EPOLLRDHUP);
    return;
  }
  finish(id, c);
}

// An answer is written: log it, then read the next request, or close.
void EventLoop::finish(uint64_t id, Conn& c) {
  log(c);
  c.out.clear();
  c.out.shrink_to_fit();
  c.out_sent = 0;
  c.head = false;
  if (c.close_after || c.peer_closed || stopping_) {
    if (c.unread && !c.peer_closed) {
      // The client may still be sending what was refused: closing now would reset the
      // connection before it reads the answer. Stop writing and discard its data a moment.
      ::shutdown(c.fd, SHUT_WR);
      c.state = Conn::State::kLingering;
      c.bytes_in = 0;
      c.since = Clock::now();
      c.in.clear();
      c.parser = RequestParser(limits_, &budget_);  // a body read in part gives back its share
      set_events(id, c, EPOLLIN | EPOLLRDHUP);
      return;
    }
    return drop(id);
  }
  c.state = Conn::State::kReading;
  c.since = Clock::now();
  c.routed = false;
  set_events(id, c, EPOLLIN | EPOLLRDHUP);
  advance(id, c);  // a pipelined request may be waiting
}

void EventLoop::log(const Conn& c) {
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - c.request_done).count();
  metrics_.request(c.endpoint, c.status, ms, c.routed);
  if (o_.quiet) return;
  log_.write(json_text({{"method", c.method},
                        {"path", c.endpoint},
                        {"status", c.status},
                        {"ms", std::round(ms * 100) / 100},
                        {"bytes_in", c.bytes_in},
                        {"bytes_out", c.out.size()}}));
}

void EventLoop::check_deadlines() {
  const auto now = Clock::now();
  std::vector<uint64_t> expired;
  std::vector<std::pair<uint64_t, std::string>> too_slow;
  for (auto& [id, c] : conns_) {
    const auto age = now - c.since;
    const bool reading = c.state == Conn::State::kReading;
    // Stopping: a connection gets a moment to complete the request it was sending, then goes.
    if (reading && stopping_ && now > stop_grace_end_) expired.push_back(id);
    else if (reading && !c.parser.started() && age > o_.idle_timeout) expired.push_back(id);
    else if (reading && !c.parser.head_done() && age > o_.head_timeout)
      too_slow.emplace_back(id, cat("request head not complete within ", o_.head_timeout.count() / 1000.0, " s"));
    else if (reading && age > o_.request_timeout)
      too_slow.emplace_back(id, cat("request body not complete within ", o_.request_timeout.count() / 1000.0, " s"));
    else if ((c.state == Conn::State::kWriting && age > o_.write_timeout) ||
             (c.state == Conn::State::kLingering && age > std::chrono::seconds(2)))
      expired.push_back(id);
  }
  for (const uint64_t id : expired) drop(id);
  for (const auto& slow : too_slow) {
    const uint64_t id = slow.first;
    Conn& c = conns_.at(id);
    guarded(id, [&] { refuse(id, c, error_for(c.parser.request().path, 408, slow.second), c.parser.request().method); });
  }
}

void EventLoop::begin_stop() {
  stopping_ = true;
  stop_grace_end_ = Clock::now() + std::chrono::seconds(1);
  stop_deadline_ = Clock::now() + o_.drain_timeout;
  if (!accept_paused_) accept_all();  // connections the kernel completed already are served too
  epoll_ctl(epoll_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  ::close(listen_fd_);  // new connections are refused by the kernel
  listen_fd_ = -1;
  for (auto& [id, c] : conns_) c.close_after = true;
}

void EventLoop::run(RequestThreads& threads, Batcher& batcher) {
  threads_ = &threads;
  std::vector<epoll_event> events(256);
  for (;;) {
    const int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 50);
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[static_cast<size_t>(i)].data.u64;
      if (key == kListen) {
        if (!stopping_) guarded(0, [&] { accept_all(); });
      } else if (key == kWake) {
        uint64_t count = 0;
        if (::read(wake_, &count, sizeof(count)) < 0) { /* nothing to take */
        }
      } else {
        guarded(key, [&] { on_event(key, events[static_cast<size_t>(i)].events); });
      }
    }
    for (RequestThreads::Done& d : threads.take_done()) {
      auto it = conns_.find(d.conn);
      if (it == conns_.end()) continue;
      it->second.endpoint = d.endpoint;
      guarded(d.conn, [&] { answer(d.conn, it->second, d.response); });
    }
    check_deadlines();
    metrics_.network.connections = conns_.size();
    metrics_.network.body_bytes = budget_.used();
    metrics_.network.log_lines_dropped = log_.dropped();
    if (accept_paused_ && !stopping_ && conns_.size() < o_.max_connections) {
      watch(listen_fd_, EPOLLIN, kListen, EPOLL_CTL_ADD);
      accept_paused_ = false;
    }
    if (!stopping_ && stop_requested()) begin_stop();
    if (!stopping_) continue;
    bool busy = false;  // lingering connections are not waited for
    for (const auto& [id, c] : conns_) busy = busy || c.state != Conn::State::kLingering;
    if (!busy) return;
    if (!abandoned_ && (Clock::now() > stop_deadline_ || stop_signal_count() > 1)) {
      batcher.abandon();  // a second signal, or the drain's bound: queued requests answer 503
      abandoned_ = true;
      stop_deadline_ = Clock::now() + std::chrono::seconds(2);  // to write those answers
    } else if (abandoned_ && Clock::now() > stop_deadline_) {
      return;
    }
  }
}

}  // namespace

HttpServer::HttpServer(HttpOptions options) : options_(std::move(options)) {
  AllowedHosts check(options_.host, options_.allowed_hosts);  // a bad --allowed-host is an error before any work
  if (options_.max_inflight_bytes < options_.max_body_bytes)
    throw Error(cat("--max-inflight-mb ", options_.max_inflight_bytes >> 20, " is below --max-body-mb ",
                    options_.max_body_bytes >> 20, ": no request of the largest size could ever be taken"));
}
HttpServer::~HttpServer() {
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::string HttpServer::authority() const {
  const bool v6 = options_.host.find(':') != std::string::npos;
  return cat(v6 ? "[" : "", options_.host, v6 ? "]" : "", ":", bound_);
}

int HttpServer::bind() {
  // Room for --max-connections descriptors (the soft limit is often 1024, the hard one higher).
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY &&
      files.rlim_cur < options_.max_connections + 256) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, options_.max_connections + 256);
    setrlimit(RLIMIT_NOFILE, &files);
  }
  const std::string& host = options_.host;
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (getaddrinfo(host.c_str(), std::to_string(options_.port).c_str(), &hints, &found) != 0 || !found)
    throw Error(cat("cannot listen on ", host, ":", options_.port, " (not an address of this machine)"));
  std::string why = "no address";
  for (addrinfo* a = found; a && listen_fd_ < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int yes = 1;  // SO_REUSEADDR only: with SO_REUSEPORT a second server could share the port
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 4096) == 0) {
      listen_fd_ = fd;
    } else {
      why = std::strerror(errno);
      ::close(fd);
    }
  }
  freeaddrinfo(found);
  if (listen_fd_ < 0) throw Error(cat("cannot listen on ", host, ":", options_.port, " (", why, ")"));
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  bound_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  return bound_;
}

nlohmann::json HttpServer::serve(const Service& service, const nlohmann::json& model, const std::function<void()>& ready) {
  if (listen_fd_ < 0) bind();
  Metrics metrics;
  Batcher batcher(options_.queue, options_.max_batch, options_.batch_wait, metrics);
  const Routes routes(service, model, batcher, metrics, options_.max_batch, options_.web_dir);
  install_stop_handlers(/*second_signal_exits=*/false);
  std::thread model_thread([&] { batcher.run(); });
  {
    EventLoop loop(options_, listen_fd_, metrics, routes);
    listen_fd_ = -1;  // the loop closes it at the stop
    RequestThreads threads(options_.http_threads, 4 * options_.http_threads, routes, loop.wake_fd());
    if (ready) ready();
    loop.run(threads, batcher);
    batcher.stop();                           // the model thread answers what is queued, then ends
    threads.close();                          // request threads finish (their answers are no longer sent)
    loop.close_log(std::chrono::seconds(1));  // a log nobody reads does not hold up the stop
  }
  model_thread.join();
  return metrics.summary();
}

}  // namespace vlmo::serve
