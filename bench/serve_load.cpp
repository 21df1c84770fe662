// Load test of `vlmo serve` from a second process, loopback only: C connections send requests
// (cycled from a JSON-lines file of {"endpoint": "/api/...", "body": {...}}) until N were sent or
// T seconds passed, check every answer, and print throughput and latency percentiles as JSON.
// A request is lost when it gets no HTTP answer at all (connection error, timeout) or an answer
// that differs from the first answer to the same request beyond what batching may change
// (vlmo::serve::answers_agree); 503 (queue full) counts as refused.
// Exit status 1 when any request was lost, or when --expect-all-ok and any was refused.
//
// usage: vlmo_serve_load --port P --requests FILE.jsonl [--count N] [--concurrency C]
//                        [--seconds T] [--expect-all-ok]
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "serve/answer_agreement.h"

namespace {

struct Probe {
  std::string endpoint, body;
};

int fail(const std::string& why) {
  std::cerr << "vlmo_serve_load: " << why << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int port = 0, concurrency = 8;
  long count = 200;
  double seconds = 60;
  bool expect_all_ok = false;
  std::string requests_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--port") port = std::stoi(value());
      else if (a == "--requests") requests_path = value();
      else if (a == "--count") count = std::stol(value());
      else if (a == "--concurrency") concurrency = std::stoi(value());
      else if (a == "--seconds") seconds = std::stod(value());
      else if (a == "--expect-all-ok") expect_all_ok = true;
      else return fail("unknown option " + a);
    } catch (const std::exception& e) {
      return fail(a + ": " + e.what());
    }
  }
  if (port <= 0 || requests_path.empty() || concurrency < 1 || count < 1)
    return fail("give --port and --requests (see the usage in the source)");
  std::vector<Probe> probes;
  std::ifstream in(requests_path);
  if (!in) return fail(requests_path + ": cannot open");
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      probes.push_back({j.at("endpoint").get<std::string>(), j.at("body").dump()});
    } catch (const std::exception& e) {
      return fail(requests_path + ":" + std::to_string(n) + ": " + e.what());
    }
  }
  if (probes.empty()) return fail(requests_path + ": no requests");

  std::atomic<long> next{0};
  std::mutex mu;
  std::vector<double> latencies;
  std::map<int, long> statuses;
  std::map<size_t, nlohmann::json> first_answer;  // probe -> its first 200 answer
  long lost = 0, differing = 0;
  std::vector<std::string> lost_examples;
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      httplib::Client client("127.0.0.1", port);
      client.set_keep_alive(true);
      client.set_read_timeout(60, 0);
      for (;;) {
        const long k = next++;
        if (k >= count || std::chrono::steady_clock::now() > deadline) return;
        const size_t which = static_cast<size_t>(k) % probes.size();
        const auto t0 = std::chrono::steady_clock::now();
        const auto res = client.Post(probes[which].endpoint.c_str(), probes[which].body, "application/json");
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        std::lock_guard<std::mutex> lock(mu);
        if (!res) {
          ++lost;
          if (lost_examples.size() < 3) lost_examples.push_back("no answer: " + httplib::to_string(res.error()));
          continue;
        }
        ++statuses[res->status];
        latencies.push_back(ms);
        if (res->status == 200) {
          const auto answer = nlohmann::json::parse(res->body, nullptr, false);
          auto [it, fresh] = first_answer.emplace(which, answer);
          if (answer.is_discarded() || (!fresh && !vlmo::serve::answers_agree(it->second, answer))) {
            ++differing;
            if (lost_examples.size() < 3) lost_examples.push_back("answer differs for " + probes[which].endpoint);
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(latencies.begin(), latencies.end());
  auto pct = [&](double p) {
    return latencies.empty()
               ? 0.0
               : latencies[std::min(latencies.size() - 1, static_cast<size_t>(p * static_cast<double>(latencies.size())))];
  };
  const long sent = std::min<long>(next.load(), count);
  const long ok = statuses[200], refused = statuses[503];
  nlohmann::json status_counts = nlohmann::json::object();
  for (const auto& [s, n] : statuses) status_counts[std::to_string(s)] = n;
  const nlohmann::json report = {{"sent", sent},
                                 {"ok", ok},
                                 {"refused_503", refused},
                                 {"lost", lost},
                                 {"differing_answers", differing},
                                 {"statuses", status_counts},
                                 {"concurrency", concurrency},
                                 {"seconds", wall},
                                 {"throughput_rps", static_cast<double>(latencies.size()) / wall},
                                 {"latency_ms_p50", pct(0.5)},
                                 {"latency_ms_p99", pct(0.99)},
                                 {"latency_ms_max", latencies.empty() ? 0.0 : latencies.back()}};
  std::cout << report.dump() << std::endl;
  for (const auto& e : lost_examples) std::cerr << "vlmo_serve_load: " << e << "\n";
  const bool bad = lost > 0 || differing > 0 || (expect_all_ok && ok != sent);
  return bad ? 1 : 0;
}
