// Data in the formats people have: WebDataset tar shards (image-text pairs, streamed), COCO /
// Flickr30K Karpathy-split JSON with an image root, plain-text corpora (one sentence per line),
// and image folders. Corrupt samples are skipped and counted, never fatal.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "vlmo/batch.h"
#include "vlmo/data.h"

namespace vlmo {

// "name-{000000..000099}.tar" -> 100 names (zero padding kept); "{a,b}" lists; several braces.
std::vector<std::string> expand_braces(const std::string& pattern);

// One file of a tar archive.
struct TarEntry {
  std::string name;
  std::string data;
};
// Reads a tar (ustar / GNU / pax) file entry by entry; throws vlmo::Error on a truncated or
// corrupt archive, naming the file and the byte offset. A path "pipe:COMMAND" (the WebDataset
// convention, e.g. "pipe:curl -s https://host/cc-000001.tar" or "pipe:cat FILE") runs COMMAND
// with /bin/sh and reads the archive from its standard output; a command that exits non-zero
// is an error naming it and its status.
class TarReader {
 public:
  explicit TarReader(const std::string& path);
  bool next(TarEntry& out);  // false at the end of the archive
 private:
  std::string path_;
  std::string bytes_;
  size_t pos_ = 0;
};

// A WebDataset sample: files sharing a key ("dir/000123.jpg" + "dir/000123.txt"), by extension.
struct WdsSample {
  std::string key;
  std::map<std::string, std::string> files;  // extension (after the first dot) -> bytes
};

// Samples skipped, per reason, with a line naming each one; thread-safe.
// Reasons: "corrupt_image", "missing_image", "missing_file", "empty_caption", "bad_utf8",
// "truncated_shard" (the rest of a shard that is truncated or unreadable).
class SkipCounters {
 public:
  void add(const std::string& reason, const std::string& what);
  std::map<std::string, int64_t> counts() const;
  int64_t count(const std::string& reason) const;
  // Skips recorded since the last call: (reason, what) in order.
  std::vector<std::pair<std::string, std::string>> take_new();

 private:
  mutable std::mutex mu_;
  std::map<std::string, int64_t> counts_;
  std::vector<std::pair<std::string, std::string>> new_;
};

// Streams image-text examples from shards: shard order shuffled per epoch (seed), shards split
// across ranks and loader workers (shard i goes to worker (i mod world*workers)). With
// `resample`, each rank and worker instead draws its shards at random with replacement (as
// WebDataset's ResampledShards: for fewer or unequal shards than ranks x workers), max(1,
// shards / (world x workers)) per epoch, from (seed, epoch, rank, worker). Images are decoded; a
// sample whose image does not decode or that has no caption ("txt", or "caption" in "json") is
// skipped and counted, and so is the rest of a truncated shard.
class WebDatasetStream {
 public:
  WebDatasetStream(std::vector<std::string> shards, uint64_t seed, int rank = 0, int world = 1, int worker = 0, int workers = 1,
                   SkipCounters* counters = nullptr, const DecodeOptions& decode = {}, bool resample = false);
  Example next();  // endless: wraps to the next epoch
  int64_t epoch() const { return epoch_; }
  SkipCounters& skips() { return *counters_; }  // what next() skipped

 private:
  void start_epoch();
  bool advance(Example& out);
  std::vector<std::string> shards_, mine_;
  uint64_t seed_;
  int slot_, slots_;
  SkipCounters* counters_;
  SkipCounters own_;
  DecodeOptions decode_;
  bool resample_;
  int64_t epoch_ = -1;
  size_t shard_ = 0;
  std::unique_ptr<TarReader> reader_;
  TarEntry pending_;
  bool has_pending_ = false;
};

// Karpathy-split JSON (dataset_coco.json / dataset_flickr30k.json): images with their split and
// sentences; the image path is root/filepath/filename (filepath absent for Flickr30K).
struct KarpathyImage {
  std::string path;
  std::string split;
  std::vector<std::string> captions;
};
std::vector<KarpathyImage> read_karpathy(const std::string& json_path, const std::string& image_root);

// Non-blank lines of every file (one sentence per line), with where each comes from.
struct CorpusLine {
  std::string text;
  uint32_t file = 0;  // index into TextCorpus::files
  uint32_t line = 0;  // 1-based
};
struct TextCorpus {
  std::vector<std::string> files;
  std::vector<CorpusLine> lines;
  std::string where(const CorpusLine& l) const { return files[l.file] + ":" + std::to_string(l.line); }
};
TextCorpus read_text_corpus(const std::vector<std::string>& files);
// Image files (jpg, jpeg, png, webp) under a folder, recursively, sorted.
std::vector<std::string> list_images(const std::string& folder);
// Whether a file or archive member name ends in .jpg, .jpeg, .png or .webp (any case).
bool is_image_file_name(const std::string& name);

// Where pre-training examples come from: exactly one of the four.
struct SourceSpec {
  std::string webdataset;                  // shard pattern, e.g. "cc-{000000..000099}.tar" or "pipe:..."
  std::string karpathy, image_root = ".";  // Karpathy JSON (its train + restval images)
  std::string text;                        // text files: comma-separated patterns (braces allowed)
  std::string images;                      // an image folder
  // WebDataset only: this process's rank in a world of `world`, and its loader threads. With at
  // least world x workers shards (or `resample`), each rank and worker streams its own shards;
  // with fewer, every rank streams all of them and keeps its own batches.
  int rank = 0, world = 1, workers = 1;
  bool resample = false;
};
// What each example of a stage carries.
enum class ExampleKind { kImage, kText, kImageText };
// Batches for pre-training from a source: map-style sources in a seeded per-epoch order, a
// WebDataset streamed (skipping ahead on resume). Batch indices are the trainer's global ones
// (local batch i of rank r is i x world + r): a rank-split WebDataset serves rank r's indices only,
// batch i from worker i mod workers, each worker's batches in order. A sample that cannot be used (missing or
// corrupt image, blank or non-UTF-8 caption) is skipped and replaced by the next epoch's item at
// its position; the batch reports each skip (Batch::skipped, Batch::skip_log) for the trainer
// to count and judge. 100 unusable samples in a row end the run. A source that cannot provide
// `kind` is an error.
BatchFn source_batches(const SourceSpec& spec, ExampleKind kind, std::shared_ptr<const Tokenizer> tok, const CollateOptions& co,
                       int64_t batch, uint64_t seed);
// Whether source_batches gives each rank and loader worker its own shards (a WebDataset with
// resampling, or with at least world x workers shards). When not, a WebDataset is read by one
// thread per rank, and every rank reads every shard.
bool webdataset_split_by_rank(const SourceSpec& spec);

}  // namespace vlmo
