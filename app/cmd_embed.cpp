// The dual encoder from the command line: vlmo embed (images or texts -> L2-normalised vectors
// in a safetensors file with their ids) and vlmo search (top-k of such a file for text or image
// queries, by cosine similarity).
#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "common.h"
#include "vlmo/data.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/image.h"
#include "vlmo/image_collection.h"
#include "vlmo/image_tensor.h"
#include "vlmo/safetensors.h"
#include "vlmo/signals.h"
#include "vlmo/sources.h"
#include "vlmo/tasks.h"
#include "vlmo/vector_index.h"

namespace vlmo::cli {
namespace {

namespace fs = std::filesystem;

void print_progress(int64_t done, int64_t total, int64_t embedded, double seconds, bool tty) {
  const double rate = seconds > 0 ? static_cast<double>(embedded) / seconds : 0;
  std::string line = cat("embed: ", done, total > 0 ? cat("/", total) : std::string(), " images, ",
                         static_cast<int64_t>(rate * 10) / 10.0, " images/s");
  if (total > 0 && rate > 0) line += cat(", ETA ", static_cast<int64_t>(static_cast<double>(total - done) / rate), " s");
  std::fprintf(stderr, tty ? "\r%s\033[K" : "%s\n", line.c_str());
}

void print_summary(const Args& a, const EmbeddingFolderWriter& folder, int64_t start_at) {
  const std::string out = a.get("out");
  const size_t chunks = folder.manifest()["chunks"].size(), skipped = folder.manifest()["skipped"].size();
  if (a.get_flag("json"))
    std::cout << nlohmann::json{{"out", out},
                                {"chunks", chunks},
                                {"embedded", folder.vectors()},
                                {"skipped", skipped},
                                {"resumed_after", start_at}}
                     .dump()
              << "\n";
  else
    std::cout << "embedded " << folder.vectors() << " images into " << chunks << " chunk files in " << out << " (" << skipped
              << " skipped" << (start_at > 0 ? cat(", resumed after ", start_at) : std::string())
              << "); build an index: vlmo index build --embeddings " << out << " --out INDEX.safetensors\n";
}

// Images, folders and shards into a folder of resumable chunk files (vlmo/image_collection.h);
// unreadable images are skipped and listed in the manifest.
int embed_collection(const Args& a) {
  const std::string out = a.get("out");
  const ImageCollection col(a.positional);
  EmbeddingFolderWriter folder(out, a.get("model"), col.inputs(), a.get_int64("chunk"));
  if (folder.complete()) {
    std::cout << out << ": already complete (" << folder.manifest()["chunks"].size() << " chunks); nothing to do\n";
    return 0;
  }
  const int64_t start_at = folder.items_done();
  LoadedModel m = load_model_from(a);
  require_head(m.model, "itc");
  const int size = m.model->config().image_size;
  const int64_t batch = a.get_int64("batch-size");
  const bool progress = !a.get_flag("quiet"), tty = progress && ::isatty(2);
  if (start_at > 0 && progress)
    std::fprintf(stderr, "embed: resuming %s after %lld images\n", out.c_str(), static_cast<long long>(start_at));
  DecodeOptions decode;
  decode.target_size = a.get_flag("fast-decode") ? size : 0;

  at::NoGradGuard guard;
  std::vector<std::string> pending_ids;
  std::vector<at::Tensor> pix;
  int64_t embedded = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto run_batch = [&] {
    if (pix.empty()) return;
    folder.add(pending_ids, encode_images(m.model, at::stack(pix), batch));
    embedded += static_cast<int64_t>(pix.size());
    pix.clear();
    pending_ids.clear();
  };
  auto write_chunk = [&] {
    run_batch();
    folder.write_chunk();
    if (progress)
      print_progress(folder.consumed(), col.size_if_known(), embedded,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), tty);
  };
  install_stop_handlers();
  col.each(start_at, [&](const std::string& id, const std::string& path, const std::string& bytes) {
    if (stop_requested()) return;
    try {
      const Image img = bytes.empty() ? read_image(path, decode) : decode_image(bytes, id, decode);
      pix.push_back(eval_transform(img, size));
      pending_ids.push_back(id);
    } catch (const Error& e) {
      folder.skip(id, e.what());
      if (progress) std::fprintf(stderr, "%sembed: skipped %s: %s\n", tty ? "\r\033[K" : "", id.c_str(), e.what());
    }
    folder.consume();
    if (static_cast<int64_t>(pix.size()) >= batch) run_batch();
    if (folder.at_chunk_end()) write_chunk();
  });
  if (const int sig = stop_requested()) {
    write_chunk();  // what was embedded is kept; the next run resumes after it
    if (tty) std::fprintf(stderr, "\n");
    throw Interrupted(sig, cat("interrupted by signal ", sig, " after ", folder.consumed(), " images; they are kept in ", out,
                               " (run the same command again to continue)"));
  }
  write_chunk();
  folder.finish();
  if (tty) std::fprintf(stderr, "\n");
  print_summary(a, folder, start_at);
  return 0;
}

int run_embed(const Args& a) {
  if (a.get("out").empty()) throw Error("--out EMBEDDINGS.safetensors (or a folder, for chunks) is required");
  const bool to_folder = a.get("out").size() < 12 || a.get("out").substr(a.get("out").size() - 12) != ".safetensors";
  if (to_folder) {
    if (a.positional.empty())
      throw Error("embedding into a folder (--out without .safetensors) takes images, folders or .tar shards");
    return embed_collection(a);
  }
  for (const auto& p : a.positional)
    if (fs::is_directory(p) || is_shard_file(p))
      throw Error(
          cat(p, ": folders and .tar shards are embedded in chunks into a folder: give --out DIR (not a .safetensors file)"));
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
    std::cout
        << nlohmann::json{{"embedded", ids.size()}, {"modality", modality}, {"dim", all.size(1)}, {"out", a.get("out")}}.dump()
        << "\n";
  else
    std::cout << "embedded " << ids.size() << " " << modality << "s (" << all.size(1) << "-d, L2-normalised) into "
              << a.get("out") << "\n";
  return 0;
}

}  // namespace

Command embed_command() {
  Command c{
      "embed",
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

}  // namespace vlmo::cli
