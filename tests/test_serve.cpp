// src/serve/: the batcher, the metrics, data: URLs, image lookup in a served collection, the
// HTTP request reader (Beast's parser with the server's rules), its limits and the body budget,
// the routes' checks, and the request -> answer handling of the service, without sockets
// (tests/test_serve_http.cpp and tests/serve_test.py drive the server).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include "serve/answer_agreement.h"
#include "serve/batcher.h"
#include "serve/body_budget.h"
#include "serve/data_url.h"
#include "serve/http_request.h"
#include "serve/images.h"
#include "serve/metrics.h"
#include "serve/openai_api.h"
#include "serve/refusal.h"
#include "serve/routes.h"
#include "serve/service.h"
#include "test_util.h"
#include "vlmo/image.h"

using namespace vlmo;
using namespace vlmo::serve;
using vlmo::test::expect_error;

namespace {

// A task that answers each request with its text and records the batches it ran.
struct RecordingTask {
  Task task;
  std::mutex mu;
  std::vector<std::vector<std::string>> batches;
  explicit RecordingTask(const std::string& name) {
    task.name = name;
    task.fields = {"text"};
    task.prepare = [](const nlohmann::json& r) { return Prepared{{}, {}, r["text"].get<std::string>()}; };
    task.run = [this](const std::vector<Prepared>& in) {
      std::vector<std::string> texts;
      std::vector<Answer> out;
      for (const auto& p : in) texts.push_back(p.text), out.push_back({{{"echo", p.text}}, p.text});
      std::lock_guard<std::mutex> lock(mu);
      batches.push_back(texts);
      return out;
    };
  }
};

// The kind of Refusal `f` throws; -1 when it throws none.
int refusal_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Refusal& r) {
    return static_cast<int>(r.kind);
  }
  return -1;
}
constexpr int kBadRequest = static_cast<int>(RefusalKind::kBadRequest);
constexpr int kNotFound = static_cast<int>(RefusalKind::kNotFound);
constexpr int kBusy = static_cast<int>(RefusalKind::kBusy);
constexpr int kStopping = static_cast<int>(RefusalKind::kStopping);

}  // namespace

// Requests queued before the model thread starts: the oldest request's task runs first with every
// queued request of that task (up to max_batch), each task's requests in the order they came.
TEST(Batcher, BatchesOneTaskInArrivalOrderOldestTaskFirst) {
  Metrics metrics;
  Batcher batcher(16, 3, std::chrono::microseconds(0), metrics);
  RecordingTask a("a"), b("b");
  std::vector<std::future<Answer>> answers;
  for (const auto& [task, text] : std::vector<std::pair<RecordingTask*, std::string>>{
           {&b, "b1"}, {&a, "a1"}, {&b, "b2"}, {&a, "a2"}, {&b, "b3"}, {&b, "b4"}, {&a, "a3"}})
    answers.push_back(batcher.submit(task->task, Prepared{{}, {}, text}));
  EXPECT_EQ(batcher.depth(), 7u);
  std::thread model([&] { batcher.run(); });
  const std::vector<std::string> expected = {"b1", "a1", "b2", "a2", "b3", "b4", "a3"};
  for (size_t i = 0; i < answers.size(); ++i) EXPECT_EQ(answers[i].get().fields["echo"], expected[i]);
  batcher.stop();
  model.join();
  // b was oldest: b1 b2 b3 (max_batch 3); then a (now oldest): a1 a2 a3; then b4.
  EXPECT_EQ(b.batches, (std::vector<std::vector<std::string>>{{"b1", "b2", "b3"}, {"b4"}}));
  EXPECT_EQ(a.batches, (std::vector<std::vector<std::string>>{{"a1", "a2", "a3"}}));
  const nlohmann::json s = metrics.summary();
  EXPECT_EQ(s["batches"], 3);
  EXPECT_EQ(s["max_batch_size"], 3);
}

TEST(Batcher, FullQueueAndStoppingAreRefusedAndQueuedWorkFinishes) {
  Metrics metrics;
  Batcher batcher(2, 8, std::chrono::microseconds(0), metrics);
  RecordingTask a("a");
  auto f1 = batcher.submit(a.task, Prepared{{}, {}, "1"});
  auto f2 = batcher.submit(a.task, Prepared{{}, {}, "2"});
  EXPECT_EQ(refusal_of([&] { batcher.submit(a.task, Prepared{{}, {}, "3"}); }), kBusy);
  EXPECT_EQ(metrics.summary()["rejected_queue_full"], 1);
  batcher.stop();  // before the model thread runs: what was accepted is still answered
  EXPECT_EQ(refusal_of([&] { batcher.submit(a.task, Prepared{{}, {}, "4"}); }), kStopping);
  std::thread model([&] { batcher.run(); });
  EXPECT_EQ(f1.get().fields["echo"], "1");
  EXPECT_EQ(f2.get().fields["echo"], "2");
  model.join();
}

TEST(Batcher, AFailingBatchFailsEachOfItsRequests) {
  Metrics metrics;
  Batcher batcher(8, 8, std::chrono::microseconds(0), metrics);
  Task broken{"broken", {}, {}, [](const std::vector<Prepared>&) -> std::vector<Answer> { throw Error("model failed"); }};
  Task short_answers{"short", {}, {}, [](const std::vector<Prepared>&) { return std::vector<Answer>(1); }};
  auto f1 = batcher.submit(broken, {});
  auto f2 = batcher.submit(broken, {});
  auto f3 = batcher.submit(short_answers, {});
  auto f4 = batcher.submit(short_answers, {});
  std::thread model([&] { batcher.run(); });
  expect_error([&] { f1.get(); }, {"model failed"});
  expect_error([&] { f2.get(); }, {"model failed"});
  expect_error([&] { f3.get(); }, {"answered 1 of 2 requests"});
  expect_error([&] { f4.get(); }, {"answered 1 of 2 requests"});
  batcher.stop();
  model.join();
}

TEST(Metrics, PrometheusTextCountsAndCumulativeBuckets) {
  Metrics m;
  m.request("/api/vqa", 200, 3);      // bucket 5 ms
  m.request("/api/vqa", 200, 30);     // bucket 50 ms
  m.request("/api/vqa", 400, 20000);  // above every bucket
  m.request("/health", 200, 1);
  m.batch(2);
  const std::string t = m.prometheus(1, 64);
  for (const char* line :
       {"vlmo_requests_total{endpoint=\"/api/vqa\",status=\"200\"} 2\n",
        "vlmo_requests_total{endpoint=\"/api/vqa\",status=\"400\"} 1\n", "vlmo_request_errors_total{endpoint=\"/api/vqa\"} 1\n",
        "vlmo_request_errors_total{endpoint=\"/health\"} 0\n",
        "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"0.005\"} 1\n",
        "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"0.025\"} 1\n",
        "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"0.05\"} 2\n",
        "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"10\"} 2\n",
        "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"+Inf\"} 3\n",
        "vlmo_request_duration_seconds_count{endpoint=\"/api/vqa\"} 3\n", "vlmo_batches_total 1\n",
        "vlmo_batched_requests_total 2\n", "vlmo_queue_depth 1\n", "vlmo_queue_capacity 64\n",
        "# TYPE vlmo_request_duration_seconds histogram\n"})
    EXPECT_NE(t.find(line), std::string::npos) << line << "\nin:\n" << t;
  const nlohmann::json s = m.summary();
  EXPECT_EQ(s["requests"], 4);
  EXPECT_EQ(s["errors"], 1);
  EXPECT_DOUBLE_EQ(s["latency_ms_p50"].get<double>(), 30);  // sorted 1, 3, 30, 20000: index 2
  EXPECT_DOUBLE_EQ(s["latency_ms_p99"].get<double>(), 20000);
  EXPECT_DOUBLE_EQ(s["mean_batch_size"].get<double>(), 2);
}

TEST(DataUrl, Base64AndTheDataScheme) {
  EXPECT_EQ(base64_decode("TWFu", 0), "Man");
  EXPECT_EQ(base64_decode("xxTWE=", 2), "Ma");
  EXPECT_EQ(base64_decode("TW\nE=", 0), "Ma");
  EXPECT_EQ(base64_decode("", 0), "");
  EXPECT_EQ(data_url_bytes("data:image/png;base64,aGVsbG8="), "hello");
  EXPECT_TRUE(is_data_url("DATA:image/png;base64,aGVsbG8="));  // schemes are case-insensitive
  EXPECT_EQ(data_url_bytes("Data:image/png;base64,aGVsbG8="), "hello");
  EXPECT_EQ(data_url_bytes("DATA:image/png;BASE64,aGVsbG8="), "hello");
  EXPECT_FALSE(is_data_url("dat"));
  EXPECT_EQ(refusal_of([] { base64_decode("TW*u", 0); }), kBadRequest);
  expect_error([] { base64_decode("TW*u", 0, "image0"); }, {"\"image0\": not valid base64 at character 2"});
  expect_error([] { data_url_bytes("data:image/png,plain"); }, {"must be base64"});
}

TEST(ServedImages, IdsResolveBesideTheIndexAndShardMembersAreRead) {
  namespace fs = std::filesystem;
  const std::string dir = test::temp_dir();
  const std::string png = test::read_file(test::fixture("images/camera.png"));
  fs::create_directories(dir + "/pics");
  test::write_file(dir + "/pics/a.png", png);
  std::string tar;
  test::tar_add(tar, "x/1.png", png);
  tar.append(1024, '\0');
  test::write_file(dir + "/pics/s.tar", tar);
  const std::string index = dir + "/index.safetensors";
  // Ids as `vlmo embed` wrote them, relative to where it ran: found beside the index.
  EXPECT_EQ(resolve_collection_file("pics/a.png", index), dir + "/pics/a.png");
  EXPECT_EQ(resolve_collection_file("pics/s.tar/x/1.png", index), dir + "/pics/s.tar/x/1.png");
  EXPECT_EQ(resolve_collection_file("nowhere/b.png", index), "nowhere/b.png");
  ServedImages images(40'000'000, 16384);
  images.set_collection({"pics/a.png", "pics/s.tar/x/1.png", "pics/s.tar/x/2.png"}, index);
  EXPECT_EQ(images.bytes("pics/a.png"), png);
  EXPECT_EQ(images.bytes("pics/s.tar/x/1.png"), png);
  EXPECT_EQ(refusal_of([&] { images.bytes("pics/s.tar/x/2.png"); }), kNotFound);  // listed, not in the shard
  EXPECT_EQ(refusal_of([&] { images.bytes("../etc/passwd"); }), kNotFound);       // not an id of the collection
  EXPECT_EQ(refusal_of([&] { images.tensor("/etc/passwd", 32); }), kBadRequest);  // never a server path
  const at::Tensor t = images.tensor("pics/a.png", 32);
  EXPECT_EQ(t.sizes(), (at::IntArrayRef{3, 32, 32}));
  EXPECT_EQ(image_content_type("x.png"), "image/png");
  EXPECT_EQ(image_content_type("x.tar/y.webp"), "image/webp");
  EXPECT_EQ(image_content_type("x.jpg"), "image/jpeg");
}

TEST(Service, AnswersCheckTheBodyAndNameUnavailableTasks) {
  Service svc(40'000'000);
  RecordingTask echo("echo");
  svc.add_task("echo", "model.safetensors", echo.task);
  svc.set_unavailable("vqa", "the model has no \"vqa\" head");
  Metrics metrics;
  Batcher batcher(8, 4, std::chrono::microseconds(0), metrics);
  std::thread model([&] { batcher.run(); });
  EXPECT_EQ(svc.answer("echo", R"({"text": "hi"})", batcher)["echo"], "hi");
  EXPECT_EQ(refusal_of([&] { svc.answer("echo", "{not json", batcher); }), kBadRequest);
  EXPECT_EQ(refusal_of([&] { svc.answer("echo", R"({"text": 3})", batcher); }), kBadRequest);
  EXPECT_EQ(refusal_of([&] { svc.answer("echo", R"([1])", batcher); }), kBadRequest);
  expect_error([&] { svc.answer("vqa", "{}", batcher); }, {"/api/vqa is not available: the model has no \"vqa\" head"});
  EXPECT_EQ(refusal_of([&] { svc.answer("nlvr2", "{}", batcher); }), kNotFound);
  batcher.stop();
  model.join();
  const nlohmann::json d = svc.describe();
  EXPECT_EQ(d["tasks"]["echo"], "model.safetensors");
  EXPECT_EQ(d["unavailable"]["vqa"], "the model has no \"vqa\" head");
  EXPECT_FALSE(d.contains("collection"));
}

namespace {

// Feeds `bytes` in pieces of `step` (a slow client's reads) as the server does: what the parser
// has not used is given again with the next piece. Returns the parser.
RequestParser parse(const std::string& bytes, HttpLimits limits = {}, size_t step = 1 << 20, BodyBudget* budget = nullptr) {
  RequestParser p(limits, budget);
  std::string in;
  size_t at = 0;
  while (!p.done() && !p.failed()) {
    if (at < bytes.size()) {
      in.append(bytes, at, std::min(step, bytes.size() - at));
      at = std::min(bytes.size(), at + step);
    }
    const size_t used = p.feed(in.data(), in.size());
    in.erase(0, used);
    if (used == 0 && at >= bytes.size()) break;  // it needs more than there is
  }
  return p;
}

// The status a request is refused with (0: none), the request complete or not.
int refusal_status(const std::string& bytes, HttpLimits limits = {}, size_t step = 1 << 20) {
  const RequestParser p = parse(bytes, limits, step);
  return p.failed() ? p.error_status() : 0;
}

std::string post_of(const std::string& body, const std::string& extra = "") {
  return "POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

// Requests arrive whole or a byte at a time; a chunked body is reassembled (its trailer is not a
// header); a pipelined second request is left for the next parse; the path and query are
// percent-decoded; the parser stops at the end of the head so the server can refuse the body.
TEST(HttpRequest, ParsesHeadBodyChunksAndQuery) {
  for (const size_t step : {size_t{1}, size_t{7}, size_t{1} << 20}) {
    RequestParser p = parse(post_of(R"({"text": "hi"})"), {}, step);
    ASSERT_TRUE(p.done()) << step;
    const HttpRequest r = p.take();
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.path, "/api/echo");
    EXPECT_EQ(r.host, "127.0.0.1");
    EXPECT_EQ(r.body, R"({"text": "hi"})");
    EXPECT_EQ(*r.header("content-type"), "application/json");
    EXPECT_TRUE(r.keep_alive);
  }
  RequestParser c = parse(
      "POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nHost: evil\r\n\r\n",
      {}, 3);
  ASSERT_TRUE(c.done());
  EXPECT_EQ(c.request().body, "Wikipedia");
  EXPECT_EQ(c.request().host, "localhost");
  EXPECT_EQ(c.request().headers.size(), 2u);  // the trailer's field is not among the headers
  const std::string two =
      "GET /api/image?id=gallery%2Fa%20b.png&x=1+2 HTTP/1.0\r\nHost: [::1]:8080\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  RequestParser g;
  const size_t used = g.feed(two.data(), two.size());
  ASSERT_TRUE(g.done());
  EXPECT_EQ(two.substr(used), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(g.request().query.at("id"), "gallery/a b.png");
  EXPECT_EQ(g.request().query.at("x"), "1 2");
  EXPECT_EQ(g.request().host, "[::1]");
  EXPECT_EQ(g.request().version, 10);
  EXPECT_FALSE(g.request().keep_alive);  // HTTP/1.0
  // The head first: the body is read only when fed again.
  const std::string post = post_of(R"({"text": "hi"})");
  RequestParser h;
  const size_t head = h.feed(post.data(), post.size());
  EXPECT_TRUE(h.head_done());
  EXPECT_TRUE(h.body_to_come());
  EXPECT_EQ(post.substr(head), R"({"text": "hi"})");
  EXPECT_EQ(h.feed(post.data() + head, post.size() - head), post.size() - head);
  EXPECT_TRUE(h.done());
  // Expect: 100-continue on HTTP/1.1 only (an HTTP/1.0 client's expectation is ignored).
  EXPECT_TRUE(parse("POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").expects_continue());
  EXPECT_FALSE(parse("POST /a HTTP/1.0\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").expects_continue());
  EXPECT_EQ(refusal_status("POST /a HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n"), 417);
  // Connection is a list, read from every Connection header.
  EXPECT_FALSE(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nConnection: bar, close\r\n\r\n").request().keep_alive);
  EXPECT_TRUE(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: notclose\r\n\r\n").request().keep_alive);
  EXPECT_TRUE(parse("GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n").request().keep_alive);
  // An absolute-form target names the host; its Host header is then not what counts (RFC 9112 3.2.2).
  RequestParser abs = parse("GET http://LocalHost:8080/health?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
  ASSERT_TRUE(abs.done());
  EXPECT_EQ(abs.request().path, "/health");
  EXPECT_EQ(abs.request().query.at("x"), "1");
  EXPECT_EQ(abs.request().host, "localhost");
  EXPECT_EQ(parse("GET https://127.0.0.1 HTTP/1.1\r\nHost: h\r\n\r\n").request().path, "/");
}

// Every framing that a proxy in front could read differently is refused with 400 (the server
// then closes the connection): Transfer-Encoding other than one final "chunked" (given twice, a
// coding after it, on HTTP/1.0, with Content-Length), a bare LF ending a head, chunk-size,
// chunk-data or trailer line, blanks before a chunk size, control characters in header values, no
// Host or two, a target that is neither a path nor an http URL.
TEST(HttpRequest, AmbiguousFramingIsRefused) {
  const std::string te = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"chunked then identity",
       "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"},
      {"chunked, identity", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n"},
      {"chunked twice", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"},
      {"gzip alone", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"},
      {"empty coding", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n"},
      {"TE on HTTP/1.0", "POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
      {"TE and Content-Length", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"},
      {"Content-Length and TE", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"},
      {"gzip and Content-Length", "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd"},
      {"two Content-Lengths", "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"},
      {"bare LF in the head", "GET / HTTP/1.1\nHost: h\n\n"},
      {"bare LF after a header", "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n"},
      {"bare LF ends a chunk size", te + "4\nWiki\r\n0\r\n\r\n"},
      {"bare LF ends chunk data", te + "4\r\nWiki\n0\r\n\r\n"},
      {"bare LF ends a trailer", te + "0\r\nT: v\n\r\n\r\n"},
      {"blank before a chunk size", te + " 4\r\nWiki\r\n0\r\n\r\n"},
      {"tab before a chunk size", te + "\t4\r\nWiki\r\n0\r\n\r\n"},
      {"CR in a header value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"},
      {"NUL in a header value", std::string("GET / HTTP/1.1\r\nHost: h\r\nX: a") + '\0' + "b\r\n\r\n"},
      {"control character in a header value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n"},
      {"DEL in a header value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n"},
      {"no Host", "GET / HTTP/1.1\r\n\r\n"},
      {"no Host on HTTP/1.0", "GET / HTTP/1.0\r\n\r\n"},
      {"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"},
      {"Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"},
      {"Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"},
      {"empty Host", "GET / HTTP/1.1\r\nHost: \r\n\r\n"},
      {"authority-form target", "GET 127.0.0.1:80 HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"asterisk-form target", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"userinfo in an absolute target", "GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"space in a header name", "GET / HTTP/1.1\r\nHost: h\r\nX Y: z\r\n\r\n"},
      {"line folding in a header name", "GET / HTTP/1.1\r\n Host: h\r\n\r\n"},
  };
  for (const auto& [what, bytes] : cases)
    for (const size_t step : {size_t{1}, size_t{1} << 20})
      EXPECT_EQ(refusal_status(bytes, {}, step), 400) << what << ", step " << step;
  // A coding before the final chunked is not one this server decodes: 501 (RFC 9112 6.1).
  EXPECT_EQ(refusal_status("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 501);
  EXPECT_EQ(
      refusal_status("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
      501);
}

// Each limit answers its status as soon as it is passed, without taking in the rest: a body
// larger than the limit by its Content-Length (before any of it) or chunk by chunk; a long URI;
// too many headers; a head too large; a chunk line or trailer section too large; a malformed
// request line or chunk; another HTTP version.
TEST(HttpRequest, LimitsRefuseAsSoonAsPassed) {
  HttpLimits small;
  small.max_body_bytes = 100;
  small.max_headers = 5;
  small.max_head_bytes = 1024;
  small.max_uri_bytes = 256;
  auto status = [&](const std::string& bytes, size_t step = 1 << 20) {
    const RequestParser p = parse(bytes, small, step);
    return p.failed() ? p.error_status() : p.done() ? 200 : 0;
  };
  EXPECT_EQ(status("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n"), 413);
  EXPECT_EQ(status(post_of(std::string(100, 'a'))), 200);
  // Chunked: refused at the chunk that passes the limit, with gigabytes still to come, holding
  // no more than the chunks that came (the budget counts what the body took).
  std::string chunked = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 2; ++i) chunked += "28\r\n" + std::string(40, 'x') + "\r\n";
  BodyBudget budget(1 << 20);
  RequestParser big = parse(chunked + "40000000\r\n", small, 9, &budget);
  EXPECT_TRUE(big.failed());
  EXPECT_EQ(big.error_status(), 413);
  EXPECT_LE(budget.used(), 100u);
  EXPECT_GT(budget.used(), 0u);
  EXPECT_EQ(status("GET /" + std::string(300, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n", 16), 414);
  EXPECT_EQ(status("GET /" + std::string(5000, 'a'), 64), 414);  // refused before the line ends
  std::string many = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 5; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
  EXPECT_EQ(status(many + "\r\n"), 431);
  EXPECT_EQ(status("GET / HTTP/1.1\r\nX: " + std::string(2000, 'v'), 100), 431);
  EXPECT_EQ(status(chunked + "1;" + std::string(2000, 'e'), 100), 431);        // a chunk line without end
  EXPECT_EQ(status(chunked + "0\r\nT: " + std::string(2000, 't'), 100), 431);  // a trailer without end
  EXPECT_EQ(status("BAD\r\n\r\n"), 400);
  EXPECT_EQ(status("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
  EXPECT_EQ(status("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), 400);
  EXPECT_EQ(status("GET noslash HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  EXPECT_EQ(status("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"), 400);
  EXPECT_EQ(status("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 400);
  EXPECT_EQ(status("GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}

// No buffer is sized from a declared length: a body takes (and the budget is charged) what has
// arrived, doubling; past the budget the request is refused 503, and a declared length larger than
// what is left is refused before its bytes come. Everything is given back when the request goes.
TEST(HttpRequest, BodiesAreChargedToTheBudgetAsTheyArrive) {
  BodyBudget budget(1 << 20);
  HttpLimits limits;
  limits.max_body_bytes = 1 << 20;
  const std::string head = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n";
  RequestParser p(limits, &budget);
  EXPECT_EQ(p.feed(head.data(), head.size()), head.size());
  EXPECT_EQ(budget.used(), 0u);  // a declared million bytes, none arrived: nothing taken
  const std::string piece(1000, 'x');
  p.feed(piece.data(), piece.size());
  EXPECT_GE(budget.used(), 1000u);
  EXPECT_LE(budget.used(), 2048u);
  RequestParser q(limits, &budget);  // a second body of a million: does not fit beside the first's growth
  const std::string head2 = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  q.feed(head2.data(), head2.size());
  const std::string chunk = "F4240\r\n" + std::string(1000000, 'y') + "\r\n0\r\n\r\n";
  for (size_t at = 0, used = 1; at < chunk.size() && used > 0 && !q.failed() && !q.done(); at += used)
    used = q.feed(chunk.data() + at, std::min<size_t>(65536, chunk.size() - at));
  for (int i = 0; i < 999 && !p.failed(); ++i) p.feed(piece.data(), piece.size());
  EXPECT_TRUE(q.failed() || p.failed());
  const RequestParser& refused = q.failed() ? q : p;
  EXPECT_EQ(refused.error_status(), 503);
  EXPECT_NE(refused.error().find("--max-inflight-mb"), std::string::npos) << refused.error();
  EXPECT_LE(budget.used(), budget.limit());
  EXPECT_EQ(refusal_status("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", limits), 413);
  // Declared larger than what is left now: refused at the head.
  RequestParser r(limits, &budget);
  const std::string head3 =
      "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: " + std::to_string(budget.limit() - budget.used() + 1) + "\r\n\r\n";
  r.feed(head3.data(), head3.size());
  EXPECT_EQ(r.error_status(), 503);
  p = RequestParser();
  q = RequestParser();
  EXPECT_EQ(budget.used(), 0u);
  // A complete body keeps its share with the request until the request goes.
  {
    RequestParser s = parse(post_of(std::string(5000, 'z')), limits, 1 << 20, &budget);
    ASSERT_TRUE(s.done());
    const HttpRequest req = s.take();
    EXPECT_EQ(budget.used(), req.lease.held());
    EXPECT_EQ(req.lease.held(), 5000u);  // the declared length bounds the last doubling
  }
  EXPECT_EQ(budget.used(), 0u);
}

TEST(HttpRequest, Utf8AndJsonNesting) {
  EXPECT_TRUE(valid_utf8("plain ascii"));
  EXPECT_TRUE(valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  size_t bad = 0;
  EXPECT_FALSE(valid_utf8("ab\xff", &bad));
  EXPECT_EQ(bad, 2u);
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));      // overlong '/'
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));  // a surrogate
  EXPECT_FALSE(valid_utf8("\xe2\x82"));      // cut short
  EXPECT_EQ(json_nesting(R"({"a": [1, {"b": "[[[[["}]})", 10), 3u);
  EXPECT_EQ(json_nesting(std::string(1 << 20, '['), 32), 33u);
}

// Before a request reaches a task: GET-only and POST-only routes answer 405, a POST must be JSON
// (415: a form or text/plain body, which a page of any site can send) and any Origin must be this
// server (403); invalid UTF-8 and deep nesting are 400s naming the problem; every answer is JSON.
TEST(Routes, ChecksBeforeTheTaskAndJsonAnswers) {
  Service svc(40'000'000);
  RecordingTask echo("echo");
  svc.add_task("embed", "model.safetensors", echo.task);
  Metrics metrics;
  Batcher batcher(8, 4, std::chrono::microseconds(0), metrics);
  std::thread model([&] { batcher.run(); });
  const Routes routes(svc, {{"path", "model.safetensors"}}, batcher, metrics, 4, "");
  auto answer = [&](const std::string& bytes, std::string* endpoint = nullptr) {
    RequestParser p = parse(bytes);
    EXPECT_TRUE(p.done()) << bytes.substr(0, 80);
    std::string e;
    const HttpResponse r = routes.handle(p.take(), e);
    if (endpoint) *endpoint = e;
    if (r.content_type == "application/json") EXPECT_TRUE(nlohmann::json::accept(r.body)) << r.body;
    return r;
  };
  auto body = [](const std::string& s) { return "POST /api/embed HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + s; };
  std::string endpoint;
  const HttpResponse ok =
      answer(body("Content-Type: application/json; charset=utf-8\r\nContent-Length: 13\r\n\r\n{\"text\":\"hi\"}"), &endpoint);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(nlohmann::json::parse(ok.body)["echo"], "hi");
  EXPECT_EQ(endpoint, "/api/embed");
  EXPECT_EQ(answer(body("Content-Type: text/plain\r\nContent-Length: 13\r\n\r\n{\"text\":\"hi\"}")).status, 415);
  EXPECT_EQ(answer(body("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b")).status, 415);
  EXPECT_EQ(answer(body("Content-Length: 13\r\n\r\n{\"text\":\"hi\"}")).status, 415);
  EXPECT_EQ(
      answer(body("Content-Type: application/json\r\nOrigin: http://evil.example\r\nContent-Length: 13\r\n\r\n{\"text\":\"hi\"}"))
          .status,
      403);
  EXPECT_EQ(answer(body("Content-Type: application/json\r\nOrigin: null\r\nContent-Length: 13\r\n\r\n{\"text\":\"hi\"}")).status,
            403);
  EXPECT_EQ(
      answer(
          body("Content-Type: application/json\r\nOrigin: http://127.0.0.1:8080\r\nContent-Length: 13\r\n\r\n{\"text\":\"hi\"}"))
          .status,
      200);
  const HttpResponse utf = answer(body("Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"text\":\"\xff\"}  "));
  EXPECT_EQ(utf.status, 400);
  EXPECT_NE(utf.body.find("not valid UTF-8"), std::string::npos);
  const std::string deep(100000, '[');
  const HttpResponse nested = answer(body("Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + deep));
  EXPECT_EQ(nested.status, 400);
  EXPECT_NE(nested.body.find("nested deeper than 32"), std::string::npos);
  const HttpResponse id = answer("GET /api/image?id=%FF HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(id.status, 400);
  EXPECT_NE(id.body.find("\\\"id\\\": not valid UTF-8"), std::string::npos) << id.body;
  // A wrong method: 405 with Allow. HEAD is GET without the body (the server drops it), and a
  // HEAD of a POST route is a 405 like any other method.
  const HttpResponse get_post = answer("GET /api/embed HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(get_post.status, 405);
  EXPECT_EQ(*get_post.header("Allow"), "POST");
  const HttpResponse post_get = answer("POST /health HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post_get.status, 405);
  EXPECT_EQ(*post_get.header("Allow"), "GET, HEAD");
  EXPECT_EQ(answer("HEAD /api/vqa HTTP/1.1\r\nHost: h\r\n\r\n").status, 405);
  const HttpResponse head = answer("HEAD /health HTTP/1.1\r\nHost: h\r\n\r\n", &endpoint);
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(endpoint, "/health");
  const HttpResponse missing = answer("GET /nope%FF HTTP/1.1\r\nHost: h\r\n\r\n", &endpoint);
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(endpoint, "other");
  EXPECT_EQ(nlohmann::json::parse(answer("GET /health HTTP/1.1\r\nHost: h\r\n\r\n").body)["model"]["path"], "model.safetensors");
  // Before a body is read: what no body could change is refused from the head alone.
  auto before_body = [&](const std::string& head_bytes) {
    RequestParser p;
    p.feed(head_bytes.data(), head_bytes.size());
    EXPECT_TRUE(p.body_to_come()) << head_bytes;
    std::string e;
    const std::optional<HttpResponse> r = routes.refusal_before_body(p.request(), e);
    return r ? r->status : 0;
  };
  EXPECT_EQ(before_body("POST /nope HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n"), 404);
  EXPECT_EQ(before_body("PUT /api/embed HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n"), 405);
  EXPECT_EQ(before_body("POST /api/embed HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n"), 415);
  EXPECT_EQ(before_body("POST /api/embed HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nOrigin: http://evil\r\n"
                        "Content-Length: 9\r\n\r\n"),
            403);
  EXPECT_EQ(before_body("POST /api/embed HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"), 0);
  batcher.stop();
  model.join();
}

// The one mapping of the core's refusals to HTTP: each kind has its status, the message is the body.
TEST(Routes, EachRefusalKindHasOneStatus) {
  EXPECT_EQ(http_status(RefusalKind::kBadRequest), 400);
  EXPECT_EQ(http_status(RefusalKind::kNotFound), 404);
  EXPECT_EQ(http_status(RefusalKind::kBusy), 503);
  EXPECT_EQ(http_status(RefusalKind::kStopping), 503);
  const HttpResponse r = refused(Refusal(RefusalKind::kBusy, "the server is busy \xff"));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(r.body, "{\"error\":\"the server is busy \xef\xbf\xbd\"}");  // invalid UTF-8 replaced, still JSON
  EXPECT_EQ(*r.header("Retry-After"), "1");
}

// What the serving core refuses (the queue full, the server stopping, no such task or image, a bad
// body or field) reaches the client as the status and the JSON body it always had; the model's own
// failures are 500s. Checked byte for byte: the mapping is the HTTP edge's, the words the core's.
TEST(Routes, CoreRefusalsKeepTheirStatusAndBody) {
  Service svc(40'000'000);
  RecordingTask echo("echo");
  Task picky{"picky", {"text"}, [](const nlohmann::json&) -> Prepared { throw Error("\"text\": too picky"); }, {}};
  Task broken{"broken",
              {"text"},
              [](const nlohmann::json&) { return Prepared{}; },
              [](const std::vector<Prepared>&) -> std::vector<Answer> { throw Error("model failed"); }};
  svc.add_task("embed", "model.safetensors", echo.task);
  svc.add_task("itm", "model.safetensors", picky);
  svc.add_task("search", "model.safetensors", broken);
  const ImageFn image = svc.image_fn();
  Task looks{"nlvr2", {"image"}, [&](const nlohmann::json& r) { return Prepared{image(r["image"], 32), {}, ""}; }, {}};
  svc.add_task("nlvr2", "model.safetensors", looks);
  svc.set_unavailable("vqa", "the model has no \"vqa\" head");
  Metrics metrics;
  auto post = [](const std::string& name, const std::string& json) {
    return "POST /api/" + name +
           " HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(json.size()) +
           "\r\n\r\n" + json;
  };
  auto expect = [](const HttpResponse& r, int status, const std::string& body) {
    EXPECT_EQ(r.status, status) << body;
    EXPECT_EQ(r.content_type, "application/json");
    EXPECT_EQ(r.body, body);
    // A 503 tells the client when to come back; nothing else carries extra headers.
    using Headers = std::vector<std::pair<std::string, std::string>>;
    const Headers want = status == 503 ? Headers{{"Retry-After", "1"}} : Headers{};
    EXPECT_EQ(r.headers, want);
  };
  {
    Batcher full(0, 4, std::chrono::microseconds(0), metrics);  // no room: every request is one too many
    const Routes routes(svc, {}, full, metrics, 4, "");
    auto answer = [&](const std::string& bytes) {
      std::string endpoint;
      return routes.handle(parse(bytes).take(), endpoint);
    };
    expect(answer(post("embed", R"({"text":"hi"})")), 503,
           R"({"error":"the server is busy: 0 requests are waiting (--queue); retry shortly"})");
    expect(answer(post("vqa", "{}")), 404, R"({"error":"/api/vqa is not available: the model has no \"vqa\" head"})");
    expect(answer(post("nlvr2", R"({"image":"/etc/passwd"})")), 400,
           R"({"error":"\"image\": \"/etc/passwd\" is neither an image of the collection nor a data: URL"})");
    expect(answer(post("nlvr2", R"({"image":"data:image/png,plain"})")), 400,
           R"j({"error":"\"image\": a data: URL must be base64 (data:image/png;base64,...)"})j");
    expect(answer(post("nlvr2", R"({"image":"data:image/png;base64,TW*u"})")), 400,
           R"({"error":"\"image\": not valid base64 at character 24"})");
    expect(answer(post("embed", R"({"text":3})")), 400, R"({"error":"expected a string field \"text\""})");
    expect(answer(post("itm", R"({"text":"hi"})")), 400, R"({"error":"\"text\": too picky"})");
    const HttpResponse not_json = answer(post("embed", "{x"));
    EXPECT_EQ(not_json.status, 400);
    EXPECT_EQ(not_json.body.rfind(R"({"error":"request body: not valid JSON ([json.exception.parse_error.101] parse error)", 0),
              0u)
        << not_json.body;
    expect(answer("GET /api/image?id=nope HTTP/1.1\r\nHost: h\r\n\r\n"), 404,
           R"({"error":"no image \"nope\" in the collection"})");
  }
  {
    // Stopping: a request queued when the queue is abandoned, and one that comes after.
    Batcher stopping(8, 4, std::chrono::microseconds(0), metrics);
    const Routes routes(svc, {}, stopping, metrics, 4, "");
    HttpResponse queued;
    std::thread client([&] {
      std::string endpoint;
      queued = routes.handle(parse(post("embed", R"({"text":"hi"})")).take(), endpoint);
    });
    while (stopping.depth() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    stopping.abandon();
    client.join();
    expect(queued, 503, R"({"error":"the server is stopping"})");
    std::string endpoint;
    expect(routes.handle(parse(post("embed", R"({"text":"hi"})")).take(), endpoint), 503,
           R"({"error":"the server is stopping"})");
  }
  {
    Batcher batcher(8, 4, std::chrono::microseconds(0), metrics);
    const Routes routes(svc, {}, batcher, metrics, 4, "");
    std::string endpoint;
    std::thread model([&] { batcher.run(); });
    expect(routes.handle(parse(post("search", R"({"text":"hi"})")).take(), endpoint), 500, R"({"error":"model failed"})");
    batcher.stop();
    model.join();
  }
}

// Requests refused before a route are counted by status but not timed.
TEST(Metrics, RefusedRequestsAreCountedNotTimed) {
  Metrics m;
  m.request("/api/vqa", 200, 12.0);
  m.request("refused", 414, 1.0e7, false);
  const nlohmann::json s = m.summary();
  EXPECT_EQ(s["requests"], 2);
  EXPECT_EQ(s["errors"], 1);
  EXPECT_DOUBLE_EQ(s["latency_ms_p99"].get<double>(), 12.0);
  const std::string text = m.prometheus(0, 1);
  EXPECT_NE(text.find("vlmo_requests_total{endpoint=\"refused\",status=\"414\"} 1"), std::string::npos);
  EXPECT_EQ(text.find("vlmo_request_duration_seconds_count{endpoint=\"refused\""), std::string::npos);
}

// A thin image under the pixel limit is refused from its header when a side passes max_side
// (its resize would build a coefficient table of ~4 taps per pixel of that side), before decoding.
TEST(ServedImages, ThinImagesAreRefusedByTheSideLimit) {
  Image thin;
  thin.width = 20000, thin.height = 1;
  thin.rgb.assign(20000 * 3, 128);
  const std::string url = "data:image/png;base64," + [](const std::string& b) {
    static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < b.size(); i += 3) {
      const uint32_t v =
          (uint8_t(b[i]) << 16) | (i + 1 < b.size() ? uint8_t(b[i + 1]) << 8 : 0) | (i + 2 < b.size() ? uint8_t(b[i + 2]) : 0);
      out += a[(v >> 18) & 63], out += a[(v >> 12) & 63];
      out += i + 1 < b.size() ? a[(v >> 6) & 63] : '=';
      out += i + 2 < b.size() ? a[v & 63] : '=';
    }
    return out;
  }(encode_png(thin));
  const ServedImages limited(40'000'000, 16384), wide(40'000'000, 0);
  expect_error([&] { limited.tensor(url, 32); }, {"20000x1", "longer than the limit of 16384"});
  EXPECT_EQ(wide.tensor(url, 32).sizes().vec(), (std::vector<int64_t>{3, 32, 32}));
}

// The batching promise (serve/answer_agreement.h), on hand-made answers: the ranking of the failing
// Zen 5 load run (near-tied gallery scores swapped by a 4.5e-8 difference) agrees; a real change does not.
TEST(AnswerAgreement, NumbersWithinToleranceAndTiedRanksInEitherOrder) {
  using nlohmann::json;
  using vlmo::serve::answers_agree;
  EXPECT_TRUE(answers_agree(json{{"match_probability", 0.25}}, json{{"match_probability", 0.25 + 1e-5}}));
  EXPECT_FALSE(answers_agree(json{{"match_probability", 0.25}}, json{{"match_probability", 0.25 + 2e-4}}));
  EXPECT_FALSE(answers_agree(json{{"match_probability", 0.25}}, json{{"probability", 0.25}}));

  const json alone = {{"results", json::array({{{"id", "a"}, {"score", -0.137750}},
                                               {{"id", "b"}, {"score", -0.137763}},
                                               {{"id", "c"}, {"score", -0.137778}},
                                               {{"id", "d"}, {"score", -0.137803}},
                                               {{"id", "e"}, {"score", -0.137803}}})}};
  json batched = alone;  // b and c swap (their scores tie within 1e-4), d and e too
  batched["results"][1] = {{"id", "c"}, {"score", -0.1377630}};
  batched["results"][2] = {{"id", "b"}, {"score", -0.1377780}};
  std::swap(batched["results"][3], batched["results"][4]);
  EXPECT_TRUE(answers_agree(alone, batched));
  // At the cut-off an entry may give its place to one that ties with it ...
  json cut = alone;
  cut["results"][4] = {{"id", "f"}, {"score", -0.137804}};
  EXPECT_TRUE(answers_agree(alone, cut));
  // ... but not one clearly above the cut-off (these five scores all tie within 1e-4: another list).
  const json three = {
      {"results", json::array({{{"id", "x"}, {"score", 0.9}}, {{"id", "y"}, {"score", 0.8}}, {{"id", "z"}, {"score", 0.7}}})}};
  json lost = three;
  lost["results"][0]["id"] = "w";
  EXPECT_FALSE(answers_agree(three, lost));
  json replaced_at_cut = three;
  replaced_at_cut["results"][2] = {{"id", "w"}, {"score", 0.6}};
  EXPECT_FALSE(answers_agree(three, replaced_at_cut));
  replaced_at_cut["results"][2]["score"] = 0.70001;  // w ties with z: the cut-off may take either
  EXPECT_TRUE(answers_agree(three, replaced_at_cut));
  const json apart = {{"results", json::array({{{"id", "x"}, {"score", 0.9}}, {{"id", "y"}, {"score", 0.5}}})}};
  const json swapped = {{"results", json::array({{{"id", "y"}, {"score", 0.9}}, {{"id", "x"}, {"score", 0.5}}})}};
  EXPECT_FALSE(answers_agree(apart, swapped));
  const json shorter = {{"results", json::array({{{"id", "x"}, {"score", 0.9}}})}};
  EXPECT_FALSE(answers_agree(apart, shorter));

  // VQA answers rank by probability; a label follows probability_true and may flip only at 0.5.
  const json vqa = {
      {"answers", json::array({{{"answer", "red"}, {"probability", 0.40001}}, {{"answer", "blue"}, {"probability", 0.4}}})}};
  const json vqa_swapped = {
      {"answers", json::array({{{"answer", "blue"}, {"probability", 0.40001}}, {{"answer", "red"}, {"probability", 0.4}}})}};
  EXPECT_TRUE(answers_agree(vqa, vqa_swapped));
  // (Two tied answers: either may also give its place at the cut-off. Apart, a new answer is a change.)
  const json vqa_apart = {
      {"answers", json::array({{{"answer", "red"}, {"probability", 0.7}}, {{"answer", "blue"}, {"probability", 0.2}}})}};
  json vqa_other = vqa_apart;
  vqa_other["answers"][0]["answer"] = "green";
  EXPECT_TRUE(answers_agree(vqa_apart, vqa_apart));
  EXPECT_FALSE(answers_agree(vqa_apart, vqa_other));
  EXPECT_TRUE(
      answers_agree(json{{"label", true}, {"probability_true", 0.50001}}, json{{"label", false}, {"probability_true", 0.49999}}));
  EXPECT_FALSE(
      answers_agree(json{{"label", true}, {"probability_true", 0.7}}, json{{"label", false}, {"probability_true", 0.7}}));
}

// The OpenAI embeddings API over the embed task: the answer's shape, texts and image items in
// order, base64 as the float32 bytes of the float answer, /v1/models, and errors in that API's
// shape (an unknown model is 404 "model_not_found").
TEST(Routes, OpenAiEmbeddingsAndModels) {
  Service svc(40'000'000);
  const ImageFn image = svc.image_fn();
  // Texts embed as (length, 0.5, -1.25) with length tokens; images as (-1, pixels, 1/3).
  Task embed{"embed",
             {},
             [&](const nlohmann::json& r) {
               return r.contains("image") ? Prepared{image(r["image"].get<std::string>(), 4), {}, ""}
                                          : Prepared{{}, {}, r["text"].get<std::string>()};
             },
             [](const std::vector<Prepared>& in) {
               std::vector<Answer> out;
               for (const auto& p : in) {
                 const bool img = p.image.defined();
                 const std::vector<float> v = img ? std::vector<float>{-1.0f, static_cast<float>(p.image.numel()), 1.0f / 3}
                                                  : std::vector<float>{static_cast<float>(p.text.size()), 0.5f, -1.25f};
                 nlohmann::json f = {{"embedding", v}, {"dim", 3}};
                 if (!img) f["tokens"] = p.text.size();
                 out.push_back({f, ""});
               }
               return out;
             }};
  svc.add_task("embed", "retrieval.safetensors", embed);
  RecordingTask echo("vqa");
  svc.add_task("vqa", "vqa.safetensors", echo.task);
  Metrics metrics;
  Batcher batcher(64, 4, std::chrono::microseconds(0), metrics);
  std::thread model([&] { batcher.run(); });
  const Routes routes(svc, {}, batcher, metrics, 4, "");
  auto call = [&](const std::string& method, const std::string& path, const std::string& body = "") {
    const std::string bytes = method + " " + path + " HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
    RequestParser p = parse(bytes);
    EXPECT_TRUE(p.done());
    std::string endpoint;
    const HttpResponse r = routes.handle(p.take(), endpoint);
    return std::make_pair(r, nlohmann::json::parse(r.body));
  };
  const auto [models_r, models] = call("GET", "/v1/models");
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][0]["id"], "retrieval.safetensors");
  EXPECT_EQ(models["data"][1]["id"], "vqa.safetensors");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_TRUE(models["data"][0]["created"].is_number_integer());

  // Ten items with a wave of 4: texts and an image, answered in order.
  nlohmann::json input = nlohmann::json::array();
  for (int i = 0; i < 9; ++i) input.push_back(std::string(static_cast<size_t>(i + 1), 'a'));
  const std::string png = test::read_file(test::fixture("images/camera.png"));
  input.push_back({{"image", "data:image/png;base64," + base64_encode(png)}});
  const auto [ok_r, ok] =
      call("POST", "/v1/embeddings", nlohmann::json{{"model", "retrieval.safetensors"}, {"input", input}}.dump());
  ASSERT_EQ(ok_r.status, 200) << ok_r.body;
  EXPECT_EQ(ok["object"], "list");
  EXPECT_EQ(ok["model"], "retrieval.safetensors");
  ASSERT_EQ(ok["data"].size(), 10u);
  for (size_t i = 0; i < 9; ++i) {
    EXPECT_EQ(ok["data"][i]["object"], "embedding");
    EXPECT_EQ(ok["data"][i]["index"], i);
    EXPECT_EQ(ok["data"][i]["embedding"], (nlohmann::json{i + 1, 0.5, -1.25}));
  }
  EXPECT_EQ(ok["data"][9]["embedding"][0], -1);
  EXPECT_EQ(ok["data"][9]["embedding"][1], 3 * 4 * 4);  // the image, at the task's size
  EXPECT_EQ(ok["usage"]["prompt_tokens"], 45);          // 1 + 2 + ... + 9; images count none
  EXPECT_EQ(ok["usage"]["total_tokens"], 45);
  // base64: the little-endian float32 bytes of the same numbers.
  const auto [b64_r, b64] =
      call("POST", "/v1/embeddings",
           nlohmann::json{{"model", "retrieval.safetensors"}, {"input", input}, {"encoding_format", "base64"}}.dump());
  ASSERT_EQ(b64_r.status, 200) << b64_r.body;
  for (size_t i = 0; i < 10; ++i) {
    const std::string bytes = base64_decode(b64["data"][i]["embedding"].get<std::string>(), 0);
    ASSERT_EQ(bytes.size(), 12u);
    for (size_t k = 0; k < 3; ++k) {
      uint32_t u = 0;
      for (size_t j = 0; j < 4; ++j) u |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[4 * k + j])) << (8 * j);
      float f = 0;
      std::memcpy(&f, &u, 4);
      EXPECT_EQ(f, ok["data"][i]["embedding"][k].get<float>()) << i << " " << k;
    }
  }
  const auto [one_r, one] = call("POST", "/v1/embeddings", R"({"model": "retrieval.safetensors", "input": "abc"})");
  EXPECT_EQ(one["data"].size(), 1u);
  EXPECT_EQ(one["data"][0]["embedding"][0], 3);

  // Errors: {"error": {"message", "type", "param", "code"}}.
  auto error = [&](const std::string& method, const std::string& body, int status, const std::string& param,
                   const std::string& words, const std::string& path = "/v1/embeddings") {
    const auto [r, j] = call(method, path, body);
    EXPECT_EQ(r.status, status) << body;
    EXPECT_EQ(j["error"]["type"], status >= 500 ? "server_error" : "invalid_request_error") << j;
    EXPECT_EQ(j["error"]["param"], param.empty() ? nlohmann::json() : nlohmann::json(param)) << j;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(words), std::string::npos) << j;
    return j;
  };
  EXPECT_EQ(error("POST", R"({"model": "text-embedding-3-small", "input": "x"})", 404, "model",
                  "retrieval.safetensors")["error"]["code"],
            "model_not_found");
  error("POST", R"({"input": "x"})", 400, "model", "\"model\"");
  error("POST", R"({"model": "retrieval.safetensors", "input": "x", "encoding_format": "int8"})", 400, "encoding_format",
        "base64");
  error("POST", R"({"model": "retrieval.safetensors"})", 400, "input", "\"input\"");
  error("POST", R"({"model": "retrieval.safetensors", "input": []})", 400, "input", "empty");
  error("POST", R"({"model": "retrieval.safetensors", "input": [1, 2]})", 400, "input", "token arrays");
  error("POST", R"({"model": "retrieval.safetensors", "input": [[1, 2]]})", 400, "input", "token arrays");
  error("POST", R"({"model": "retrieval.safetensors", "input": ["a", {"text": "b"}]})", 400, "input", "input[1]");
  error("POST", R"({"model": "retrieval.safetensors", "input": ["a", {"image": "/etc/passwd"}]})", 400, "input",
        "input[1]: \"image\": \"/etc/passwd\" is neither");
  error("POST", R"({"model": "retrieval.safetensors", "input": "x", "dimensions": 2})", 400, "dimensions", "3");
  error("POST", "{not json", 400, "", "not valid JSON");
  error("POST", "[1]", 400, "", "JSON object");
  const nlohmann::json big =
      nlohmann::json{{"model", "retrieval.safetensors"}, {"input", std::vector<std::string>(kMaxEmbeddingInputs + 1, "a")}};
  error("POST", big.dump(), 400, "input", "at most 2048");
  const auto [get_r, get_j] = call("GET", "/v1/embeddings");
  EXPECT_EQ(get_r.status, 405);
  EXPECT_EQ(*get_r.header("Allow"), "POST");
  EXPECT_TRUE(get_j["error"].is_object());
  const auto [nope_r, nope_j] = call("GET", "/v1/completions");
  EXPECT_EQ(nope_r.status, 404);
  EXPECT_TRUE(nope_j["error"].is_object());
  batcher.stop();
  model.join();
}
