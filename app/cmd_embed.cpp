// The dual encoder from the command line: vlmo embed (images or texts -> L2-normalised vectors
// in a safetensors file with their ids) and vlmo search (top-k of such a file for text or image
// queries, by cosine similarity).
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <unistd.h>

#include "common.h"
#include "vlmo/vector_index.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/safetensors.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"

namespace vlmo::cli {
namespace {

namespace fs = std::filesystem;

bool is_tar(const std::string& path) { return fs::path(path).extension() == ".tar"; }

// The images of a collection, in a fixed order: image files as given, every image file below a
// folder (sorted), and the image members of WebDataset .tar shards (in archive order; the id is
// "SHARD.tar/MEMBER"). visit(id, bytes-or-path) is called for items from `skip` on; a tar is
// read only when some of its items are still to come.
struct Collection {
  std::vector<std::string> inputs;
  std::vector<std::string> files;  // image files (given or found in folders), then shards
  explicit Collection(const std::vector<std::string>& in) : inputs(in) {
    for (const auto& p : in) {
      if (fs::is_directory(p)) {
        const std::vector<std::string> found = list_images(p);
        files.insert(files.end(), found.begin(), found.end());
      } else if (!fs::exists(p)) {
        throw Error(cat(p, ": no such file or folder"));
      } else {
        files.push_back(p);
      }
    }
  }
  // f(index, id, path, bytes): bytes are set for tar members; files are read by the callee.
  template <class F>
  void each(int64_t skip, F&& f) const {
    int64_t index = 0;
    for (const auto& p : files) {
      if (!is_tar(p)) {
        if (index >= skip) f(index, p, p, std::string());
        ++index;
        continue;
      }
      TarReader tar(p);
      TarEntry e;
      while (tar.next(e))
        if (is_image_file_name(e.name)) {
          if (index >= skip) f(index, p + "/" + e.name, p, e.data);
          ++index;
        }
    }
  }
};

void print_progress(int64_t done, int64_t total, int64_t embedded, double seconds, bool tty) {
  const double rate = seconds > 0 ? static_cast<double>(embedded) / seconds : 0;
  std::string line = cat("embed: ", done, total > 0 ? cat("/", total) : std::string(), " images, ",
                         static_cast<int64_t>(rate * 10) / 10.0, " images/s");
  if (total > 0 && rate > 0) line += cat(", ETA ", static_cast<int64_t>(static_cast<double>(total - done) / rate), " s");
  std::fprintf(stderr, tty ? "\r%s\033[K" : "%s\n", line.c_str());
}

// Images into a folder of chunk files (embeddings-NNNNN.safetensors, --chunk images each) with
// a manifest recording what is done; a run that stops (killed, power cut) resumes after the last
// chunk written. Unreadable images are skipped and listed in the manifest.
int embed_collection(const Args& a) {
  const std::string out = a.get("out");
  const Collection col(a.positional);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (!fs::is_directory(out)) throw Error(cat(out, ": cannot make the output folder (", ec.message(), ")"));
  const std::string manifest_path = out + "/manifest.json";
  FileLock lock(manifest_path, "embedding folder (--out)");
  const int64_t chunk = a.get_int64("chunk");
  nlohmann::json manifest = {{"format", "vlmo-embeddings"}, {"model", a.get("model")}, {"inputs", col.inputs},
                             {"chunk", chunk}, {"items_done", 0}, {"chunks", nlohmann::json::array()},
                             {"skipped", nlohmann::json::array()}, {"complete", false}};
  if (fs::exists(manifest_path)) {
    const nlohmann::json old = nlohmann::json::parse(read_input(manifest_path, "embedding manifest"), nullptr, false);
    if (old.is_discarded() || old.value("format", "") != "vlmo-embeddings")
      throw Error(cat(manifest_path, ": not a manifest of vlmo embed"));
    if (old["inputs"] != manifest["inputs"] || old["chunk"] != manifest["chunk"] || old["model"] != manifest["model"])
      throw Error(cat(out, ": holds embeddings of other inputs, model or --chunk (see manifest.json); use another --out"));
    manifest = old;
    if (manifest["complete"].get<bool>()) {
      std::cout << out << ": already complete (" << manifest["chunks"].size() << " chunks); nothing to do\n";
      return 0;
    }
  }
  const int64_t start_at = manifest["items_done"].get<int64_t>();
  const bool resuming = start_at > 0;
  LoadedModel m = load_model_from(a);
  require_head(m.model, "itc");
  const int size = m.model->config().image_size;
  const int64_t batch = a.get_int64("batch-size");
  const bool progress = !a.get_flag("quiet"), tty = progress && ::isatty(2);
  const bool tars = std::any_of(col.files.begin(), col.files.end(), is_tar);
  const int64_t total = tars ? -1 : static_cast<int64_t>(col.files.size());
  if (resuming && progress) std::fprintf(stderr, "embed: resuming %s after %lld images\n", out.c_str(), static_cast<long long>(start_at));
  DecodeOptions decode;
  decode.target_size = a.get_flag("fast-decode") ? size : 0;

  at::NoGradGuard guard;
  std::vector<std::string> ids, pending_ids;
  std::vector<at::Tensor> pix, feats;
  int64_t consumed = start_at, embedded = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto run_batch = [&] {
    if (pix.empty()) return;
    feats.push_back(encode_images(m.model, at::stack(pix), batch));
    ids.insert(ids.end(), pending_ids.begin(), pending_ids.end());
    embedded += static_cast<int64_t>(pix.size());
    pix.clear();
    pending_ids.clear();
  };
  int64_t written_up_to = -1;
  auto write_chunk = [&] {
    run_batch();
    if (consumed == written_up_to) return;  // nothing new since the last chunk
    written_up_to = consumed;
    const size_t n = manifest["chunks"].size();
    char name[64];
    std::snprintf(name, sizeof name, "embeddings-%05zu.safetensors", n);
    if (!ids.empty()) {
      write_safetensors(out + "/" + name, {{"embeddings", at::cat(feats)}},
                        {{"ids", nlohmann::json(ids).dump()}, {"modality", "image"}, {"model", a.get("model")}});
      manifest["chunks"].push_back({{"file", name}, {"count", ids.size()}});
    }
    manifest["items_done"] = consumed;
    write_file_atomic(manifest_path, manifest.dump(1) + "\n");  // after the chunk: a kill in between redoes the chunk
    ids.clear();
    feats.clear();
    if (progress) print_progress(consumed, total, embedded, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), tty);
  };
  install_stop_handlers();
  col.each(start_at, [&](int64_t, const std::string& id, const std::string& path, const std::string& bytes) {
    if (stop_requested()) return;
    try {
      const Image img = bytes.empty() ? read_image(path, decode) : decode_image(bytes, id, decode);
      pix.push_back(eval_transform(img, size));
      pending_ids.push_back(id);
    } catch (const Error& e) {
      manifest["skipped"].push_back({{"id", id}, {"reason", e.what()}});
      if (progress) std::fprintf(stderr, "%sembed: skipped %s: %s\n", tty ? "\r\033[K" : "", id.c_str(), e.what());
    }
    ++consumed;
    if (static_cast<int64_t>(pix.size()) >= batch) run_batch();
    // Chunks end at multiples of --chunk input items, so that a resumed run (whose first chunk
    // completes the one an interruption cut short) keeps the same items in the same order.
    if (consumed % chunk == 0) write_chunk();
  });
  if (const int sig = stop_requested()) {
    write_chunk();  // what was embedded is kept; the next run resumes after it
    if (tty) std::fprintf(stderr, "\n");
    throw Interrupted(sig, cat("interrupted by signal ", sig, " after ", consumed, " images; they are kept in ", out,
                               " (run the same command again to continue)"));
  }
  write_chunk();
  manifest["complete"] = true;
  write_file_atomic(manifest_path, manifest.dump(1) + "\n");
  if (tty) std::fprintf(stderr, "\n");
  int64_t vectors = 0;
  for (const auto& c : manifest["chunks"]) vectors += c["count"].get<int64_t>();
  const nlohmann::json summary = {{"out", out}, {"chunks", manifest["chunks"].size()}, {"embedded", vectors},
                                  {"skipped", manifest["skipped"].size()}, {"resumed_after", start_at}};
  if (a.get_flag("json"))
    std::cout << summary.dump() << "\n";
  else
    std::cout << "embedded " << vectors << " images into " << manifest["chunks"].size() << " chunk files in " << out << " ("
              << manifest["skipped"].size() << " skipped" << (resuming ? cat(", resumed after ", start_at) : std::string())
              << "); build an index: vlmo index build --embeddings " << out << " --out INDEX.safetensors\n";
  return 0;
}

int run_embed(const Args& a) {
  if (a.get("out").empty()) throw Error("--out EMBEDDINGS.safetensors (or a folder, for chunks) is required");
  const bool to_folder = a.get("out").size() < 12 || a.get("out").substr(a.get("out").size() - 12) != ".safetensors";
  if (to_folder) {
    if (a.positional.empty()) throw Error("embedding into a folder (--out without .safetensors) takes images, folders or .tar shards");
    return embed_collection(a);
  }
  for (const auto& p : a.positional)
    if (fs::is_directory(p) || is_tar(p))
      throw Error(cat(p, ": folders and .tar shards are embedded in chunks into a folder: give --out DIR (not a .safetensors file)"));
  const bool images = !a.positional.empty();
  if (images == !a.get("input").empty()) throw Error("give image files or --input texts.jsonl (exactly one of them)");
  LoadedModel m = load_model_from(a);
  require_head(m.model, "itc");
  const Tokenizer tok = tokenizer_for(a, m);
  const int64_t batch = a.get_int64("batch-size");
  std::vector<std::string> ids;
  std::vector<at::Tensor> feats;
  at::NoGradGuard guard;
  if (images) {
    for (size_t i = 0; i < a.positional.size(); i += batch) {
      std::vector<at::Tensor> pix;
      for (size_t j = i; j < std::min(a.positional.size(), i + batch); ++j) {
        pix.push_back(prepared_image(a.positional[j], m.model->config().image_size));
        ids.push_back(a.positional[j]);
      }
      feats.push_back(encode_images(m.model, at::stack(pix), batch));
    }
  } else {
    std::vector<std::string> texts;
    for (const auto& r : read_requests(a, {"text"})) {
      if (!r.error.empty()) throw Error(cat(a.get("input"), ":", r.line, ": ", r.error));
      texts.push_back(prepared_text(r.value["text"].get<std::string>()));
      const auto& id = r.value.contains("id") ? r.value["id"] : nlohmann::json(std::to_string(ids.size()));
      ids.push_back(id.is_string() ? id.get<std::string>() : id.dump());
    }
    const auto [t, mask] = encode_batch(tok, texts, m.model->config().max_text_len);
    feats.push_back(encode_texts(m.model, t, mask, batch));
  }
  const at::Tensor all = at::cat(feats);
  const std::string modality = images ? "image" : "text";
  write_safetensors(a.get("out"), {{"embeddings", all}},
                    {{"ids", nlohmann::json(ids).dump()}, {"modality", modality}, {"model", a.get("model")}});
  if (a.get_flag("json"))
    std::cout << nlohmann::json{{"embedded", ids.size()}, {"modality", modality}, {"dim", all.size(1)}, {"out", a.get("out")}}.dump() << "\n";
  else
    std::cout << "embedded " << ids.size() << " " << modality << "s (" << all.size(1) << "-d, L2-normalised) into " << a.get("out") << "\n";
  return 0;
}

int run_search(const Args& a) {
  LoadedModel m = load_model_from(a);
  const Tokenizer tok = tokenizer_for(a, m);
  if (a.get("index").empty()) throw Error("--index EMBEDDINGS.safetensors (from vlmo embed or vlmo index build) is required");
  const VectorIndex index = VectorIndex::open(a.get("index"));
  at::NoGradGuard guard;
  return answer_requests(a, search_task(m, tok, index, prepared_image, a.get_int64("top-k"), 1 << 20));
}

}  // namespace

Command embed_command() {
  Command c{"embed",
            "Embed images or texts with the dual encoder into L2-normalised vectors: image files, folders or WebDataset .tar "
            "shards into a folder of resumable chunk files; or images / --input texts (JSON lines with \"text\", optional \"id\") "
            "into one file.",
            "vlmo embed --model M --out DIR (IMAGE | FOLDER | SHARD.tar)...  |  vlmo embed --model M --out EMB.safetensors "
            "(IMAGE... | --input texts.jsonl)"};
  c.options = model_options();
  for (const auto& o : request_options()) c.options.push_back(o);
  c.options.push_back({"out", "", "output: an embedding file (.safetensors), or a folder of resumable chunks"});
  c.options.push_back(integer_option("chunk", "10000", "images per chunk file (folder output)", 1));
  c.options.push_back({"fast-decode", "false", "let JPEG decoding downscale large images (faster, not PIL-exact)", true});
  c.options.push_back({"quiet", "false", "no progress line", true});
  c.max_positional = 1u << 30;
  c.run = run_embed;
  return c;
}

Command search_command() {
  Command c{"search", "Search an embedded collection with a text (image index) or an image (text index): top-k ids with cosine scores.",
            "vlmo search --model M --index EMB.safetensors (--text Q | --image I | --input queries.jsonl)"};
  c.options = model_options();
  for (const auto& o : request_options()) c.options.push_back(o);
  for (const Option& o : std::vector<Option>{{"index", "", "embedding file from vlmo embed"}, {"text", "", "text query"},
                                             {"image", "", "image query"}, integer_option("top-k", "5", "results to show", 1)})
    c.options.push_back(o);
  c.run = run_search;
  return c;
}

}  // namespace vlmo::cli
