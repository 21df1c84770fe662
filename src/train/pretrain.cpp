#include "vlmo/pretrain.h"

#include <ATen/ATen.h>

#include <cmath>

#include "vlmo/error.h"

namespace vlmo {

Stage parse_stage(const std::string& s) {
  if (s == "image") return Stage::kImage;
  if (s == "text") return Stage::kText;
  if (s == "vl") return Stage::kVL;
  throw Error(cat("unknown stage \"", s, "\" (expected image, text or vl)"));
}

const char* stage_name(Stage s) {
  return s == Stage::kImage ? "image" : s == Stage::kText ? "text" : "vl";
}

bool stage2_trainable(const std::string& name) {
  for (const char* k : {"text_embeddings", "token_type_embeddings", "mlp_text", "norm2_text", "mlm_score",
                        "relative_position_bias_table", "transformer.norm"})
    if (name.find(k) != std::string::npos) return true;
  return false;
}

void set_trainable_for_stage(VLMo& model, Stage stage) {
  for (auto& p : model->named_parameters())
    p.value().set_requires_grad(stage != Stage::kText || stage2_trainable(p.key()));
}

std::vector<bool> blockwise_mask(int grid, int num_masked, std::mt19937_64& rng) {
  const int n = grid * grid;
  num_masked = std::min(num_masked, n);
  std::vector<bool> mask(n, false);
  const double min_patches = std::max(1.0, n / 12.0);  // BEiT: 16 of 196
  std::uniform_real_distribution<double> log_aspect(std::log(0.3), std::log(1 / 0.3));
  int count = 0;
  while (count < num_masked) {
    const int budget = num_masked - count;
    int delta = 0;
    for (int attempt = 0; attempt < 10 && delta == 0; ++attempt) {
      const double area = std::uniform_real_distribution<double>(std::min(min_patches, double(budget)), budget)(rng);
      const double aspect = std::exp(log_aspect(rng));
      const int h = static_cast<int>(std::lround(std::sqrt(area * aspect)));
      const int w = static_cast<int>(std::lround(std::sqrt(area / aspect)));
      if (h < 1 || w < 1 || h > grid || w > grid) continue;
      const int top = std::uniform_int_distribution<int>(0, grid - h)(rng);
      const int left = std::uniform_int_distribution<int>(0, grid - w)(rng);
      int already = 0;
      for (int y = top; y < top + h; ++y)
        for (int x = left; x < left + w; ++x) already += mask[y * grid + x];
      const int fresh = h * w - already;
      if (fresh <= 0 || fresh > budget) continue;
      for (int y = top; y < top + h; ++y)
        for (int x = left; x < left + w; ++x)
          if (!mask[y * grid + x]) mask[y * grid + x] = true, ++delta;
    }
    if (delta == 0) break;
    count += delta;
  }
  return mask;
}

Outputs mim_objective(VLMo& model, const Batch& batch) {
  if (!batch.patch_mask.defined()) throw Error("stage-1 batches need a patch mask");
  const Config& c = model->config();
  const int64_t B = batch.image.size(0), W = c.grid(), p = c.patch_size;
  at::Tensor feats = model->infer_image_masked(batch.image, batch.patch_mask);  // (B, W²+1, C)
  at::Tensor pred = model->mim_head->decoder->forward(feats.narrow(1, 1, W * W));  // (B, W², p*p*3)
  // Targets: each patch's pixels in the conv's order, normalised per patch.
  at::Tensor target = batch.image.reshape({B, 3, W, p, W, p}).permute({0, 2, 4, 3, 5, 1}).reshape({B, W * W, -1});
  const at::Tensor mean = target.mean(-1, true), var = target.var(-1, false, true);
  target = (target - mean) / (var + 1e-6).sqrt();
  const at::Tensor m = batch.patch_mask.to(at::kFloat);
  const at::Tensor per_patch = (pred - target).pow(2).mean(-1);
  Outputs out;
  out["mim_loss"] = (per_patch * m).sum() / m.sum().clamp_min(1);
  return out;
}

Outputs masked_lm(VLMo& model, const at::Tensor& text_feats, const at::Tensor& labels, double weight,
                  const std::string& prefix) {
  const at::Tensor flat_labels = labels.reshape({-1});
  const at::Tensor where = flat_labels.ne(-100).nonzero().squeeze(1);
  Outputs out;
  if (where.numel() == 0) {
    out[prefix + "_loss"] = text_feats.sum() * 0;  // keeps the graph; nothing to predict
    return out;
  }
  const at::Tensor feats = text_feats.reshape({-1, text_feats.size(-1)}).index_select(0, where);
  const at::Tensor target = flat_labels.index_select(0, where);
  const at::Tensor logits = model->mlm_score->forward(feats);
  out[prefix + "_loss"] = weight * at::cross_entropy_loss(logits, target);
  out[prefix + "_acc"] = logits.argmax(-1).eq(target).to(at::kFloat).mean().detach();
  return out;
}

Outputs text_mlm_objective(VLMo& model, const Batch& batch) {
  at::Tensor feats = model->infer_text_mlm(batch.text_ids_mlm, batch.text_masks);
  return masked_lm(model, feats, batch.text_labels_mlm, 1.0, "textmlm");
}

Outputs vl_objective(VLMo& model, const Batch& batch) {
  Outputs out;
  ItcOutput itc = compute_itc(model, batch);
  out["itc_loss"] = itc.loss;
  const int64_t B = batch.image.size(0);
  const at::Tensor targets = at::arange(B, at::kLong);
  out["itc_i2t_acc"] = itc.itc.logits_i2t.argmax(1).eq(targets).to(at::kFloat).mean().detach();
  // Global hard negatives: for each text an image drawn from its similarity row, and vice versa,
  // each in one batched multinomial.
  const at::Tensor neg_image = sample_hard_negatives(hard_negative_weights(itc.itc.logits_t2i));
  const at::Tensor neg_text = sample_hard_negatives(hard_negative_weights(itc.itc.logits_i2t));
  ItmOutput itm = compute_itm(model, batch, neg_image, neg_text);
  out["itm_loss"] = itm.loss;
  const at::Tensor itm_labels = at::cat({at::ones({B}, at::kLong), at::zeros({2 * B}, at::kLong)});
  out["itm_acc"] = itm.logits.argmax(1).eq(itm_labels).to(at::kFloat).mean().detach();
  auto fused = model->infer(batch.text_ids_mlm, batch.text_masks, batch.image);
  for (auto& [k, v] : masked_lm(model, fused.text_feats, batch.text_labels_mlm, 0.25, "mlm")) out[k] = v;
  return out;
}

Outputs irtr_objective(VLMo& model, const Batch& batch) {
  auto img = model->infer_image_ft(batch.image);
  auto txt = model->infer_text_ft(batch.text_ids, batch.text_masks);
  ContrastiveOutput c = contrastive_loss(img.cls_feats, txt.cls_feats, model->logit_scale);
  Outputs out;
  out["irtr_loss"] = c.loss;
  out["irtr_i2t_acc"] = c.logits_i2t.argmax(1).eq(at::arange(batch.image.size(0), at::kLong)).to(at::kFloat).mean().detach();
  return out;
}

}  // namespace vlmo
