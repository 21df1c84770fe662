// Data in the formats people have: WebDataset tar shards (image-text pairs, streamed), COCO /
// Flickr30K Karpathy-split JSON with an image root, plain-text corpora (one sentence per line),
// and image folders. Corrupt samples are skipped and counted, never fatal.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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
// corrupt archive, naming the file and the byte offset.
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

struct SkipCounters {
  std::atomic<int64_t> corrupt_samples{0};  // undecodable image, missing caption
  std::atomic<int64_t> broken_shards{0};    // truncated or unreadable shards
};

// Streams image-text examples from shards: shard order shuffled per epoch (seed), shards split
// across ranks and loader workers (shard i goes to worker (i mod world*workers)). Images are
// decoded; a sample whose image does not decode or that has no caption ("txt", or "caption" in
// "json") is skipped and counted, and so is the rest of a truncated shard.
class WebDatasetStream {
 public:
  WebDatasetStream(std::vector<std::string> shards, uint64_t seed, int rank = 0, int world = 1, int worker = 0,
                   int workers = 1, SkipCounters* counters = nullptr, const DecodeOptions& decode = {});
  Example next();  // endless: wraps to the next epoch
  int64_t epoch() const { return epoch_; }

 private:
  void start_epoch();
  bool advance(Example& out);
  std::vector<std::string> shards_, mine_;
  uint64_t seed_;
  int slot_, slots_;
  SkipCounters* counters_;
  SkipCounters own_;
  DecodeOptions decode_;
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

// Non-empty lines of every file (one sentence per line).
std::vector<std::string> read_text_corpus(const std::vector<std::string>& files);
// Image files (jpg, jpeg, png, webp) under a folder, recursively, sorted.
std::vector<std::string> list_images(const std::string& folder);

// Where pre-training examples come from: exactly one of the four.
struct SourceSpec {
  std::string webdataset;                   // shard pattern, e.g. "cc-{000000..000099}.tar"
  std::string karpathy, image_root = ".";   // Karpathy JSON (its train + restval images)
  std::string text;                         // text files: comma-separated patterns (braces allowed)
  std::string images;                       // an image folder
};
// What each example of a stage carries.
enum class ExampleKind { kImage, kText, kImageText };
// Batches for pre-training from a source: map-style sources in a seeded per-epoch order, a
// WebDataset streamed (skipping ahead on resume); a corrupt item is skipped (logged on stderr)
// and replaced by the next epoch's item at its position, unless more items than the source has
// were skipped. A source that cannot provide `kind` is an error.
BatchFn source_batches(const SourceSpec& spec, ExampleKind kind, std::shared_ptr<const Tokenizer> tok,
                       const CollateOptions& co, int64_t batch, uint64_t seed);

}  // namespace vlmo
