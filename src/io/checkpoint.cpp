#include "vlmo/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/upsampling.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/relative_position.h"

namespace vlmo {

WeightsFile read_weights_file(const std::string& path) {
  std::ifstream in = open_input(path, "weights", true);
  char magic[9] = {};
  in.read(magic, 9);
  if (in.gcount() >= 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0) return {read_torch_checkpoint(path), {}};
  // A legacy pickle starts with PROTO (0x80); so does a safetensors file whose 8-byte header
  // length has 0x80 as its low byte, but its JSON header then begins at byte 8.
  const bool safetensors_header = in.gcount() == 9 && magic[8] == '{';
  if (!safetensors_header && in.gcount() >= 1 && static_cast<unsigned char>(magic[0]) == 0x80)
    throw Error(cat(path, ": legacy (pre-1.6, non-zip) torch.save format; re-save it with "
                          "torch.save(..., _use_new_zipfile_serialization=True) or convert it"));
  SafetensorsFile f = read_safetensors(path);
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != "vlmo-train-checkpoint") return {std::move(f.tensors), std::move(f.metadata)};
  WeightsFile out{{}, std::move(f.metadata)};
  for (auto& [k, v] : f.tensors)
    if (k.rfind("model.", 0) == 0) out.tensors[k.substr(6)] = v;
  return out;
}

TensorMap model_state_dict(torch::nn::Module& model) {
  TensorMap out;
  for (const auto& p : model.named_parameters()) out[p.key()] = p.value();
  for (const auto& b : model.named_buffers()) out[b.key()] = b.value();
  return out;
}

std::string LoadReport::describe() const {
  std::ostringstream s;
  for (const auto& m : missing) s << "  missing:    " << m << "\n";
  for (const auto& u : unexpected) s << "  unexpected: " << u << "\n";
  for (const auto& m : mismatched) s << "  mis-shaped: " << m << "\n";
  for (const auto& r : resized) s << "  resized:    " << r << "\n";
  for (const auto& i : ignored) s << "  ignored:    " << i << "\n";
  return s.str();
}

namespace {

bool is_index_buffer(const std::string& key) {
  for (const char* name : {"relative_position_index", "text_relative_position_index", "text_imag_relative_position_index"}) {
    const std::string n(name);
    if (key == n ||
        (key.size() > n.size() && key.compare(key.size() - n.size(), n.size(), n) == 0 && key[key.size() - n.size() - 1] == '.'))
      return true;
  }
  return false;
}

std::string shape_str(const at::Tensor& t) { return cat(t.sizes()); }

// Adapts position tables of a checkpoint made at another image size / text length.
void resize_for(const Config& cfg, TensorMap& w, const TensorMap& model, LoadReport& report) {
  auto it = w.find("relative_position_bias_table");
  auto mt = model.find("relative_position_bias_table");
  if (it != w.end() && mt != model.end() && it->second.dim() == 2 && it->second.size(0) != mt->second.size(0) &&
      it->second.size(1) == mt->second.size(1)) {
    const int64_t image_rows = it->second.size(0) - 3 - 2 * cfg.max_text_len_of_initckpt - 2;
    const auto side = static_cast<int64_t>(std::llround(std::sqrt(std::max<int64_t>(image_rows, 0))));
    if (image_rows > 0 && side * side == image_rows && side % 2 == 1) {
      const int src_grid = static_cast<int>((side + 1) / 2);
      it->second = resize_relative_position_table(it->second, src_grid, cfg.grid());
      report.resized.push_back(cat("relative_position_bias_table: image rows ", src_grid, "x", src_grid, " -> ", cfg.grid(), "x",
                                   cfg.grid(), " patches"));
    }
  }
  it = w.find("transformer.pos_embed");
  mt = model.find("transformer.pos_embed");
  if (it != w.end() && mt != model.end() && it->second.dim() == 3 && it->second.size(1) != mt->second.size(1) &&
      it->second.size(2) == mt->second.size(2)) {
    const at::Tensor& src = it->second;
    const int64_t n = src.size(1) - 1, D = src.size(2);
    const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
    if (side * side == n) {
      at::Tensor grid = src.narrow(1, 1, n).reshape({-1, side, side, D}).permute({0, 3, 1, 2});
      const int64_t dst = cfg.grid();
      at::Tensor resized = torch::nn::functional::interpolate(grid.to(at::kFloat), torch::nn::functional::InterpolateFuncOptions()
                                                                                       .size(std::vector<int64_t>{dst, dst})
                                                                                       .mode(torch::kBicubic)
                                                                                       .align_corners(false));
      resized = resized.permute({0, 2, 3, 1}).flatten(1, 2).to(src.scalar_type());
      it->second = at::cat({src.narrow(1, 0, 1), resized}, 1);
      report.resized.push_back(cat("transformer.pos_embed: ", side, "x", side, " -> ", dst, "x", dst, " patches (bicubic)"));
    }
  }
  // NLVR2 models have a third token type, made after loading as a copy of the image row.
  it = w.find("token_type_embeddings.weight");
  mt = model.find("token_type_embeddings.weight");
  if (it != w.end() && mt != model.end() && it->second.dim() == 2 && it->second.size(0) == 2 && mt->second.size(0) == 3 &&
      it->second.size(1) == mt->second.size(1)) {
    it->second = at::cat({it->second, it->second.narrow(0, 1, 1)}, 0);
    report.resized.push_back("token_type_embeddings: row 2 (second NLVR2 image) copied from row 1");
  }
  for (const char* key : {"text_embeddings.position_embeddings.weight", "text_embeddings.position_ids"}) {
    const bool ids = std::strstr(key, "position_ids") != nullptr;
    it = w.find(key);
    mt = model.find(key);
    const int dim = ids ? 1 : 0;
    if (it != w.end() && mt != model.end() && it->second.dim() == mt->second.dim() &&
        it->second.size(dim) > mt->second.size(dim)) {
      report.resized.push_back(cat(key, ": truncated from ", it->second.size(dim), " to ", mt->second.size(dim), " positions"));
      it->second = it->second.narrow(dim, 0, mt->second.size(dim));
    }
  }
}

}  // namespace

LoadReport load_weights(VLMo& model, TensorMap weights, bool strict) {
  LoadReport report;
  TensorMap target = model_state_dict(*model);
  for (auto it = weights.begin(); it != weights.end();) {
    if (is_index_buffer(it->first)) {
      report.ignored.push_back(it->first);
      it = weights.erase(it);
    } else {
      ++it;
    }
  }
  resize_for(model->config(), weights, target, report);
  for (const auto& [name, t] : target) {
    auto it = weights.find(name);
    if (it == weights.end()) report.missing.push_back(name);
    else if (it->second.sizes() != t.sizes())
      report.mismatched.push_back(cat(name, ": file ", shape_str(it->second), " vs model ", shape_str(t)));
  }
  for (const auto& [name, t] : weights)
    if (!target.count(name)) report.unexpected.push_back(name);
  if (strict && !report.clean())
    throw Error(cat("strict load failed: ", report.missing.size(), " missing, ", report.unexpected.size(), " unexpected, ",
                    report.mismatched.size(), " mis-shaped tensors\n", report.describe()));
  torch::NoGradGuard guard;
  for (auto& [name, t] : target) {
    auto it = weights.find(name);
    if (it != weights.end() && it->second.sizes() == t.sizes()) t.copy_(it->second);
  }
  return report;
}

}  // namespace vlmo

namespace vlmo {

TensorMap beit_to_vlmo(const TensorMap& beit, int64_t table_rows) {
  TensorMap out;
  std::map<int, at::Tensor> tables;
  for (const auto& [k, v] : beit) {
    if (k.find("relative_position_index") != std::string::npos) continue;
    if (k.rfind("blocks.", 0) == 0) {
      const size_t dot = k.find('.', 7);
      const int layer = std::stoi(k.substr(7, dot - 7));
      std::string rest = k.substr(dot + 1);
      if (rest == "attn.relative_position_bias_table") {
        tables[layer] = v;
        continue;
      }
      if (rest.rfind("mlp.", 0) == 0) rest = "mlp_imag." + rest.substr(4);
      else if (rest.rfind("norm2.", 0) == 0) rest = "norm2_imag." + rest.substr(6);
      out[cat("transformer.blocks.", layer, ".", rest)] = v;
      continue;
    }
    out["transformer." + k] = v;
  }
  if (!tables.empty()) {
    std::vector<at::Tensor> cols;
    for (int i = 0; i < static_cast<int>(tables.size()); ++i) {
      if (!tables.count(i)) throw Error(cat("BEiT checkpoint: layer ", i, " has no relative_position_bias_table"));
      cols.push_back(tables[i]);
    }
    const at::Tensor merged = at::cat(cols, 1);  // (rows, H * L): column = layer * H + head
    if (merged.size(0) > table_rows)
      throw Error(cat("BEiT checkpoint: relative table has ", merged.size(0), " rows, more than the model's ", table_rows));
    at::Tensor table = at::zeros({table_rows, merged.size(1)}, merged.options());
    table.narrow(0, 0, merged.size(0)).copy_(merged);
    out["relative_position_bias_table"] = table;
  }
  return out;
}

}  // namespace vlmo

namespace vlmo {

void adapt_config_to_weights(Config& cfg, const TensorMap& weights) {
  auto has_prefix = [&](const std::string& prefix) {
    auto it = weights.lower_bound(prefix);
    return it != weights.end() && it->first.compare(0, prefix.size(), prefix) == 0;
  };
  std::vector<std::string> heads;
  for (const auto& [head, prefix] : std::vector<std::pair<std::string, std::string>>{{"mlm", "mlm_score."},
                                                                                     {"itm", "itm_score."},
                                                                                     {"itc", "itc_text_proj."},
                                                                                     {"vqa", "vqa_classifier."},
                                                                                     {"nlvr2", "nlvr2_classifier."},
                                                                                     {"mim", "mim_head."}})
    if (has_prefix(prefix)) heads.push_back(head);
  cfg.heads = heads;
  if (auto it = weights.find("vqa_classifier.3.weight"); it != weights.end() && it->second.dim() == 2)
    cfg.vqav2_label_size = static_cast<int>(it->second.size(0));
  if (auto it = weights.find("token_type_embeddings.weight"); it != weights.end() && it->second.dim() == 2)
    cfg.num_token_types = static_cast<int>(it->second.size(0));
}

namespace {
// An answer list as JSON text: an array of distinct strings; `where` names its source.
std::vector<std::string> parse_answer_list(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(cat(where, ": not valid JSON (", e.what(), ")"));
  }
  if (!j.is_array()) throw Error(cat(where, ": expected a JSON array of answer strings in label order"));
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_string()) throw Error(cat(where, ": entry ", i, " is not a string"));
    out.push_back(j[i].get<std::string>());
    if (!seen.insert(out.back()).second)
      throw Error(cat(where, ": entry ", i, " (\"", out.back(), "\") repeats an earlier answer"));
  }
  if (out.empty()) throw Error(cat(where, ": the answer list is empty"));
  return out;
}
}  // namespace

std::vector<std::string> read_answer_list(const std::string& path) {
  std::ifstream in = open_input(path, "answer list JSON");
  std::stringstream text;
  text << in.rdbuf();
  return parse_answer_list(text.str(), path);
}

Config model_config(const std::string& path, const std::map<std::string, std::string>& metadata, const ModelSpec& spec) {
  Config cfg;
  if (!spec.config_path.empty()) {
    cfg = load_config(spec.config_path);
  } else if (!spec.preset.empty()) {
    cfg = Config::preset(spec.preset);
  } else if (auto it = metadata.find("config"); it != metadata.end()) {
    cfg = config_from_json_text(it->second, path + " (config)");
  } else {
    throw Error(cat(path, ": no model config recorded in the file (an official checkpoint?): give --config "
                          "CONFIG.json or --preset {base,base_plus,large}"));
  }
  if (spec.image_size > 0) cfg.image_size = spec.image_size;
  if (spec.max_text_len > 0) cfg.max_text_len = spec.max_text_len;
  return cfg;
}

LoadedModel load_model(const std::string& path, const ModelSpec& spec) {
  WeightsFile f = read_weights_file(path);
  Config cfg = model_config(path, f.metadata, spec);
  adapt_config_to_weights(cfg, f.tensors);
  cfg.validate();
  LoadedModel out;
  out.model = VLMo(cfg);
  init_weights(out.model, 0);
  out.report = load_weights(out.model, std::move(f.tensors), /*strict=*/false);
  std::vector<std::string> missing;
  for (const auto& m : out.report.missing)
    if (m != "text_embeddings.position_ids") missing.push_back(m);  // a buffer equal to arange
  if (!missing.empty() || !out.report.mismatched.empty()) {
    LoadReport bad;
    bad.missing = missing;
    bad.mismatched = out.report.mismatched;
    throw Error(cat(path, ": the weights do not fit the model of this config (", missing.size(), " missing, ",
                    bad.mismatched.size(), " mis-shaped tensors); check --config / --preset\n", bad.describe()));
  }
  out.model->eval();
  out.metadata = std::move(f.metadata);
  if (cfg.has_head("vqa")) {
    if (!spec.answers_path.empty()) {
      out.vqa_answers = read_answer_list(spec.answers_path);
    } else if (auto it = out.metadata.find("vqa_answers"); it != out.metadata.end()) {
      out.vqa_answers = parse_answer_list(it->second, path + " (metadata vqa_answers)");
    }
    const std::string where = spec.answers_path.empty() ? path + " (vqa_answers)" : spec.answers_path;
    if (!out.vqa_answers.empty() && static_cast<int>(out.vqa_answers.size()) != cfg.vqav2_label_size)
      throw Error(
          cat(where, ": ", out.vqa_answers.size(), " answers, but the VQA classifier has ", cfg.vqav2_label_size, " labels"));
  } else if (!spec.answers_path.empty()) {
    throw Error(cat(path, ": --answers given, but the model has no VQA head (vqa_classifier.*)"));
  }
  return out;
}

void save_model(const std::string& path, VLMo& model, const std::vector<std::string>& vqa_answers,
                std::map<std::string, std::string> metadata) {
  metadata["format"] = "vlmo-weights";
  metadata["config"] = config_to_json_text(model->config());
  if (!vqa_answers.empty()) {
    if (static_cast<int>(vqa_answers.size()) != model->config().vqav2_label_size)
      throw Error(
          cat(path, ": ", vqa_answers.size(), " answers for a classifier of ", model->config().vqav2_label_size, " labels"));
    metadata["vqa_answers"] = nlohmann::json(vqa_answers).dump();
  }
  write_safetensors(path, model_state_dict(*model), metadata);
}

}  // namespace vlmo
