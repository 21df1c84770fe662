#include "vlmo/objectives.h"

#include <ATen/ATen.h>

#include "vlmo/error.h"
#include "vlmo/tasks.h"

namespace vlmo {

namespace {
void require(const at::Tensor& t, const char* what) {
  if (!t.defined()) throw Error(cat("batch field \"", what, "\" is missing for this objective"));
}
}  // namespace

ContrastiveOutput contrastive_loss(const at::Tensor& image_feats, const at::Tensor& text_feats, const at::Tensor& logit_scale,
                                   const GatherFn& gather) {
  // Gathered features carry no gradient except through the local chunk, which comes first.
  const int64_t B = image_feats.size(0);
  at::Tensor all_img = gather(image_feats), all_txt = gather(text_feats);
  if (all_img.size(0) != B) {
    all_img = at::cat({image_feats, all_img.narrow(0, B, all_img.size(0) - B).detach()});
    all_txt = at::cat({text_feats, all_txt.narrow(0, B, all_txt.size(0) - B).detach()});
  }
  const at::Tensor scale = logit_scale.exp();
  at::Tensor logits_per_image = scale * at::matmul(all_img, all_txt.t());  // (N, N)
  at::Tensor logits_per_text = logits_per_image.t();
  at::Tensor targets = at::arange(all_img.size(0), all_img.options().dtype(at::kLong));
  ContrastiveOutput out;
  out.loss = (at::cross_entropy_loss(logits_per_image, targets) + at::cross_entropy_loss(logits_per_text, targets)) / 2;
  out.logits_i2t = logits_per_image.narrow(0, 0, B);
  out.logits_t2i = logits_per_text.narrow(0, 0, B);
  return out;
}

ItcOutput compute_itc(VLMo& model, const Batch& batch, const GatherFn& gather) {
  require(batch.image, "image");
  require(batch.text_ids, "text_ids");
  require(batch.text_masks, "text_masks");
  auto img = model->infer_image(batch.image, TokenOutputs::kCls);
  auto txt = model->infer_text(batch.text_ids, batch.text_masks, TokenOutputs::kCls);
  ItcOutput out;
  out.itc = contrastive_loss(img.cls_feats, txt.cls_feats, model->logit_scale, gather);
  out.itc_vl = contrastive_loss(img.cls_vlffn_feats, txt.cls_vlffn_feats, model->logit_vl_scale, gather);
  out.loss = 0.5 * (out.itc.loss + out.itc_vl.loss);
  return out;
}

at::Tensor hard_negative_weights(const at::Tensor& sim) {
  at::NoGradGuard guard;
  at::Tensor w = at::softmax(sim.detach().to(at::kFloat), 1);
  const int64_t B = std::min(w.size(0), w.size(1));
  w.narrow(1, 0, B).diagonal().zero_();  // local positives sit on the diagonal
  return w;
}

std::string hard_negative_underflow(int64_t row, int64_t candidates) {
  return cat("hard negatives: every weight of row ", row, " (", candidates - 1,
             " candidates) underflowed to 0: its similarity to the positive is so far above the others, at this logit "
             "scale (1 / temperature), that the softmax gives it all the mass in fp32; the contrastive loss has "
             "collapsed or the temperature is too low (check the learning rate and the logit_scale)");
}

namespace {
// multinomial needs finite, non-negative rows with a positive sum.
void check_sampling_weights(const at::Tensor& weights) {
  if (!at::isfinite(weights).all().item<bool>())
    throw NonFiniteError("hard-negative weights are not finite (the similarities are NaN or inf)");
  if (weights.size(1) < 2)
    throw Error(cat("hard negatives need at least 2 candidates per row, got ", weights.size(1),
                    " (a batch of 1 has none: use a batch size of at least 2)"));
  const at::Tensor empty = (weights.sum(1) > 0).logical_not().nonzero();
  if (empty.numel() > 0) throw Error(hard_negative_underflow(empty[0].item<int64_t>(), weights.size(1)));
}
}  // namespace

at::Tensor sample_hard_negatives(const at::Tensor& weights) {
  at::NoGradGuard guard;
  check_sampling_weights(weights);
  return at::multinomial(weights, 1).squeeze(1);
}

at::Tensor sample_hard_negatives(const at::Tensor& weights, at::Generator gen) {
  at::NoGradGuard guard;
  check_sampling_weights(weights);
  return at::multinomial(weights, 1, false, gen).squeeze(1);
}

ItmOutput compute_itm(VLMo& model, const Batch& batch, const at::Tensor& neg_image_index, const at::Tensor& neg_text_index,
                      const at::Tensor& pool_images, const at::Tensor& pool_text_ids, const at::Tensor& pool_text_masks) {
  require_head(model, "itm");
  require(batch.image, "image");
  require(batch.text_ids, "text_ids");
  require(batch.text_masks, "text_masks");
  const at::Tensor& images = pool_images.defined() ? pool_images : batch.image;
  const at::Tensor& ids = pool_text_ids.defined() ? pool_text_ids : batch.text_ids;
  const at::Tensor& masks = pool_text_masks.defined() ? pool_text_masks : batch.text_masks;
  const int64_t B = batch.text_ids.size(0);
  at::Tensor neg_images, neg_ids, neg_masks;
  {
    at::NoGradGuard guard;  // negatives are inputs, as in the official (gathered under no_grad)
    neg_images = images.index_select(0, neg_image_index.to(images.device()));
    neg_ids = ids.index_select(0, neg_text_index.to(ids.device()));
    neg_masks = masks.index_select(0, neg_text_index.to(masks.device()));
  }
  // One fusion pass over the 3B pairs (same numbers as three passes: samples are independent).
  const auto label_opts = batch.text_ids.options().dtype(at::kLong);
  at::Tensor labels = at::cat({at::ones({B}, label_opts), at::zeros({2 * B}, label_opts)});
  return itm_on_pairs(model, at::cat({batch.text_ids, batch.text_ids, neg_ids}),
                      at::cat({batch.text_masks, batch.text_masks, neg_masks}), at::cat({batch.image, neg_images, batch.image}),
                      labels);
}

ItmOutput itm_on_pairs(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images,
                       const at::Tensor& labels) {
  ItmOutput out;
  out.logits = itm_logits(model, text_ids, text_masks, images);
  out.loss = at::cross_entropy_loss(out.logits, labels.to(out.logits.device()));
  return out;
}

MlmOutput mlm_loss(VLMo& model, const at::Tensor& text_feats, const at::Tensor& labels, double weight, bool full_logits) {
  require_head(model, "mlm");
  const at::Tensor flat_labels = labels.reshape({-1});
  const at::Tensor flat_feats = text_feats.reshape({-1, text_feats.size(-1)});
  const at::Tensor where = flat_labels.ne(-100).nonzero().squeeze(1);
  MlmOutput out;
  if (full_logits) out.logits = mlm_logits(model, text_feats);
  if (where.numel() == 0) {  // nothing to predict: a zero loss that keeps the graph
    out.loss = text_feats.sum() * 0;
    out.accuracy = at::zeros({}, text_feats.options()).detach();
    return out;
  }
  const at::Tensor target = flat_labels.index_select(0, where);
  const at::Tensor logits = full_logits ? out.logits.reshape({-1, out.logits.size(-1)}).index_select(0, where)
                                        : mlm_logits(model, flat_feats.index_select(0, where));
  out.loss = weight * at::cross_entropy_loss(logits, target);
  out.accuracy = logits.argmax(-1).eq(target).to(at::kFloat).mean().detach();
  return out;
}

MlmOutput compute_mlm(VLMo& model, const Batch& batch, bool full_logits) {
  require_head(model, "mlm");
  require(batch.text_ids_mlm, "text_ids_mlm");
  require(batch.text_labels_mlm, "text_labels_mlm");
  require(batch.image, "image");
  auto fused = model->infer(batch.text_ids_mlm, batch.text_masks, batch.image, 1, TokenOutputs::kText);
  return mlm_loss(model, fused.text_feats, batch.text_labels_mlm, 0.25, full_logits);
}

MlmOutput compute_text_mlm(VLMo& model, const Batch& batch, bool full_logits) {
  require_head(model, "mlm");
  require(batch.text_ids_mlm, "text_ids_mlm");
  require(batch.text_labels_mlm, "text_labels_mlm");
  at::Tensor feats = model->infer_text_mlm(batch.text_ids_mlm, batch.text_masks);
  return mlm_loss(model, feats, batch.text_labels_mlm, 1.0, full_logits);
}

LogitsLoss compute_vqa(VLMo& model, const Batch& batch) {
  require_head(model, "vqa");
  require(batch.vqa_targets, "vqa_targets");
  LogitsLoss out;
  out.logits = vqa_logits(model, batch.text_ids, batch.text_masks, batch.image);
  out.loss = at::binary_cross_entropy_with_logits(out.logits, batch.vqa_targets) * static_cast<double>(batch.vqa_targets.size(1));
  return out;
}

LogitsLoss compute_nlvr2(VLMo& model, const Batch& batch) {
  require_head(model, "nlvr2");
  require(batch.image_0, "image_0");
  require(batch.image_1, "image_1");
  require(batch.nlvr2_labels, "nlvr2_labels");
  LogitsLoss out;
  out.logits = nlvr2_logits(model, batch.text_ids, batch.text_masks, batch.image_0, batch.image_1);
  out.loss = at::cross_entropy_loss(out.logits, batch.nlvr2_labels);
  return out;
}

}  // namespace vlmo
