// The batched answering of requests from the command line: one request from the flags, or a
// JSON-lines file of them, answered in input order (common.h).
#include <fstream>
#include <iostream>

#include "common.h"
#include "vlmo/error.h"
#include "vlmo/files.h"

namespace vlmo::cli {

std::vector<Option> request_options() {
  return {{"input", "", "JSON-lines file of requests (one JSON object per line) instead of one request"},
          integer_option("batch-size", "32", "requests run through the model together", 1, 65536),
          {"json", "false", "print JSON lines", true}};
}

std::vector<Request> read_requests(const Args& a, const std::vector<std::string>& fields) {
  std::vector<Request> out;
  const std::string& path = a.get("input");
  auto check = [&](Request& r) { r.error = request_error(r.value, fields); };
  if (path.empty()) {
    Request r;
    r.value = nlohmann::json::object();
    for (const auto& f : fields) {
      if (a.get(f).empty()) throw Error(cat("give --", f, " (or --input FILE.jsonl)"));
      r.value[f] = a.get(f);
    }
    out.push_back(std::move(r));
    return out;
  }
  std::ifstream in = open_input(path, "JSON-lines requests");
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Request r;
    r.line = n;
    try {
      r.value = nlohmann::json::parse(line);
      check(r);
    } catch (const std::exception& e) {
      r.error = cat("not valid JSON (", e.what(), ")");
    }
    out.push_back(std::move(r));
  }
  if (in.bad()) throw Error(cat(path, ": read error"));
  if (out.empty()) throw Error(cat(path, ": no requests (the file is empty)"));
  return out;
}

int answer_requests(const Args& a, std::vector<Request> requests, const PrepareFn& prepare, const RunFn& run) {
  const int64_t batch = a.get_int64("batch-size");
  const bool json = a.get_flag("json");
  const bool single = a.get("input").empty();
  int failed = 0;
  for (size_t start = 0; start < requests.size(); start += batch) {
    const size_t end = std::min(requests.size(), start + static_cast<size_t>(batch));
    std::vector<Prepared> inputs;
    std::vector<size_t> which;
    for (size_t i = start; i < end; ++i) {
      Request& r = requests[i];
      if (!r.error.empty()) continue;
      try {
        inputs.push_back(prepare(r.value));
        which.push_back(i);
      } catch (const Error& e) {
        if (single) throw;
        r.error = e.what();
      }
    }
    std::vector<Answer> results;
    if (!inputs.empty()) results = run(inputs);
    size_t k = 0;
    for (size_t i = start; i < end; ++i) {
      const Request& r = requests[i];
      if (!r.error.empty()) {
        ++failed;
        std::cerr << "error: " << a.get("input") << ":" << r.line << ": " << r.error << "\n";
        if (json) std::cout << nlohmann::json{{"line", r.line}, {"error", r.error}}.dump() << "\n";
        continue;
      }
      const auto& [fields, human] = results.at(k++);
      if (json) {
        nlohmann::json out = r.value;
        for (auto it = fields.begin(); it != fields.end(); ++it) out[it.key()] = it.value();
        std::cout << out.dump() << "\n";
      } else {
        std::cout << human;
      }
    }
    std::cout.flush();
  }
  if (failed) std::cerr << "error: " << failed << " of " << requests.size() << " requests failed\n";
  if (!std::cout) throw Error("cannot write the results to standard output");
  return failed ? kSomeRequestsFailed : 0;
}

int answer_requests(const Args& a, const Task& task) {
  return answer_requests(a, read_requests(a, task.fields), task.prepare, task.run);
}

}  // namespace vlmo::cli
