#include "vlmo/sources.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <utility>

#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/tokenizer.h"

namespace vlmo {

std::vector<std::string> expand_braces(const std::string& pattern) {
  const size_t open = pattern.find('{');
  if (open == std::string::npos) return {pattern};
  const size_t close = pattern.find('}', open);
  if (close == std::string::npos) throw Error(cat("pattern \"", pattern, "\": unmatched '{'"));
  const std::string inner = pattern.substr(open + 1, close - open - 1);
  const std::string head = pattern.substr(0, open), tail = pattern.substr(close + 1);
  std::vector<std::string> items;
  const size_t dots = inner.find("..");
  if (dots != std::string::npos) {
    const std::string a = inner.substr(0, dots), b = inner.substr(dots + 2);
    int64_t lo, hi;
    try {
      lo = std::stoll(a);
      hi = std::stoll(b);
    } catch (const std::exception&) {
      throw Error(cat("pattern \"", pattern, "\": range {", inner, "} must be numeric"));
    }
    if (hi < lo) throw Error(cat("pattern \"", pattern, "\": empty range {", inner, "}"));
    if (hi - lo > 10000000) throw Error(cat("pattern \"", pattern, "\": range too large"));
    const size_t width = a.size();
    for (int64_t v = lo; v <= hi; ++v) {
      std::string s = std::to_string(v);
      if (s.size() < width) s = std::string(width - s.size(), '0') + s;
      items.push_back(s);
    }
  } else {
    size_t start = 0;
    while (true) {
      const size_t comma = inner.find(',', start);
      items.push_back(inner.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  // The leftmost brace varies slowest.
  std::vector<std::string> ordered;
  const auto rests = expand_braces(tail);
  for (const auto& it : items)
    for (const auto& rest : rests) ordered.push_back(head + it + rest);
  return ordered;
}

// ---- tar --------------------------------------------------------------------------------------

namespace {
// The standard output of `command` (run with /bin/sh), or an error naming it.
std::string read_pipe(const std::string& command, const std::string& shard) {
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) throw Error(cat(shard, ": cannot start the command (", std::strerror(errno), ")"));
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) bytes.append(buf, n);
  const int status = ::pclose(p);
  if (status != 0) {
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    throw Error(cat(shard, ": the command ", code >= 0 ? cat("exited with status ", code) : std::string("was killed by a signal"),
                    " after ", bytes.size(), " bytes"));
  }
  return bytes;
}
}  // namespace

TarReader::TarReader(const std::string& path)
    : path_(path),
      bytes_(path.rfind("pipe:", 0) == 0 ? read_pipe(path.substr(5), path) : read_input(path, "WebDataset shard (tar)")) {}

bool TarReader::next(TarEntry& out) {
  std::string long_name;
  while (true) {
    if (pos_ + 512 > bytes_.size()) {
      if (pos_ == bytes_.size()) return false;  // no end-of-archive blocks, but ends cleanly
      throw Error(cat(path_, ": truncated tar header at byte ", pos_));
    }
    const char* h = bytes_.data() + pos_;
    if (std::all_of(h, h + 512, [](char c) { return c == 0; })) return false;  // end of archive
    // Checksum: the header's bytes with the checksum field read as spaces.
    unsigned sum = 0;
    for (int i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
    const unsigned stored = static_cast<unsigned>(std::strtoul(std::string(h + 148, 8).c_str(), nullptr, 8));
    if (sum != stored) throw Error(cat(path_, ": corrupt tar header at byte ", pos_, " (bad checksum)"));
    std::string size_field(h + 124, 12);
    const uint64_t size = std::strtoull(size_field.c_str(), nullptr, 8);
    const char type = h[156];
    std::string name(h, strnlen(h, 100));
    if (std::memcmp(h + 257, "ustar", 5) == 0 && h[345]) name = std::string(h + 345, strnlen(h + 345, 155)) + "/" + name;
    const size_t data = pos_ + 512;
    if (size > bytes_.size() - data) throw Error(cat(path_, ": truncated tar entry \"", name, "\" at byte ", pos_));
    pos_ = data + ((size + 511) / 512) * 512;
    if (type == 'L') {  // GNU long name for the next entry
      long_name.assign(bytes_.data() + data, strnlen(bytes_.data() + data, size));
      continue;
    }
    if (type == 'x' || type == 'g') {  // pax headers: take "path=" if present
      const std::string pax(bytes_.data() + data, size);
      const size_t p = pax.find(" path=");
      if (type == 'x' && p != std::string::npos) long_name = pax.substr(p + 6, pax.find('\n', p) - p - 6);
      continue;
    }
    if (type != '0' && type != '\0') continue;  // directories, links: not samples
    out.name = long_name.empty() ? name : long_name;
    out.data.assign(bytes_.data() + data, size);
    return true;
  }
}

// ---- WebDataset ------------------------------------------------------------------------------

void SkipCounters::add(const std::string& reason, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[reason];
  new_.emplace_back(reason, what);
}
std::map<std::string, int64_t> SkipCounters::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}
int64_t SkipCounters::count(const std::string& reason) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = counts_.find(reason);
  return it == counts_.end() ? 0 : it->second;
}
std::vector<std::pair<std::string, std::string>> SkipCounters::take_new() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(new_, {});
}

namespace {
void split_key(const std::string& name, std::string& key, std::string& ext) {
  const size_t slash = name.rfind('/');
  const size_t dot = name.find('.', slash == std::string::npos ? 0 : slash + 1);
  key = dot == std::string::npos ? name : name.substr(0, dot);
  ext = dot == std::string::npos ? "" : name.substr(dot + 1);
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
}
}  // namespace

WebDatasetStream::WebDatasetStream(std::vector<std::string> shards, uint64_t seed, int rank, int world, int worker, int workers,
                                   SkipCounters* counters, const DecodeOptions& decode, bool resample)
    : shards_(std::move(shards)),
      seed_(seed),
      slot_(rank * workers + worker),
      slots_(world * workers),
      counters_(counters ? counters : &own_),
      decode_(decode),
      resample_(resample) {
  if (shards_.empty()) throw Error("webdataset: no shards given");
  if (rank < 0 || rank >= world || worker < 0 || worker >= workers)
    throw Error(cat("webdataset: rank ", rank, "/", world, ", worker ", worker, "/", workers, " is out of range"));
}

void WebDatasetStream::start_epoch() {
  ++epoch_;
  mine_.clear();
  if (resample_) {
    std::mt19937_64 rng(mix_seed(mix_seed(seed_, static_cast<uint64_t>(epoch_)), 0x7265730000ull + static_cast<uint64_t>(slot_)));
    std::uniform_int_distribution<size_t> pick(0, shards_.size() - 1);
    const size_t count = std::max<size_t>(1, shards_.size() / static_cast<size_t>(slots_));
    for (size_t i = 0; i < count; ++i) mine_.push_back(shards_[pick(rng)]);
  } else {
    std::vector<size_t> order(shards_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch_)));
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i = 0; i < order.size(); ++i)
      if (static_cast<int>(i % slots_) == slot_) mine_.push_back(shards_[order[i]]);
  }
  if (mine_.empty())
    throw Error(cat("webdataset: ", shards_.size(), " shard(s) cannot feed ", slots_,
                    " ranks x loader threads (give more shards, fewer loader threads, or resample them)"));
  shard_ = 0;
  reader_.reset();
  has_pending_ = false;
}

bool WebDatasetStream::advance(Example& out) {
  // Collect the files of one key, then turn them into an example.
  while (true) {
    if (!reader_) {
      if (shard_ >= mine_.size()) return false;
      try {
        reader_ = std::make_unique<TarReader>(mine_[shard_]);
      } catch (const Error& e) {
        counters_->add("truncated_shard", e.what());
        ++shard_;
        continue;
      }
      has_pending_ = false;
    }
    WdsSample s;
    const std::string shard_name = mine_[shard_];
    bool shard_done = false;
    try {
      TarEntry e;
      if (has_pending_) {
        e = std::move(pending_);
        has_pending_ = false;
      } else if (!reader_->next(e)) {
        shard_done = true;
      }
      if (!shard_done) {
        std::string ext;
        split_key(e.name, s.key, ext);
        s.files[ext] = std::move(e.data);
        while (true) {
          TarEntry f;
          if (!reader_->next(f)) {
            shard_done = true;
            break;
          }
          std::string key;
          split_key(f.name, key, ext);
          if (key != s.key) {
            pending_ = std::move(f);
            has_pending_ = true;
            break;
          }
          s.files[ext] = std::move(f.data);
        }
      }
    } catch (const Error& e) {
      counters_->add("truncated_shard", cat(e.what(), " (rest of the shard skipped)"));
      s.files.clear();
      shard_done = true;
    }
    if (shard_done) {
      reader_.reset();
      ++shard_;
    }
    if (s.files.empty()) continue;
    // Turn the sample into an example, or skip it.
    const std::string where = cat(shard_name, ": sample \"", s.key, "\"");
    std::string caption;
    if (s.files.count("txt")) caption = s.files["txt"];
    else if (s.files.count("json")) {
      try {
        const auto j = nlohmann::json::parse(s.files["json"]);
        if (j.contains("caption") && j["caption"].is_string()) caption = j["caption"].get<std::string>();
      } catch (const std::exception&) {
      }
    }
    const std::string* image = nullptr;
    for (const char* ext : {"jpg", "jpeg", "png", "webp"})
      if (s.files.count(ext)) image = &s.files[ext];
    if (!image) {
      counters_->add("missing_image", cat(where, ": no jpg/jpeg/png/webp member"));
      continue;
    }
    if (caption.find_first_not_of(" \t\r\n") == std::string::npos) {
      counters_->add("empty_caption", cat(where, ": no caption (txt, or \"caption\" in json) or a blank one"));
      continue;
    }
    if (const size_t bad = invalid_utf8_at(caption); bad != std::string::npos) {
      counters_->add("bad_utf8", cat(where, ": caption is not valid UTF-8 (byte ", bad, ")"));
      continue;
    }
    try {
      out.image = decode_image(*image, s.key, decode_);
    } catch (const Error& e) {
      counters_->add("corrupt_image", cat(where, ": ", e.what()));
      continue;
    }
    out.text = caption;
    return true;
  }
}

Example WebDatasetStream::next() {
  Example out;
  for (int tries = 0; tries < 3; ++tries) {
    if (epoch_ < 0 || (!reader_ && shard_ >= mine_.size())) start_epoch();
    if (advance(out)) return out;
    start_epoch();
    if (advance(out)) return out;
  }
  throw Error("webdataset: the shards hold no usable sample");
}

// ---- Karpathy JSON, text corpora, image folders ---------------------------------------------

std::vector<KarpathyImage> read_karpathy(const std::string& json_path, const std::string& image_root) {
  std::ifstream in = open_input(json_path, "Karpathy split JSON");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    throw Error(cat(json_path, ": not valid JSON (", e.what(), ")"));
  }
  if (!j.is_object() || !j.contains("images") || !j["images"].is_array())
    throw Error(cat(json_path, ": expected an object with an \"images\" array (Karpathy split format)"));
  std::vector<KarpathyImage> out;
  for (size_t i = 0; i < j["images"].size(); ++i) {
    const auto& im = j["images"][i];
    const std::string where = cat(json_path, ": images[", i, "]");
    if (!im.contains("filename") || !im["filename"].is_string() || !im.contains("split") || !im.contains("sentences") ||
        !im["sentences"].is_array())
      throw Error(cat(where, ": needs \"filename\", \"split\" and \"sentences\""));
    KarpathyImage k;
    const std::string dir = im.contains("filepath") && im["filepath"].is_string() ? im["filepath"].get<std::string>() + "/" : "";
    k.path = image_root + "/" + dir + im["filename"].get<std::string>();
    k.split = im["split"].get<std::string>();
    for (const auto& s : im["sentences"]) {
      if (!s.contains("raw") || !s["raw"].is_string()) throw Error(cat(where, ": a sentence lacks \"raw\""));
      k.captions.push_back(s["raw"].get<std::string>());
    }
    out.push_back(std::move(k));
  }
  return out;
}

TextCorpus read_text_corpus(const std::vector<std::string>& files) {
  TextCorpus out;
  for (const auto& f : files) {
    std::ifstream in = open_input(f, "text corpus", true);
    out.files.push_back(f);
    std::string line;
    for (uint32_t n = 1; std::getline(in, line); ++n) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos)
        out.lines.push_back({line, static_cast<uint32_t>(out.files.size() - 1), n});
    }
    if (in.bad()) throw Error(cat(f, ": read failed (", std::strerror(errno), ")"));
  }
  if (out.lines.empty()) throw Error("text corpus: no non-blank lines in the given files");
  return out;
}

bool is_image_file_name(const std::string& name) {
  std::string ext = std::filesystem::path(name).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp";
}

std::vector<std::string> list_images(const std::string& folder) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) throw Error(cat(folder, ": not a folder"));
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(folder, ec)) {
    if (e.is_regular_file() && is_image_file_name(e.path().string())) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  if (out.empty()) throw Error(cat(folder, ": no .jpg/.jpeg/.png/.webp images found"));
  return out;
}

}  // namespace vlmo
