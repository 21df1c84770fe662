// The VLMo hyper-parameters, under the official names (reference §1.1), with the presets
// base / base_plus / large, JSON reading and writing, and validation that names the field.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace vlmo {

// Task heads a model can carry. The official decides this from `loss_names`; we list heads.
// "itc" = itc_{text,image,vl_text,vl_image}_proj + logit scales. "mim" (not official, not in
// the default list) = the masked-image-modelling head of our built-in stage 1.
inline const std::vector<std::string>& all_heads() {
  static const std::vector<std::string> kHeads = {"mlm", "itm", "itc", "vqa", "nlvr2"};
  return kHeads;
}

struct Config {
  int embed_dim = 768;
  int depth = 12;
  int num_heads = 12;
  double mlp_ratio = 4.0;
  int patch_size = 16;
  int image_size = 224;
  int vlffn_start_layer_index = 10;
  int max_text_len = 40;
  int max_text_len_of_initckpt = 196;
  int vocab_size = 30522;
  bool use_abs_pos_emb = false;
  bool need_relative_position_embed = true;
  std::optional<double> layer_scale_init_values = 0.1;  // null: no layer scale (gamma = 1)
  int vqav2_label_size = 3129;
  int num_token_types = 2;  // 3 for NLVR2 models
  double drop_path_rate = 0.1;
  std::vector<std::string> heads = all_heads();

  static Config base();
  static Config base_plus();
  static Config large();
  // "base", "base_plus" (or "base-plus"), "large"; throws naming the known presets.
  static Config preset(const std::string& name);

  // Derived sizes.
  int head_dim() const { return embed_dim / num_heads; }
  int mlp_hidden() const { return static_cast<int>(embed_dim * mlp_ratio); }
  int grid() const { return image_size / patch_size; }    // W
  int num_patches() const { return grid() * grid(); }     // W^2
  int image_tokens() const { return num_patches() + 1; }  // W^2 + [CLS]
  int fusion_tokens() const { return max_text_len + image_tokens(); }
  bool has_head(const std::string& h) const;
  // Rows of the merged relative-position table (reference §1.4).
  int num_relative_distance() const { return (2 * grid() - 1) * (2 * grid() - 1) + 3; }
  int relative_table_rows() const { return num_relative_distance() + 2 * max_text_len_of_initckpt + 2; }

  // Throws vlmo::Error naming the field for impossible values.
  void validate() const;
};

// JSON. Unknown fields are errors naming the field; missing fields keep the defaults of
// `base` (the official defaults). `where` names the source in messages.
Config config_from_json_text(const std::string& text, const std::string& where);
Config load_config(const std::string& path);
std::string config_to_json_text(const Config& c);

}  // namespace vlmo
