#include "vlmo/objectives.h"

#include <ATen/ATen.h>

#include "vlmo/error.h"

namespace vlmo {

namespace {
void require(const at::Tensor& t, const char* what) {
  if (!t.defined()) throw Error(cat("batch field \"", what, "\" is missing for this objective"));
}
template <typename Head>
void require_head(const Head& h, const char* name) {
  if (h.is_empty())
    throw Error(cat("this model has no \"", name, "\" head (add it to the config's \"heads\")"));
}
}  // namespace

at::Tensor gather_local(const at::Tensor& t) { return t; }

ContrastiveOutput contrastive_loss(const at::Tensor& image_feats, const at::Tensor& text_feats,
                                   const at::Tensor& logit_scale, const GatherFn& gather) {
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
  out.loss = (at::cross_entropy_loss(logits_per_image, targets) +
              at::cross_entropy_loss(logits_per_text, targets)) / 2;
  out.logits_i2t = logits_per_image.narrow(0, 0, B);
  out.logits_t2i = logits_per_text.narrow(0, 0, B);
  return out;
}

ItcOutput compute_itc(VLMo& model, const Batch& batch, const GatherFn& gather) {
  require(batch.image, "image");
  require(batch.text_ids, "text_ids");
  require(batch.text_masks, "text_masks");
  auto img = model->infer_image(batch.image);
  auto txt = model->infer_text(batch.text_ids, batch.text_masks);
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

at::Tensor sample_hard_negatives(const at::Tensor& weights) {
  at::NoGradGuard guard;
  return at::multinomial(weights, 1).squeeze(1);
}

at::Tensor sample_hard_negatives(const at::Tensor& weights, at::Generator gen) {
  at::NoGradGuard guard;
  return at::multinomial(weights, 1, false, gen).squeeze(1);
}

ItmOutput compute_itm(VLMo& model, const Batch& batch, const at::Tensor& neg_image_index,
                      const at::Tensor& neg_text_index, const at::Tensor& pool_images,
                      const at::Tensor& pool_text_ids, const at::Tensor& pool_text_masks) {
  require_head(model->itm_score, "itm");
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
    neg_images = images.index_select(0, neg_image_index);
    neg_ids = ids.index_select(0, neg_text_index);
    neg_masks = masks.index_select(0, neg_text_index);
  }
  // One fusion pass over the 3B pairs (same numbers as three passes: samples are independent).
  at::Tensor labels = at::cat({at::ones({B}, at::kLong), at::zeros({2 * B}, at::kLong)});
  return itm_on_pairs(model, at::cat({batch.text_ids, batch.text_ids, neg_ids}),
                      at::cat({batch.text_masks, batch.text_masks, neg_masks}),
                      at::cat({batch.image, neg_images, batch.image}), labels);
}

ItmOutput itm_on_pairs(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks,
                       const at::Tensor& images, const at::Tensor& labels) {
  require_head(model->itm_score, "itm");
  auto fused = model->infer(text_ids, text_masks, images);
  ItmOutput out;
  out.logits = model->itm_score->forward(fused.cls_feats);
  out.loss = at::cross_entropy_loss(out.logits, labels.to(out.logits.device()));
  return out;
}

std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> itm_pair_scorer(
    VLMo& model, const at::Tensor& images, const at::Tensor& text_ids, const at::Tensor& text_masks) {
  require_head(model->itm_score, "itm");
  return [model, images, text_ids, text_masks](const at::Tensor& img_idx, const at::Tensor& txt_idx) mutable {
    at::NoGradGuard guard;
    std::vector<at::Tensor> out;
    for (int64_t i = 0; i < img_idx.numel(); i += 128) {
      const int64_t n = std::min<int64_t>(128, img_idx.numel() - i);
      const at::Tensor ii = img_idx.narrow(0, i, n), tt = txt_idx.narrow(0, i, n);
      auto fused = model->infer(text_ids.index_select(0, tt), text_masks.index_select(0, tt), images.index_select(0, ii));
      out.push_back(model->itm_score->forward(fused.cls_feats).select(1, 1));
    }
    return at::cat(out);
  };
}

namespace {
LogitsLoss mlm_from_feats(VLMo& model, const at::Tensor& feats, const at::Tensor& labels,
                          double weight) {
  LogitsLoss out;
  out.logits = model->mlm_score->forward(feats);  // (B, L, V)
  out.loss = weight * at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}),
                                             labels.reshape({-1}), {}, at::Reduction::Mean, -100);
  return out;
}
}  // namespace

LogitsLoss compute_mlm(VLMo& model, const Batch& batch) {
  require_head(model->mlm_score, "mlm");
  require(batch.text_ids_mlm, "text_ids_mlm");
  require(batch.text_labels_mlm, "text_labels_mlm");
  require(batch.image, "image");
  auto fused = model->infer(batch.text_ids_mlm, batch.text_masks, batch.image);
  return mlm_from_feats(model, fused.text_feats, batch.text_labels_mlm, 0.25);
}

LogitsLoss compute_text_mlm(VLMo& model, const Batch& batch) {
  require_head(model->mlm_score, "mlm");
  require(batch.text_ids_mlm, "text_ids_mlm");
  require(batch.text_labels_mlm, "text_labels_mlm");
  at::Tensor feats = model->infer_text_mlm(batch.text_ids_mlm, batch.text_masks);
  return mlm_from_feats(model, feats, batch.text_labels_mlm, 1.0);
}

LogitsLoss compute_vqa(VLMo& model, const Batch& batch) {
  require_head(model->vqa_classifier, "vqa");
  require(batch.vqa_targets, "vqa_targets");
  auto fused = model->infer(batch.text_ids, batch.text_masks, batch.image);
  LogitsLoss out;
  out.logits = model->vqa_classifier->forward(fused.cls_feats);
  out.loss = at::binary_cross_entropy_with_logits(out.logits, batch.vqa_targets) *
             static_cast<double>(batch.vqa_targets.size(1));
  return out;
}

LogitsLoss compute_nlvr2(VLMo& model, const Batch& batch) {
  require_head(model->nlvr2_classifier, "nlvr2");
  require(batch.image_0, "image_0");
  require(batch.image_1, "image_1");
  require(batch.nlvr2_labels, "nlvr2_labels");
  auto f0 = model->infer(batch.text_ids, batch.text_masks, batch.image_0, 1);
  auto f1 = model->infer(batch.text_ids, batch.text_masks, batch.image_1, 2);
  LogitsLoss out;
  out.logits = model->nlvr2_classifier->forward(at::cat({f0.cls_feats, f1.cls_feats}, -1));
  out.loss = at::cross_entropy_loss(out.logits, batch.nlvr2_labels);
  return out;
}

}  // namespace vlmo
