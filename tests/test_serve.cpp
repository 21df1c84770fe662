// src/serve/: the batcher, the metrics, data: URLs, image lookup in a served collection, and the
// request -> answer handling of the service, without HTTP (tests/serve_test.py drives the server).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "serve/batcher.h"
#include "serve/data_url.h"
#include "serve/http_error.h"
#include "serve/images.h"
#include "serve/metrics.h"
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

int status_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const HttpError& e) {
    return e.status;
  }
  return 0;
}

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

TEST(Batcher, FullQueueAndStoppingAnswer503AndQueuedWorkFinishes) {
  Metrics metrics;
  Batcher batcher(2, 8, std::chrono::microseconds(0), metrics);
  RecordingTask a("a");
  auto f1 = batcher.submit(a.task, Prepared{{}, {}, "1"});
  auto f2 = batcher.submit(a.task, Prepared{{}, {}, "2"});
  EXPECT_EQ(status_of([&] { batcher.submit(a.task, Prepared{{}, {}, "3"}); }), 503);
  EXPECT_EQ(metrics.summary()["rejected_queue_full"], 1);
  batcher.stop();  // before the model thread runs: what was accepted is still answered
  EXPECT_EQ(status_of([&] { batcher.submit(a.task, Prepared{{}, {}, "4"}); }), 503);
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
  m.request("/api/vqa", 200, 3);     // bucket 5 ms
  m.request("/api/vqa", 200, 30);    // bucket 50 ms
  m.request("/api/vqa", 400, 20000); // above every bucket
  m.request("/health", 200, 1);
  m.batch(2);
  const std::string t = m.prometheus(1, 64);
  for (const char* line : {"vlmo_requests_total{endpoint=\"/api/vqa\",status=\"200\"} 2\n",
                           "vlmo_requests_total{endpoint=\"/api/vqa\",status=\"400\"} 1\n",
                           "vlmo_request_errors_total{endpoint=\"/api/vqa\"} 1\n",
                           "vlmo_request_errors_total{endpoint=\"/health\"} 0\n",
                           "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"0.005\"} 1\n",
                           "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"0.025\"} 1\n",
                           "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"0.05\"} 2\n",
                           "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"10\"} 2\n",
                           "vlmo_request_duration_seconds_bucket{endpoint=\"/api/vqa\",le=\"+Inf\"} 3\n",
                           "vlmo_request_duration_seconds_count{endpoint=\"/api/vqa\"} 3\n",
                           "vlmo_batches_total 1\n", "vlmo_batched_requests_total 2\n", "vlmo_queue_depth 1\n",
                           "vlmo_queue_capacity 64\n", "# TYPE vlmo_request_duration_seconds histogram\n"})
    EXPECT_NE(t.find(line), std::string::npos) << line << "\nin:\n" << t;
  const nlohmann::json s = m.summary();
  EXPECT_EQ(s["requests"], 4);
  EXPECT_EQ(s["errors"], 1);
  EXPECT_DOUBLE_EQ(s["latency_ms_p50"].get<double>(), 30);     // sorted 1, 3, 30, 20000: index 2
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
  EXPECT_FALSE(is_data_url("dat"));
  EXPECT_EQ(status_of([] { base64_decode("TW*u", 0); }), 400);
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
  ServedImages images(40'000'000);
  images.set_collection({"pics/a.png", "pics/s.tar/x/1.png", "pics/s.tar/x/2.png"}, index);
  EXPECT_EQ(images.bytes("pics/a.png"), png);
  EXPECT_EQ(images.bytes("pics/s.tar/x/1.png"), png);
  EXPECT_EQ(status_of([&] { images.bytes("pics/s.tar/x/2.png"); }), 404);  // listed, not in the shard
  EXPECT_EQ(status_of([&] { images.bytes("../etc/passwd"); }), 404);       // not an id of the collection
  EXPECT_EQ(status_of([&] { images.tensor("/etc/passwd", 32); }), 400);    // never a server path
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
  EXPECT_EQ(status_of([&] { svc.answer("echo", "{not json", batcher); }), 400);
  EXPECT_EQ(status_of([&] { svc.answer("echo", R"({"text": 3})", batcher); }), 400);
  EXPECT_EQ(status_of([&] { svc.answer("echo", R"([1])", batcher); }), 400);
  expect_error([&] { svc.answer("vqa", "{}", batcher); }, {"/api/vqa is not available: the model has no \"vqa\" head"});
  EXPECT_EQ(status_of([&] { svc.answer("nlvr2", "{}", batcher); }), 404);
  batcher.stop();
  model.join();
  const nlohmann::json d = svc.describe();
  EXPECT_EQ(d["tasks"]["echo"], "model.safetensors");
  EXPECT_EQ(d["unavailable"]["vqa"], "the model has no \"vqa\" head");
  EXPECT_FALSE(d.contains("collection"));
}
