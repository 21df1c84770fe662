#include <gtest/gtest.h>

#include "test_util.h"
#include "vlmo/config.h"
#include "vlmo/model.h"

using namespace vlmo;
using vlmo::test::expect_error;

TEST(Config, PresetsMatchReferenceTable) {
  // Reference §1.1.
  const Config b = Config::preset("base"), bp = Config::preset("base_plus"), l = Config::preset("large");
  EXPECT_EQ(b.embed_dim, 768);
  EXPECT_EQ(b.depth, 12);
  EXPECT_EQ(b.num_heads, 12);
  EXPECT_EQ(b.mlp_hidden(), 3072);
  EXPECT_EQ(b.vlffn_start_layer_index, 10);
  EXPECT_TRUE(b.need_relative_position_embed);
  EXPECT_FALSE(b.use_abs_pos_emb);
  EXPECT_DOUBLE_EQ(*b.layer_scale_init_values, 0.1);
  EXPECT_EQ(bp.embed_dim, 544);
  EXPECT_EQ(bp.depth, 24);
  EXPECT_EQ(bp.num_heads, 16);
  EXPECT_EQ(bp.head_dim(), 34);
  EXPECT_EQ(bp.mlp_hidden(), 2176);
  EXPECT_EQ(bp.vlffn_start_layer_index, 21);
  EXPECT_FALSE(bp.need_relative_position_embed);
  EXPECT_TRUE(bp.use_abs_pos_emb);
  EXPECT_FALSE(bp.layer_scale_init_values.has_value());
  EXPECT_EQ(l.embed_dim, 1024);
  EXPECT_EQ(l.depth, 24);
  EXPECT_EQ(l.mlp_hidden(), 4096);
  EXPECT_EQ(l.vlffn_start_layer_index, 21);
  for (const Config* c : {&b, &bp, &l}) {
    EXPECT_EQ(c->patch_size, 16);
    EXPECT_EQ(c->image_size, 224);
    EXPECT_EQ(c->max_text_len, 40);
    EXPECT_EQ(c->vocab_size, 30522);
    EXPECT_EQ(c->vqav2_label_size, 3129);
    EXPECT_DOUBLE_EQ(c->drop_path_rate, 0.1);
  }
  // Table rows and sequence lengths quoted in reference §1.4 and §1.7.
  EXPECT_EQ(b.relative_table_rows(), 1126);
  EXPECT_EQ(b.fusion_tokens(), 237);
  Config c384 = b;
  c384.image_size = 384;
  EXPECT_EQ(c384.relative_table_rows(), 2606);
  EXPECT_EQ(c384.fusion_tokens(), 617);
  Config c480 = b;
  c480.image_size = 480;
  EXPECT_EQ(c480.num_relative_distance(), 3484);
  EXPECT_EQ(c480.relative_table_rows(), 3878);
  EXPECT_EQ(c480.fusion_tokens(), 941);
  expect_error([] { Config::preset("huge"); }, {"huge", "base_plus"});
}

TEST(Config, JsonRoundTrip) {
  for (const char* name : {"base", "base_plus", "large"}) {
    const Config c = Config::preset(name);
    const Config back = config_from_json_text(config_to_json_text(c), "roundtrip");
    EXPECT_EQ(config_to_json_text(back), config_to_json_text(c)) << name;
  }
}

TEST(Config, ReadsFixtureConfig) {
  const Config c = load_config(vlmo::test::fixture("reference/tiny-relpos/config.json"));
  EXPECT_EQ(c.embed_dim, 96);
  EXPECT_EQ(c.depth, 4);
  EXPECT_EQ(c.image_size, 64);
  EXPECT_EQ(c.num_token_types, 3);
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_DOUBLE_EQ(*c.layer_scale_init_values, 0.1);
  const Config a = load_config(vlmo::test::fixture("reference/tiny-abspos/config.json"));
  EXPECT_FALSE(a.layer_scale_init_values.has_value());
  EXPECT_TRUE(a.use_abs_pos_emb);
}

TEST(Config, ErrorsNameTheField) {
  expect_error([] { config_from_json_text(R"({"embed_dim": 64, "colour": 3})", "x.json"); },
               {"x.json", "unknown config field", "colour"});
  expect_error([] { config_from_json_text(R"({"image_size": 100})", "x.json"); },
               {"image_size", "100", "patch_size 16"});
  expect_error([] { config_from_json_text(R"({"embed_dim": 100, "num_heads": 12})", "x.json"); },
               {"num_heads", "12", "embed_dim 100"});
  expect_error([] { config_from_json_text(R"({"depth": 4, "vlffn_start_layer_index": 10})", "x.json"); },
               {"vlffn_start_layer_index", "depth=4"});
  expect_error([] { config_from_json_text(R"({"depth": "twelve"})", "x.json"); },
               {"depth", "integer"});
  expect_error([] { config_from_json_text(R"({"num_token_types": 5})", "x.json"); },
               {"num_token_types"});
  expect_error([] { config_from_json_text(R"({"max_text_len": 300})", "x.json"); },
               {"max_text_len", "max_text_len_of_initckpt"});
  expect_error([] { config_from_json_text(R"({"heads": ["mlm", "caption"]})", "x.json"); },
               {"heads", "caption"});
  expect_error([] { config_from_json_text(R"({"depth": 12,)", "x.json"); }, {"x.json", "JSON"});
  expect_error([] { config_from_json_text(R"([1, 2])", "x.json"); }, {"object"});
}

// Official figures (reference §1.1): the model built without task heads at 224 px counts
// base 176.0M (VL-FFN 9.4M; 175.4M without the pooler = the README's 175M), base_plus 166.9M
// (VL-FFN 7.1M), large 562.6M (VL-FFN 25.2M).
TEST(Config, ParameterCountsMatchOfficial) {
  struct Want {
    const char* preset;
    double backbone_m, vl_ffn_m;
  };
  for (const Want& w : {Want{"base", 176.0, 9.4}, Want{"base_plus", 166.9, 7.1}, Want{"large", 562.6, 25.2}}) {
    Config c = Config::preset(w.preset);
    c.heads = {};
    VLMo model(c);
    const int64_t total = count_parameters(*model);
    int64_t vl = 0;
    for (const auto& p : model->named_parameters())
      if (p.key().find("_vl.") != std::string::npos) vl += p.value().numel();
    EXPECT_NEAR(total / 1e6, w.backbone_m, 0.05) << w.preset;
    EXPECT_NEAR(vl / 1e6, w.vl_ffn_m, 0.05) << w.preset;
    if (std::string(w.preset) == "base")
      EXPECT_NEAR((total - count_parameters(*model, {"pooler."})) / 1e6, 175.4, 0.05);
  }
}
