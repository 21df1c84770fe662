// The HTTP server of `vlmo serve` over real sockets, in the test process: a server on a free
// port of 127.0.0.1 with tasks that need no model (echo, a gate that holds a request thread).
// What it does with framing a proxy could read differently, names that are not its own, HEAD
// among pipelined requests, 100-continue, the connection cap, the body budget, busy request
// threads, a log nobody reads, and a failed allocation on one connection.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "serve/http_server.h"
#include "serve/service.h"
#include "vlmo/signals.h"

using namespace vlmo;
using namespace vlmo::serve;

namespace {

using Clock = std::chrono::steady_clock;

// A gate a task waits at until it opens.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  std::atomic<int> waiting{0};
  void pass() {
    std::unique_lock<std::mutex> lock(mu);
    ++waiting;
    cv.wait(lock, [&] { return open; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu);
      open = true;
    }
    cv.notify_all();
  }
};

// A server in a thread of the test: "embed" echoes its text, "itm" waits at the gate (in the
// request thread, before the queue) and then echoes.
class TestServer {
 public:
  explicit TestServer(HttpOptions o = {}) {
    clear_stop_request();
    svc_.add_task("embed", "echo.safetensors", echo("embed"));
    Task gated = echo("itm");
    gated.prepare = [this](const nlohmann::json& r) {
      gate.pass();
      return Prepared{{}, {}, r["text"].get<std::string>()};
    };
    svc_.add_task("itm", "echo.safetensors", gated);
    o.host = "127.0.0.1";
    o.port = 0;
    server_ = std::make_unique<HttpServer>(o);
    port = server_->bind();
    std::promise<void> ready;
    thread_ = std::thread([&] { summary = server_->serve(svc_, {{"path", "echo.safetensors"}}, [&] { ready.set_value(); }); });
    ready.get_future().wait();
  }
  ~TestServer() { stop(); }
  // Stops as SIGTERM would; returns how long the server took to end.
  double stop() {
    if (!thread_.joinable()) return 0;
    gate.release();
    const auto t0 = Clock::now();
    request_stop(SIGTERM);
    thread_.join();
    clear_stop_request();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

  int port = 0;
  Gate gate;
  nlohmann::json summary;

 private:
  static Task echo(const std::string& name) {
    Task t;
    t.name = name;
    t.fields = {"text"};
    t.prepare = [](const nlohmann::json& r) { return Prepared{{}, {}, r["text"].get<std::string>()}; };
    t.run = [](const std::vector<Prepared>& in) {
      std::vector<Answer> out;
      for (const auto& p : in) out.push_back({{{"echo", p.text}}, p.text});
      return out;
    };
    return t;
  }
  Service svc_{40'000'000};
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

// A client connection with a receive deadline.
class Client {
 public:
  explicit Client(int port, double timeout_s = 10) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{static_cast<time_t>(timeout_s), static_cast<suseconds_t>((timeout_s - static_cast<int>(timeout_s)) * 1e6)};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    connected = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  void send(const std::string& s) {
    for (size_t at = 0; at < s.size();) {
      const ssize_t n = ::send(fd_, s.data() + at, s.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return;
      at += static_cast<size_t>(n);
    }
  }
  // Reads until `pred` holds on what came, the peer closes, or the deadline; false on the latter two.
  bool read_until(const std::function<bool()>& pred) {
    char buf[65536];
    while (!pred()) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return pred();
      in.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  struct Answer {
    int status = 0;
    std::map<std::string, std::string> headers;  // names in lower case
    std::string body;
  };
  // The next answer: its head, then Content-Length bytes (none for an answer to HEAD).
  Answer answer(bool to_head = false) {
    Answer a;
    size_t end = std::string::npos;
    if (!read_until([&] { return (end = in.find("\r\n\r\n")) != std::string::npos; })) return a;
    const std::string head = in.substr(0, end);
    in.erase(0, end + 4);
    a.status = std::atoi(head.substr(9, 3).c_str());
    for (size_t b = head.find("\r\n"); b != std::string::npos;) {
      const size_t e = head.find("\r\n", b + 2);
      const std::string line = head.substr(b + 2, e == std::string::npos ? std::string::npos : e - b - 2);
      const size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      a.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
      b = e;
    }
    const size_t length = to_head ? 0 : std::stoul(a.headers.count("content-length") ? a.headers["content-length"] : "0");
    read_until([&] { return in.size() >= length; });
    a.body = in.substr(0, length);
    in.erase(0, std::min(length, in.size()));
    return a;
  }
  bool eof_now() {
    char c;
    return ::recv(fd_, &c, 1, 0) == 0;
  }
  int fd() const { return fd_; }
  bool connected = false;
  std::string in;

 private:
  int fd_ = -1;
};

std::string get(const std::string& target, const std::string& host = "localhost", const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\n" + extra + "\r\n";
}

std::string post(const std::string& target, const std::string& json, const std::string& host = "localhost",
                 const std::string& extra = "") {
  return "POST " + target + " HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(json.size()) + "\r\n\r\n" + json;
}

// A counter of GET /metrics.
double metric(int port, const std::string& name) {
  Client c(port);
  c.send(get("/metrics"));
  const std::string text = c.answer().body;
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
}

}  // namespace

// Framing a proxy in front could read differently is answered 400 with "Connection: close", and
// the connection is closed: nothing after it is read as another request.
TEST(HttpServer, AmbiguousFramingIsAnswered400AndClosed) {
  TestServer s;
  const std::string te =
      "POST /api/embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string smuggled = get("/health");
  for (
      const std::string& bytes : std::vector<std::string>{
          "POST /api/embed HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
          std::string(
              "POST /api/embed HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
          te + "4\n{\"a\"\r\n0\r\n\r\n",
          te + " 4\r\n{\"a\"\r\n0\r\n\r\n",
          te + "0\r\nT: v\n\r\n\r\n",
          std::string("GET /health HTTP/1.1\r\nHost: localhost\r\nX: a\rb\r\n\r\n"),
          std::string("GET /health HTTP/1.1\r\nHost: localhost\r\nX: a") + '\0' + "b\r\n\r\n",
          std::string("GET /health HTTP/1.1\r\n\r\n"),
          std::string("GET /health HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n"),
          std::string("POST /api/embed HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"),
      }) {
    Client c(s.port);
    c.send(bytes + smuggled);
    Client::Answer a = c.answer();
    EXPECT_EQ(a.status, 400) << bytes;
    EXPECT_EQ(a.headers["connection"], "close") << bytes;
    EXPECT_TRUE(nlohmann::json::parse(a.body).contains("error")) << a.body;
    c.read_until([] { return false; });
    EXPECT_EQ(c.in, "") << "after the 400 of " << bytes;  // the smuggled request was never answered
  }
  Client ok(s.port);
  ok.send(get("http://127.0.0.1/health", "whatever"));  // the absolute form is taken
  EXPECT_EQ(ok.answer().status, 200);
}

// Only requests naming this server are answered, on every route: another name (DNS rebinding)
// gets 421 before any route, GETs included; localhost, 127.0.0.1, [::1] and --allowed-host names
// are served, whatever the port.
TEST(HttpServer, OnlyItsOwnNamesAreServed) {
  HttpOptions o;
  o.allowed_hosts = {"vlmo.example"};
  TestServer s(o);
  const std::string port = ":" + std::to_string(s.port);
  for (const std::string& host : std::vector<std::string>{"localhost" + port, "127.0.0.1" + port, "[::1]" + port, "LOCALHOST",
                                                          "vlmo.example:443", std::string("vlmo.example.")}) {
    Client c(s.port);
    c.send(get("/health", host));
    EXPECT_EQ(c.answer().status, 200) << host;
  }
  for (const std::string& bytes : std::vector<std::string>{
           get("/health", "evil.example" + port), get("/api/image?id=x", "rebind.evil.example"), get("/nope", "evil.example"),
           get("http://evil.example/health", "localhost"),
           post("/api/embed", R"({"text":"hi"})", "evil.example" + port, "Origin: http://evil.example" + port + "\r\n"),
           get("/v1/models", "10.0.0.1")}) {
    Client c(s.port);
    c.send(bytes);
    Client::Answer a = c.answer();
    EXPECT_EQ(a.status, 421) << bytes;
    EXPECT_NE(a.body.find("--allowed-host"), std::string::npos) << a.body;
    EXPECT_EQ(a.headers["connection"], "close");
  }
  Client openai(s.port);
  openai.send(get("/v1/models", "attacker.example"));
  const nlohmann::json error = nlohmann::json::parse(openai.answer().body);
  EXPECT_TRUE(error["error"].contains("message") && error["error"].contains("type")) << error;  // the /v1/ error shape
}

// HEAD is answered as GET without a body, so the next answer on the connection is read where it
// starts; a HEAD of a POST route is a 405 without a body too. Every answer has a Date.
TEST(HttpServer, HeadStaysInStepWithTheNextRequest) {
  TestServer s;
  Client c(s.port);
  c.send("HEAD /health HTTP/1.1\r\nHost: localhost\r\n\r\n" + get("/health") +
         "HEAD /api/embed HTTP/1.1\r\nHost: localhost\r\n\r\n" + post("/api/embed", R"({"text":"after"})"));
  Client::Answer head = c.answer(true);
  EXPECT_EQ(head.status, 200);
  EXPECT_GT(std::stoul(head.headers["content-length"]), 10u);  // the GET's length, no body sent
  Client::Answer get_health = c.answer();
  EXPECT_EQ(get_health.status, 200);
  EXPECT_EQ(nlohmann::json::parse(get_health.body)["status"], "ok");
  Client::Answer head_post = c.answer(true);
  EXPECT_EQ(head_post.status, 405);
  EXPECT_EQ(head_post.headers["allow"], "POST");
  Client::Answer echo = c.answer();
  EXPECT_EQ(echo.status, 200);
  EXPECT_EQ(nlohmann::json::parse(echo.body)["echo"], "after");
  for (const Client::Answer* a : {&head, &get_health, &head_post, &echo}) {
    const std::string& date = a->headers.at("date");  // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    EXPECT_EQ(date.size(), 29u) << date;
    EXPECT_EQ(date.substr(25), " GMT") << date;
  }
}

// "100 Continue" only to HTTP/1.1 and only once the route takes the body: a request the route
// refuses gets its final answer instead, and its body is never read.
TEST(HttpServer, ContinueOnlyWhenTheRouteTakesTheBody) {
  TestServer s;
  const std::string json = R"({"text":"continued"})";
  {
    Client c(s.port);
    c.send("POST /api/nope HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
           "Content-Length: 1000000\r\n\r\n");
    Client::Answer a = c.answer();
    EXPECT_EQ(a.status, 404);
    EXPECT_EQ(a.headers["connection"], "close");
  }
  {
    Client c(s.port);
    c.send(
        "POST /api/embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    EXPECT_EQ(c.answer().status, 415);
  }
  {
    Client c(s.port);
    c.send("POST /api/embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
           "Content-Length: " +
           std::to_string(json.size()) + "\r\n\r\n");
    Client::Answer interim = c.answer();
    EXPECT_EQ(interim.status, 100);
    EXPECT_EQ(c.in, "");
    c.send(json);
    Client::Answer a = c.answer();
    EXPECT_EQ(a.status, 200);
    EXPECT_EQ(nlohmann::json::parse(a.body)["echo"], "continued");
  }
  {
    Client c(s.port, 0.5);
    c.send("POST /api/embed HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
           "Content-Length: " +
           std::to_string(json.size()) + "\r\n\r\n");
    c.read_until([] { return false; });
    EXPECT_EQ(c.in, "");  // no 100 Continue for HTTP/1.0 (RFC 9110 10.1.1): the server waits for the body
    c.send(json);
    EXPECT_EQ(c.answer().status, 200);
  }
}

// At --max-connections the connection idle longest is closed to admit a newcomer; when none is
// idle, the newcomer is answered 503 (with Retry-After) and closed.
TEST(HttpServer, TheConnectionCapAnswers) {
  HttpOptions o;
  o.max_connections = 3;
  TestServer s(o);
  std::vector<std::unique_ptr<Client>> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(std::make_unique<Client>(s.port, 2));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // in order of age
  }
  Client newcomer(s.port);
  newcomer.send(get("/health"));
  EXPECT_EQ(newcomer.answer().status, 200);
  EXPECT_TRUE(idle[0]->eof_now());  // the oldest idle one made room
  idle.clear();
  newcomer.send(get("/health", "localhost", "Connection: close\r\n"));
  EXPECT_EQ(newcomer.answer().status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the server has seen those closes
  std::vector<std::unique_ptr<Client>> busy;
  for (int i = 0; i < 3; ++i) {  // half-way through their requests: not idle
    busy.push_back(std::make_unique<Client>(s.port));
    busy.back()->send("GET /health HTTP/1.1\r\nHost: localhost\r\n");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Client refused(s.port);
  refused.send(get("/health"));
  Client::Answer a = refused.answer();
  EXPECT_EQ(a.status, 503);
  EXPECT_EQ(a.headers["retry-after"], "1");
  EXPECT_EQ(a.headers["connection"], "close");
  EXPECT_NE(a.body.find("--max-connections"), std::string::npos) << a.body;
  EXPECT_TRUE(refused.eof_now());
  for (auto& b : busy) {  // the three are still served
    b->send("Connection: close\r\n\r\n");
    EXPECT_EQ(b->answer().status, 200);
  }
  busy.clear();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(metric(s.port, "vlmo_connections_closed_idle_total"), 1);
  EXPECT_EQ(metric(s.port, "vlmo_connections_refused_total"), 1);
}

// Request bodies share --max-inflight-mb: a body that would pass it is answered 503 with
// Retry-After (before its bytes when its declared length cannot fit), and what a request held is
// given back once it is answered. (A 4 MiB body holds 4 MiB once 3 MiB have come, its buffer
// doubling; while it moves from 2 to 4 MiB both count: 6 MiB, within 7.)
TEST(HttpServer, RequestBodiesShareOneBudget) {
  HttpOptions o;
  o.max_body_bytes = 4 << 20;
  o.max_inflight_bytes = 7 << 20;
  TestServer s(o);
  const std::string big = R"({"text":")" + std::string((4 << 20) - 12, 'a') + R"("})";
  const std::string head = "POST /api/embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: " +
                           std::to_string(big.size()) + "\r\n\r\n";
  Client first(s.port);
  first.send(head + big.substr(0, 3 << 20));  // 3 MiB in, held while the rest is awaited
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_GE(metric(s.port, "vlmo_request_body_bytes"), 3 << 20);
  Client second(s.port);
  second.send(head);
  Client::Answer refused = second.answer();
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.headers["retry-after"], "1");
  EXPECT_NE(refused.body.find("--max-inflight-mb"), std::string::npos) << refused.body;
  first.send(big.substr(3 << 20));
  Client::Answer done = first.answer();
  EXPECT_EQ(done.status, 200) << done.body;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(metric(s.port, "vlmo_request_body_bytes"), 0);  // given back
  Client third(s.port);
  third.send(head + big);
  EXPECT_EQ(third.answer().status, 200);
  EXPECT_EQ(metric(s.port, "vlmo_bodies_refused_total"), 1);
}

// When every request thread is taken, only a bounded number of requests wait for one; beyond,
// 503 at once. Those that waited are answered when a thread is free.
TEST(HttpServer, RequestsWaitingForAThreadAreBounded) {
  HttpOptions o;
  o.http_threads = 1;  // 4 may wait
  TestServer s(o);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 6; ++i) {  // one in the thread, four waiting, one too many
    clients.push_back(std::make_unique<Client>(s.port));
    clients.back()->send(post("/api/itm", R"({"text":")" + std::to_string(i) + R"("})"));
    if (i == 0)
      while (s.gate.waiting == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // all have arrived
  s.gate.release();
  int ok = 0, busy = 0;
  for (auto& c : clients) {
    Client::Answer a = c->answer();
    if (a.status == 200) ++ok;
    if (a.status == 503 && a.headers["retry-after"] == "1") ++busy;
  }
  EXPECT_EQ(ok, 5);
  EXPECT_EQ(busy, 1);
  EXPECT_EQ(metric(s.port, "vlmo_pending_refused_total"), 1);
}

// The access log goes to a pipe nobody reads: serving goes on, the lines that did not fit are
// counted, and the stop does not wait on the pipe.
TEST(HttpServer, ALogNobodyReadsNeverStopsServing) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  HttpOptions o;
  o.log_fd = fds[1];
  o.log_queue = 64;
  TestServer s(o);
  int ok = 0;
  Client c(s.port);
  for (int i = 0; i < 2000; ++i) {  // ~100 bytes of log each: 200 KB for a 64 KiB pipe and 64 lines of queue
    c.send(get("/health"));
    ok += c.answer().status == 200;
  }
  EXPECT_EQ(ok, 2000);
  EXPECT_GT(metric(s.port, "vlmo_access_log_dropped_total"), 0);
  const double took = s.stop();
  EXPECT_LT(took, 5.0);
  ::close(fds[0]);
  ::close(fds[1]);
}

#if defined(__SANITIZE_ADDRESS__)
#define VLMO_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
#define VLMO_SANITIZED 1
#endif
#endif

// An allocation that fails while a connection's body is read (the process at its address-space
// limit) answers that connection 503 and closes it; the server goes on serving.
TEST(HttpServer, AFailedAllocationAnswersOnlyThatConnection) {
#ifdef VLMO_SANITIZED
  GTEST_SKIP() << "the sanitizers' allocators abort on a failed allocation";
#else
  HttpOptions o;
  o.max_body_bytes = 256 << 20;
  o.max_inflight_bytes = 512 << 20;
  TestServer s(o);
  const std::string big = R"({"text":")" + std::string(200 << 20, 'a') + R"("})";
  const std::string request = post("/api/embed", big);
  Client c(s.port, 30);
  c.in.reserve(1 << 20);
  // The address space as it is, plus 64 MiB: the body's buffer cannot grow to 200 MiB.
  size_t vm_kb = 0;
  {
    std::FILE* f = std::fopen("/proc/self/status", "r");
    ASSERT_NE(f, nullptr);
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmSize:", 7) == 0) vm_kb = std::strtoull(line + 7, nullptr, 10);
    std::fclose(f);
  }
  // The request goes from a thread of its own (made before the limit): the answer comes while
  // the client is still sending, and the server cuts the rest off.
  std::promise<void> go;
  std::thread sender([&, started = go.get_future().share()] {
    started.wait();
    c.send(request);
  });
  rlimit before{};
  getrlimit(RLIMIT_AS, &before);
  rlimit tight = before;
  tight.rlim_cur = (vm_kb << 10) + (64u << 20);
  ASSERT_EQ(setrlimit(RLIMIT_AS, &tight), 0);
  go.set_value();
  Client::Answer a = c.answer();
  setrlimit(RLIMIT_AS, &before);
  sender.join();
  EXPECT_EQ(a.status, 503);
  EXPECT_NE(a.body.find("out of memory"), std::string::npos) << a.body;
  EXPECT_EQ(a.headers["connection"], "close");
  Client next(s.port);
  next.send(post("/api/embed", R"({"text":"still here"})"));
  Client::Answer b = next.answer();
  EXPECT_EQ(b.status, 200);
  EXPECT_EQ(nlohmann::json::parse(b.body)["echo"], "still here");
#endif
}
