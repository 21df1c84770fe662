#include "vlmo/config.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "vlmo/error.h"
#include "vlmo/files.h"

namespace vlmo {

Config Config::base() { return Config{}; }

Config Config::base_plus() {
  Config c;
  c.embed_dim = 544;
  c.depth = 24;
  c.num_heads = 16;
  c.vlffn_start_layer_index = 21;
  c.use_abs_pos_emb = true;
  c.need_relative_position_embed = false;
  c.layer_scale_init_values = std::nullopt;
  return c;
}

Config Config::large() {
  Config c;
  c.embed_dim = 1024;
  c.depth = 24;
  c.num_heads = 16;
  c.vlffn_start_layer_index = 21;
  return c;
}

Config Config::preset(const std::string& name) {
  if (name == "base") return base();
  if (name == "base_plus" || name == "base-plus") return base_plus();
  if (name == "large") return large();
  throw Error(cat("unknown preset \"", name, "\" (expected base, base_plus or large)"));
}

bool Config::has_head(const std::string& h) const { return std::find(heads.begin(), heads.end(), h) != heads.end(); }

void Config::validate() const {
  auto fail = [](const std::string& field, const std::string& why) { throw Error(cat("config field \"", field, "\": ", why)); };
  if (embed_dim <= 0) fail("embed_dim", cat("must be positive, got ", embed_dim));
  if (depth <= 0) fail("depth", cat("must be positive, got ", depth));
  if (num_heads <= 0) fail("num_heads", cat("must be positive, got ", num_heads));
  if (embed_dim % num_heads != 0) fail("num_heads", cat(num_heads, " heads do not divide embed_dim ", embed_dim));
  if (!(mlp_ratio > 0) || embed_dim * mlp_ratio < 1) fail("mlp_ratio", cat("must give a positive hidden width, got ", mlp_ratio));
  if (patch_size <= 0) fail("patch_size", cat("must be positive, got ", patch_size));
  if (image_size <= 0) fail("image_size", cat("must be positive, got ", image_size));
  if (image_size % patch_size != 0) fail("image_size", cat(image_size, " is not divisible by patch_size ", patch_size));
  if (vlffn_start_layer_index < 1 || vlffn_start_layer_index > depth)
    fail("vlffn_start_layer_index", cat(vlffn_start_layer_index, " must lie in [1, depth=", depth, "] (depth means no VL-FFN)"));
  if (max_text_len < 1) fail("max_text_len", cat("must be at least 1, got ", max_text_len));
  if (max_text_len_of_initckpt < 2) fail("max_text_len_of_initckpt", cat("must be at least 2, got ", max_text_len_of_initckpt));
  if (need_relative_position_embed && max_text_len > max_text_len_of_initckpt)
    fail("max_text_len", cat(max_text_len, " exceeds max_text_len_of_initckpt ", max_text_len_of_initckpt,
                             ": the relative table has no rows for it"));
  if (vocab_size < 1) fail("vocab_size", cat("must be positive, got ", vocab_size));
  if (layer_scale_init_values && !(*layer_scale_init_values > 0)) fail("layer_scale_init_values", "must be positive or null");
  if (vqav2_label_size < 1) fail("vqav2_label_size", cat("must be positive, got ", vqav2_label_size));
  if (num_token_types < 2 || num_token_types > 3)
    fail("num_token_types", cat("must be 2, or 3 for NLVR2, got ", num_token_types));
  if (!(drop_path_rate >= 0 && drop_path_rate < 1)) fail("drop_path_rate", cat("must lie in [0, 1), got ", drop_path_rate));
  for (const auto& h : heads)
    if (h != "mim" && std::find(all_heads().begin(), all_heads().end(), h) == all_heads().end())
      fail("heads", cat("unknown head \"", h, "\" (known: mlm itm itc vqa nlvr2 mim)"));
}

namespace {

template <typename T>
void read_field(const nlohmann::json& j, const std::string& key, T& out, const std::string& where) {
  try {
    out = j.get<T>();
  } catch (const std::exception&) {
    throw Error(cat(where, ": config field \"", key, "\" has the wrong type (", j.dump(), ")"));
  }
}

void read_int(const nlohmann::json& j, const std::string& key, int& out, const std::string& where) {
  if (!j.is_number_integer()) throw Error(cat(where, ": config field \"", key, "\" must be an integer, got ", j.dump()));
  out = j.get<int>();
}

}  // namespace

Config config_from_json_text(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(cat(where, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) throw Error(cat(where, ": a config must be a JSON object"));
  Config c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const auto& v = *it;
    if (k == "embed_dim") read_int(v, k, c.embed_dim, where);
    else if (k == "depth") read_int(v, k, c.depth, where);
    else if (k == "num_heads") read_int(v, k, c.num_heads, where);
    else if (k == "mlp_ratio") {
      if (!v.is_number()) throw Error(cat(where, ": config field \"mlp_ratio\" must be a number"));
      c.mlp_ratio = v.get<double>();
    } else if (k == "patch_size") read_int(v, k, c.patch_size, where);
    else if (k == "image_size") read_int(v, k, c.image_size, where);
    else if (k == "vlffn_start_layer_index") read_int(v, k, c.vlffn_start_layer_index, where);
    else if (k == "max_text_len") read_int(v, k, c.max_text_len, where);
    else if (k == "max_text_len_of_initckpt") read_int(v, k, c.max_text_len_of_initckpt, where);
    else if (k == "vocab_size") read_int(v, k, c.vocab_size, where);
    else if (k == "use_abs_pos_emb") {
      if (!v.is_boolean()) throw Error(cat(where, ": config field \"", k, "\" must be true or false"));
      c.use_abs_pos_emb = v.get<bool>();
    } else if (k == "need_relative_position_embed") {
      if (!v.is_boolean()) throw Error(cat(where, ": config field \"", k, "\" must be true or false"));
      c.need_relative_position_embed = v.get<bool>();
    } else if (k == "layer_scale_init_values") {
      if (v.is_null()) c.layer_scale_init_values = std::nullopt;
      else if (v.is_number()) c.layer_scale_init_values = v.get<double>();
      else throw Error(cat(where, ": config field \"", k, "\" must be a number or null"));
    } else if (k == "vqav2_label_size") read_int(v, k, c.vqav2_label_size, where);
    else if (k == "num_token_types") read_int(v, k, c.num_token_types, where);
    else if (k == "drop_path_rate") {
      if (!v.is_number()) throw Error(cat(where, ": config field \"", k, "\" must be a number"));
      c.drop_path_rate = v.get<double>();
    } else if (k == "heads") read_field(v, k, c.heads, where);
    else throw Error(cat(where, ": unknown config field \"", k, "\""));
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(cat(where, ": ", e.what()));
  }
  return c;
}

Config load_config(const std::string& path) {
  std::ifstream in = open_input(path, "model config JSON");
  std::stringstream ss;
  ss << in.rdbuf();
  return config_from_json_text(ss.str(), path);
}

std::string config_to_json_text(const Config& c) {
  nlohmann::json j = nlohmann::json::object();
  j["embed_dim"] = c.embed_dim;
  j["depth"] = c.depth;
  j["num_heads"] = c.num_heads;
  j["mlp_ratio"] = c.mlp_ratio;
  j["patch_size"] = c.patch_size;
  j["image_size"] = c.image_size;
  j["vlffn_start_layer_index"] = c.vlffn_start_layer_index;
  j["max_text_len"] = c.max_text_len;
  j["max_text_len_of_initckpt"] = c.max_text_len_of_initckpt;
  j["vocab_size"] = c.vocab_size;
  j["use_abs_pos_emb"] = c.use_abs_pos_emb;
  j["need_relative_position_embed"] = c.need_relative_position_embed;
  j["layer_scale_init_values"] = c.layer_scale_init_values ? nlohmann::json(*c.layer_scale_init_values) : nlohmann::json();
  j["vqav2_label_size"] = c.vqav2_label_size;
  j["num_token_types"] = c.num_token_types;
  j["drop_path_rate"] = c.drop_path_rate;
  j["heads"] = c.heads;
  return j.dump(2);
}

}  // namespace vlmo
