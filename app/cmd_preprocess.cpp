// vlmo preprocess: the evaluation transform of image files, written to safetensors.
#include <iostream>
#include <map>

#include "cli.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/image_tensor.h"
#include "vlmo/safetensors.h"

namespace vlmo::cli {
namespace {

int run_preprocess(const Args& a) {
  const int size = a.get_int("size");
  if (size <= 0) throw Error("--size must be a positive number of pixels");
  if (a.get("out").empty()) throw Error("vlmo preprocess: --out OUT.safetensors is required");
  DecodeOptions opt;
  opt.max_pixels = a.get_int64("max-pixels");
  if (a.get_flag("fast")) opt.target_size = size;
  check_output_path(a.get("out"), "--out");
  TensorMap out;
  std::map<std::string, std::string> source_of;  // tensor name -> input path
  for (const auto& path : a.positional) {
    const std::string name = path.substr(path.find_last_of('/') + 1) + "@" + std::to_string(size);
    auto [it, fresh] = source_of.emplace(name, path);
    if (!fresh)
      throw Error(cat(it->second, " and ", path, " would both be stored as \"", name,
                      "\" (tensors are named by file name): preprocess them into separate files"));
    out[name] = eval_transform(read_image(path, opt), size);
    std::cerr << "preprocessed " << path << " -> " << name << "\n";
  }
  write_safetensors(a.get("out"), out, {{"transform", a.get_flag("fast") ? "fast" : "square_transform"}});
  return 0;
}

}  // namespace

Command preprocess_command() {
  Command c;
  c.name = "preprocess";
  c.summary = "Apply VLMo's evaluation transform (PIL-exact bicubic resize to SIZE x SIZE, scale to "
              "[0,1], normalise with mean 0.5 and std 0.5) to JPEG / PNG / WebP files and write each "
              "as an F32 [3,SIZE,SIZE] tensor named <file name>@<SIZE>.";
  c.usage = "vlmo preprocess --size S --out OUT.safetensors IMAGE...";
  c.options = {integer_option("size", "224", "output side in pixels", 1, 8192),
               {"out", "", "output safetensors file"},
               integer_option("max-pixels", "178956970", "refuse larger images (decompression bomb guard)", 1),
               {"fast", "false", "reduced-scale JPEG decoding (faster, not PIL-exact)", true}};
  c.min_positional = 1;
  c.max_positional = 1u << 30;
  c.run = run_preprocess;
  return c;
}

}  // namespace vlmo::cli
