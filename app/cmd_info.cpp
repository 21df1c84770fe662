// vlmo info: architecture and parameter counts of a preset or config.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "vlmo/error.h"
#include "vlmo/model.h"

namespace vlmo::cli {
namespace {

std::string millions(int64_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%12lld  (%.1fM)", static_cast<long long>(n), n / 1e6);
  return buf;
}

int run_info(const Args& a) {
  Config cfg = a.get("config").empty() ? Config::preset(a.get("preset")) : load_config(a.get("config"));
  if (a.get_int("image-size") > 0) cfg.image_size = a.get_int("image-size");
  cfg.validate();
  VLMo model(cfg);
  auto& m = *model;
  const int64_t backbone = count_parameters(
      m, {"transformer.", "text_embeddings.", "token_type_embeddings.", "pooler.", "relative_position_bias_table"});
  int64_t vl_ffn = 0;
  for (const auto& p : m.named_parameters())
    if (p.key().find("mlp_vl.") != std::string::npos || p.key().find("norm2_vl.") != std::string::npos)
      vl_ffn += p.value().numel();
  const int64_t pooler = count_parameters(m, {"pooler."});
  const int64_t heads_mlm = count_parameters(m, {"mlm_score."});
  const int64_t heads_itm = count_parameters(m, {"itm_score."});
  const int64_t heads_itc = count_parameters(m, {"itc_", "logit_"});
  const int64_t heads_vqa = count_parameters(m, {"vqa_classifier."});
  const int64_t heads_nlvr2 = count_parameters(m, {"nlvr2_classifier."});
  const int64_t total = count_parameters(m);

  if (a.get_flag("json")) {
    nlohmann::json j;
    j["config"] = nlohmann::json::parse(config_to_json_text(cfg));
    j["parameters"] = {{"backbone", backbone},  {"backbone_without_pooler", backbone - pooler},
                       {"vl_ffn", vl_ffn},      {"mlm_head", heads_mlm},
                       {"itm_head", heads_itm}, {"itc_heads", heads_itc},
                       {"vqa_head", heads_vqa}, {"nlvr2_head", heads_nlvr2},
                       {"total", total}};
    j["tokens"] = {{"image", cfg.image_tokens()}, {"text", cfg.max_text_len}, {"fusion", cfg.fusion_tokens()}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "architecture\n"
            << "  width (embed_dim)          " << cfg.embed_dim << "\n"
            << "  depth                      " << cfg.depth << " blocks\n"
            << "  heads                      " << cfg.num_heads << " x " << cfg.head_dim() << " dims\n"
            << "  FFN hidden                 " << cfg.mlp_hidden() << "\n"
            << "  VL-FFN blocks              " << cfg.vlffn_start_layer_index << ".." << cfg.depth - 1 << " ("
            << cfg.depth - cfg.vlffn_start_layer_index << " layers)\n"
            << "  image                      " << cfg.image_size << " px, patch " << cfg.patch_size << " px, "
            << cfg.image_tokens() << " tokens (with [CLS])\n"
            << "  text                       " << cfg.max_text_len << " tokens, vocabulary " << cfg.vocab_size << "\n"
            << "  fusion sequence            " << cfg.fusion_tokens() << " tokens\n"
            << "  relative position bias     " << (cfg.need_relative_position_embed ? "yes" : "no")
            << "\n  absolute positions         " << (cfg.use_abs_pos_emb ? "yes" : "no") << "\n  layer scale                "
            << (cfg.layer_scale_init_values ? std::to_string(*cfg.layer_scale_init_values) : "none")
            << "\n  token types                " << cfg.num_token_types << "\n  drop path                  " << cfg.drop_path_rate
            << "\n"
            << "parameters\n"
            << "  backbone (no task heads)   " << millions(backbone) << "\n"
            << "    without pooler           " << millions(backbone - pooler) << "\n"
            << "    of which VL-FFN          " << millions(vl_ffn) << "\n"
            << "  MLM head                   " << millions(heads_mlm) << "\n"
            << "  ITM head                   " << millions(heads_itm) << "\n"
            << "  ITC projections + scales   " << millions(heads_itc) << "\n"
            << "  VQA classifier             " << millions(heads_vqa) << "\n"
            << "  NLVR2 classifier           " << millions(heads_nlvr2) << "\n"
            << "  total                      " << millions(total) << "\n";
  return 0;
}

}  // namespace

Command info_command() {
  Command c;
  c.name = "info";
  c.summary = "Print the architecture and parameter counts of a preset or config.";
  c.usage = "vlmo info [--preset NAME | --config FILE] [--json]";
  c.options = {{"preset", "base", "base, base_plus or large"},
               {"config", "", "config JSON file (overrides --preset)"},
               integer_option("image-size", "0", "image size in px (0: the config's)", 0, 8192),
               {"json", "false", "print JSON instead of a table", true}};
  c.run = run_info;
  return c;
}

}  // namespace vlmo::cli
