#include "vlmo/pretrain.h"

#include <ATen/ATen.h>

#include <cmath>

#include "vlmo/distributed.h"
#include "vlmo/error.h"

namespace vlmo {

Stage parse_stage(const std::string& s) {
  if (s == "image") return Stage::kImage;
  if (s == "text") return Stage::kText;
  if (s == "vl") return Stage::kVL;
  throw Error(cat("unknown stage \"", s, "\" (expected image, text or vl)"));
}

const char* stage_name(Stage s) { return s == Stage::kImage ? "image" : s == Stage::kText ? "text" : "vl"; }

bool stage2_trainable(const std::string& name) {
  for (const char* k : {"text_embeddings", "token_type_embeddings", "mlp_text", "norm2_text", "mlm_score",
                        "relative_position_bias_table", "transformer.norm"})
    if (name.find(k) != std::string::npos) return true;
  return false;
}

void set_trainable_for_stage(VLMo& model, Stage stage) {
  for (auto& p : model->named_parameters()) p.value().set_requires_grad(stage != Stage::kText || stage2_trainable(p.key()));
}

Outputs mim_objective(VLMo& model, const Batch& batch, const Distributed*) {
  if (!batch.patch_mask.defined()) throw Error("stage-1 batches need a patch mask");
  const Config& c = model->config();
  const int64_t B = batch.image.size(0), W = c.grid(), p = c.patch_size;
  at::Tensor feats = model->infer_image_masked(batch.image, batch.patch_mask);     // (B, W²+1, C)
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

Outputs text_mlm_objective(VLMo& model, const Batch& batch, const Distributed*) {
  const MlmOutput m = compute_text_mlm(model, batch);
  return {{"textmlm_loss", m.loss}, {"textmlm_acc", m.accuracy}};
}

namespace {

// The share of rows whose largest logit is on the diagonal (the matching caption).
at::Tensor in_batch_accuracy(const at::Tensor& logits_i2t) {
  return logits_i2t.argmax(1)
      .eq(at::arange(logits_i2t.size(0), logits_i2t.options().dtype(at::kLong)))
      .to(at::kFloat)
      .mean()
      .detach();
}

// ITM with global hard negatives drawn from a contrastive loss's similarities: for each text an
// image drawn from its row, and vice versa, each in one batched multinomial (image first). On
// several ranks the negatives index the gathered pools (raw images and texts of every rank).
void add_hard_negative_itm(VLMo& model, const Batch& batch, const ContrastiveOutput& c, const Distributed* group, Outputs& out) {
  const at::Tensor neg_image = sample_hard_negatives(hard_negative_weights(c.logits_t2i));
  const at::Tensor neg_text = sample_hard_negatives(hard_negative_weights(c.logits_i2t));
  const bool pooled = group && group->world_size() > 1;
  const GatherFn gather = gather_over(group);
  const ItmOutput itm = pooled ? compute_itm(model, batch, neg_image, neg_text, gather(batch.image), gather(batch.text_ids),
                                             gather(batch.text_masks))
                               : compute_itm(model, batch, neg_image, neg_text);
  out["itm_loss"] = itm.loss;
  const int64_t B = batch.image.size(0);
  const auto label_opts = itm.logits.options().dtype(at::kLong);
  const at::Tensor labels = at::cat({at::ones({B}, label_opts), at::zeros({2 * B}, label_opts)});
  out["itm_acc"] = itm.logits.argmax(1).eq(labels).to(at::kFloat).mean().detach();
}

// Retrieval fine-tuning: the fine-tuned dual encoder's contrastive loss, and ITM when asked.
Outputs irtr_outputs(VLMo& model, const Batch& batch, const Distributed* group, bool with_itm) {
  const auto img = model->infer_image_ft(batch.image, TokenOutputs::kCls);
  const auto txt = model->infer_text_ft(batch.text_ids, batch.text_masks, TokenOutputs::kCls);
  const ContrastiveOutput c = contrastive_loss(img.cls_feats, txt.cls_feats, model->logit_scale, gather_over(group));
  Outputs out;
  out["irtr_loss"] = c.loss;
  out["irtr_i2t_acc"] = in_batch_accuracy(c.logits_i2t);
  if (with_itm) add_hard_negative_itm(model, batch, c, group, out);
  return out;
}

}  // namespace

Outputs vl_objective(VLMo& model, const Batch& batch, const Distributed* group) {
  Outputs out;
  const ItcOutput itc = compute_itc(model, batch, gather_over(group));  // every rank's batch (local first)
  out["itc_loss"] = itc.loss;
  out["itc_i2t_acc"] = in_batch_accuracy(itc.itc.logits_i2t);
  add_hard_negative_itm(model, batch, itc.itc, group, out);
  const MlmOutput mlm = compute_mlm(model, batch);
  out["mlm_loss"] = mlm.loss;
  out["mlm_acc"] = mlm.accuracy;
  return out;
}

Outputs irtr_objective(VLMo& model, const Batch& batch, const Distributed* group) {
  return irtr_outputs(model, batch, group, false);
}

// Hard negatives from the fine-tuned dual encoder's similarities, as in pre-training.
Outputs irtr_itm_objective(VLMo& model, const Batch& batch, const Distributed* group) {
  return irtr_outputs(model, batch, group, true);
}

Outputs vqa_objective(VLMo& model, const Batch& batch, const Distributed*) {
  const LogitsLoss l = compute_vqa(model, batch);
  const at::Tensor picked = l.logits.argmax(1).unsqueeze(1);
  return {{"vqa_loss", l.loss}, {"vqa_score", batch.vqa_targets.gather(1, picked).mean().detach()}};
}

Outputs nlvr2_objective(VLMo& model, const Batch& batch, const Distributed*) {
  const LogitsLoss l = compute_nlvr2(model, batch);
  return {{"nlvr2_loss", l.loss}, {"nlvr2_acc", l.logits.argmax(1).eq(batch.nlvr2_labels).to(at::kFloat).mean().detach()}};
}

}  // namespace vlmo
