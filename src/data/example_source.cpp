// Pre-training batches from the four kinds of source (vlmo/sources.h: source_batches).
#include <algorithm>
#include <mutex>
#include <optional>

#include "usable.h"
#include "vlmo/error.h"
#include "vlmo/sources.h"
#include "vlmo/tokenizer.h"

namespace vlmo {

namespace {

using detail::Unusable;

struct Source {
  size_t n = 0;  // map-style: n items ...
  // ... item(i) fills the example, or returns the reason it cannot be used.
  std::function<std::optional<Unusable>(size_t, Example&)> item;
  std::vector<std::string> shards;  // streaming (WebDataset): the shard names
};

// One sequential WebDataset reader and how many samples it has given.
struct StreamSlot {
  std::mutex mu;
  std::unique_ptr<WebDatasetStream> stream;
  int64_t pos = 0;
};

// Reads an image file, or says why it cannot be used.
std::optional<Unusable> load_image(const std::string& path, const DecodeOptions& decode, Image& out) {
  return detail::try_image([&](const std::string& p) { return read_image(p, decode); }, path, out);
}

// Checks a caption that a stage with text needs.
std::optional<Unusable> check_caption(const std::string& text, const std::string& where) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return Unusable{"empty_caption", cat(where, ": blank caption")};
  if (const size_t bad = invalid_utf8_at(text); bad != std::string::npos)
    return Unusable{"bad_utf8", cat(where, ": not valid UTF-8 (byte ", bad, ")")};
  return std::nullopt;
}

Source open_source(const SourceSpec& spec, ExampleKind kind, uint64_t seed) {
  const int given = !spec.webdataset.empty() + !spec.karpathy.empty() + !spec.text.empty() + !spec.images.empty();
  if (given != 1) throw Error("give exactly one data source: a WebDataset, a Karpathy JSON, a text corpus or an image folder");
  if (!spec.text.empty() && kind != ExampleKind::kText)
    throw Error("a text corpus has no images: it feeds only the text-only stage (stage text)");
  if (!spec.images.empty() && kind != ExampleKind::kImage)
    throw Error("an image folder has no captions: it feeds only the image-only stage (stage image)");
  Source s;
  const DecodeOptions decode;
  if (!spec.webdataset.empty()) {
    s.shards = expand_braces(spec.webdataset);
  } else if (!spec.karpathy.empty()) {
    auto images = std::make_shared<std::vector<KarpathyImage>>();
    for (auto& k : read_karpathy(spec.karpathy, spec.image_root))
      if (k.split == "train" || k.split == "restval") images->push_back(std::move(k));
    auto pairs = std::make_shared<std::vector<std::pair<size_t, size_t>>>();
    for (size_t i = 0; i < images->size(); ++i)
      for (size_t c = 0; c < (*images)[i].captions.size(); ++c) pairs->emplace_back(i, c);
    s.n = kind == ExampleKind::kImage ? images->size() : pairs->size();
    if (s.n == 0)
      throw Error(cat(spec.karpathy, ": no training ", kind == ExampleKind::kImage ? "images" : "image-caption pairs",
                      " (images with split \"train\" or \"restval\" and at least one sentence)"));
    const std::string json = spec.karpathy;
    s.item = [images, pairs, kind, decode, json](size_t i, Example& ex) -> std::optional<Unusable> {
      if (kind == ExampleKind::kImage) return load_image((*images)[i].path, decode, ex.image);
      const auto& [img, cap] = (*pairs)[i];
      const KarpathyImage& k = (*images)[img];
      ex.text = k.captions[cap];
      if (auto bad = check_caption(ex.text, cat(json, ": ", k.path, " sentence ", cap + 1))) return bad;
      if (kind == ExampleKind::kText) return std::nullopt;
      return load_image(k.path, decode, ex.image);
    };
  } else if (!spec.text.empty()) {
    std::vector<std::string> files;
    for (size_t start = 0; start <= spec.text.size();) {
      const size_t comma = std::min(spec.text.find(',', start), spec.text.size());
      for (const auto& f : expand_braces(spec.text.substr(start, comma - start))) files.push_back(f);
      start = comma + 1;
    }
    auto corpus = std::make_shared<TextCorpus>(read_text_corpus(files));
    s.n = corpus->lines.size();
    s.item = [corpus](size_t i, Example& ex) -> std::optional<Unusable> {
      const CorpusLine& l = corpus->lines[i];
      ex.text = l.text;
      return check_caption(ex.text, corpus->where(l));
    };
  } else {
    auto files = std::make_shared<std::vector<std::string>>(list_images(spec.images));
    s.n = files->size();
    s.item = [files, decode](size_t i, Example& ex) { return load_image((*files)[i], decode, ex.image); };
  }
  return s;
}

}  // namespace

bool webdataset_split_by_rank(const SourceSpec& spec) {
  if (spec.webdataset.empty()) return false;
  const size_t slots = static_cast<size_t>(std::max(1, spec.world)) * static_cast<size_t>(std::max(1, spec.workers));
  return spec.resample || expand_braces(spec.webdataset).size() >= slots;
}

BatchFn source_batches(const SourceSpec& spec, ExampleKind kind, std::shared_ptr<const Tokenizer> tok, const CollateOptions& co,
                       int64_t batch, uint64_t seed) {
  if (batch < 1) throw Error(cat("batch size must be at least 1, got ", batch));
  const Source src = open_source(spec, kind, seed);
  std::shared_ptr<EpochOrder> order = src.n ? std::make_shared<EpochOrder>(src.n, seed) : nullptr;
  if (src.shards.empty() && !order) throw Error("the data source has no examples");
  // WebDataset: one reader per loader worker of this rank over its own shards, or (fewer shards
  // than ranks x workers, no resampling) one reader of every shard whose position is the global one.
  const bool split = webdataset_split_by_rank(spec);
  const int world = std::max(1, spec.world), rank = spec.rank, workers = split ? std::max(1, spec.workers) : 1;
  if (rank < 0 || rank >= world) throw Error(cat("rank ", rank, " is outside a world of ", world));
  auto slots = std::make_shared<std::vector<std::unique_ptr<StreamSlot>>>();
  for (int w = 0; !src.shards.empty() && w < workers; ++w) {
    slots->push_back(std::make_unique<StreamSlot>());
    slots->back()->stream = std::make_unique<WebDatasetStream>(src.shards, seed, split ? rank : 0, split ? world : 1, w, workers,
                                                               nullptr, DecodeOptions{}, spec.resample);
  }
  return [=](int64_t index) {
    std::vector<Example> ex;
    detail::SkipNotes notes;
    if (!slots->empty()) {
      int64_t local = index;  // this reader's batch number
      if (split) {
        if (index % world != rank)
          throw Error(cat("webdataset: batch ", index, " belongs to rank ", index % world, ", not to rank ", rank));
        local = index / world;
      }
      StreamSlot& slot = *(*slots)[static_cast<size_t>(local % workers)];
      const int64_t first = local / workers * batch;
      std::lock_guard<std::mutex> lock(slot.mu);
      if (slot.pos > first)
        throw Error(cat("webdataset: batch ", index, " was asked for after a later one (a stream reads forward only)"));
      for (; slot.pos < first; ++slot.pos) slot.stream->next();  // resume: skip ahead
      slot.stream->skips().take_new();                           // (not this batch's)
      for (int64_t j = 0; j < batch; ++j, ++slot.pos) ex.push_back(slot.stream->next());
      for (const auto& [reason, what] : slot.stream->skips().take_new()) notes.note({reason, what});
    } else {
      for (int64_t j = 0; j < batch; ++j)
        detail::fill_position(
            *order, index * batch + j,
            [&](size_t i) {
              Example e;
              std::optional<Unusable> bad = src.item(i, e);
              if (!bad) ex.push_back(std::move(e));
              return bad;
            },
            notes);
    }
    for (auto& e : ex) {
      if (kind == ExampleKind::kText) e.image = Image{};
      if (kind == ExampleKind::kImage) e.text.clear();
    }
    // Random draws keyed by the sample's position in the run (not by batch): one process with
    // batch 2B and two with B each (batches 2i and 2i + 1) draw the same augmentation and masks.
    Batch b = collate(ex, *tok, co, mix_seed(seed, 0x5a4d), index * batch);
    notes.attach(b);
    return b;
  };
}

}  // namespace vlmo
