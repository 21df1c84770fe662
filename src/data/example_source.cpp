// Pre-training batches from the four kinds of source (vlmo/sources.h: source_batches).
#include <iostream>
#include <mutex>

#include "vlmo/error.h"
#include "vlmo/sources.h"

namespace vlmo {

namespace {

struct Source {
  size_t n = 0;                            // map-style: n items ...
  std::function<Example(size_t)> item;     // ... item(i) may throw vlmo::Error (corrupt item)
  std::shared_ptr<WebDatasetStream> stream;  // streaming: sequential examples
};

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
    s.stream = std::make_shared<WebDatasetStream>(expand_braces(spec.webdataset), seed);
  } else if (!spec.karpathy.empty()) {
    auto images = std::make_shared<std::vector<KarpathyImage>>();
    for (auto& k : read_karpathy(spec.karpathy, spec.image_root))
      if (k.split == "train" || k.split == "restval") images->push_back(std::move(k));
    auto pairs = std::make_shared<std::vector<std::pair<size_t, size_t>>>();
    for (size_t i = 0; i < images->size(); ++i)
      for (size_t c = 0; c < (*images)[i].captions.size(); ++c) pairs->emplace_back(i, c);
    s.n = kind == ExampleKind::kImage ? images->size() : pairs->size();
    s.item = [images, pairs, kind, decode](size_t i) {
      if (kind == ExampleKind::kImage) return Example{read_image((*images)[i].path, decode), ""};
      const auto& [img, cap] = (*pairs)[i];
      return Example{kind == ExampleKind::kText ? Image{} : read_image((*images)[img].path, decode),
                     (*images)[img].captions[cap]};
    };
  } else if (!spec.text.empty()) {
    std::vector<std::string> files;
    for (size_t start = 0; start <= spec.text.size();) {
      const size_t comma = std::min(spec.text.find(',', start), spec.text.size());
      for (const auto& f : expand_braces(spec.text.substr(start, comma - start))) files.push_back(f);
      start = comma + 1;
    }
    auto lines = std::make_shared<std::vector<std::string>>(read_text_corpus(files));
    s.n = lines->size();
    s.item = [lines](size_t i) { return Example{Image{}, (*lines)[i]}; };
  } else {
    auto files = std::make_shared<std::vector<std::string>>(list_images(spec.images));
    s.n = files->size();
    s.item = [files, decode](size_t i) { return Example{read_image((*files)[i], decode), ""}; };
  }
  return s;
}

}  // namespace

BatchFn source_batches(const SourceSpec& spec, ExampleKind kind, std::shared_ptr<const Tokenizer> tok,
                       const CollateOptions& co, int64_t batch, uint64_t seed) {
  if (batch < 1) throw Error(cat("batch size must be at least 1, got ", batch));
  const Source src = open_source(spec, kind, seed);
  std::shared_ptr<EpochOrder> order = src.n ? std::make_shared<EpochOrder>(src.n, seed) : nullptr;
  if (!src.stream && !order) throw Error("the data source has no examples");
  auto skipped = std::make_shared<std::atomic<int64_t>>(0);
  auto stream_mu = std::make_shared<std::mutex>();
  auto stream_pos = std::make_shared<int64_t>(0);
  return [=](int64_t index) {
    std::vector<Example> ex;
    if (src.stream) {
      std::lock_guard<std::mutex> lock(*stream_mu);
      for (; *stream_pos < index * batch; ++*stream_pos) src.stream->next();  // resume: skip ahead
      for (int64_t j = 0; j < batch; ++j, ++*stream_pos) ex.push_back(src.stream->next());
    } else {
      for (int64_t j = 0; j < batch; ++j) {
        for (int64_t g = index * batch + j;; g += static_cast<int64_t>(src.n)) {  // a corrupt item: the next epoch's
          try {
            ex.push_back(src.item(order->at(g)));
            break;
          } catch (const Error& e) {
            if (++*skipped > static_cast<int64_t>(src.n)) throw;
            std::cerr << "skipped corrupt sample: " << e.what() << "\n";
          }
        }
      }
    }
    for (auto& e : ex) {
      if (kind == ExampleKind::kText) e.image = Image{};
      if (kind == ExampleKind::kImage) e.text.clear();
    }
    return collate(ex, *tok, co, mix_seed(seed, static_cast<uint64_t>(index)));
  };
}

}  // namespace vlmo
