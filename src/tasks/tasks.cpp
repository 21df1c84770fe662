#include "vlmo/tasks.h"

#include <ATen/ATen.h>

#include "vlmo/error.h"

namespace vlmo {

void require_head(VLMo& model, const std::string& head) {
  auto& m = *model;
  const bool present = head == "mlm"     ? !m.mlm_score.is_empty()
                       : head == "itm"   ? !m.itm_score.is_empty()
                       : head == "itc"   ? !m.itc_image_proj.is_empty()
                       : head == "vqa"   ? !m.vqa_classifier.is_empty()
                       : head == "nlvr2" ? !m.nlvr2_classifier.is_empty()
                       : head == "mim"   ? !m.mim_head.is_empty()
                                         : throw Error(cat("unknown head \"", head, "\""));
  if (present) return;
  const char* tensors = head == "mlm"     ? "mlm_score.*"
                        : head == "itm"   ? "itm_score.*"
                        : head == "itc"   ? "itc_text_proj.* / itc_image_proj.*"
                        : head == "vqa"   ? "vqa_classifier.*"
                        : head == "nlvr2" ? "nlvr2_classifier.*"
                                          : "mim_head.*";
  throw Error(cat("the model has no \"", head, "\" head (", tensors, "): use a checkpoint that carries it, or add \"", head,
                  "\" to the config's \"heads\""));
}

at::Tensor vqa_logits(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images) {
  require_head(model, "vqa");
  return model->vqa_classifier->forward(model->infer(text_ids, text_masks, images, 1, TokenOutputs::kCls).cls_feats);
}

at::Tensor nlvr2_logits(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& image_0,
                        const at::Tensor& image_1) {
  require_head(model, "nlvr2");
  const at::Tensor c0 = model->infer(text_ids, text_masks, image_0, 1, TokenOutputs::kCls).cls_feats;
  const at::Tensor c1 = model->infer(text_ids, text_masks, image_1, 2, TokenOutputs::kCls).cls_feats;
  return model->nlvr2_classifier->forward(at::cat({c0, c1}, -1));
}

at::Tensor itm_logits(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images) {
  return itm_logits_of_pooled(model, model->infer(text_ids, text_masks, images, 1, TokenOutputs::kCls).cls_feats);
}

at::Tensor itm_logits_of_pooled(VLMo& model, const at::Tensor& pooled) {
  require_head(model, "itm");
  return model->itm_score->forward(pooled);
}

at::Tensor mlm_logits(VLMo& model, const at::Tensor& text_feats) {
  require_head(model, "mlm");
  return model->mlm_score->forward(text_feats);
}

std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> itm_pair_scorer(VLMo& model, const at::Tensor& images,
                                                                                const at::Tensor& text_ids,
                                                                                const at::Tensor& text_masks) {
  require_head(model, "itm");
  return [model, images, text_ids, text_masks](const at::Tensor& img_idx, const at::Tensor& txt_idx) mutable {
    at::NoGradGuard guard;
    std::vector<at::Tensor> out;
    for (int64_t i = 0; i < img_idx.numel(); i += 128) {
      const int64_t n = std::min<int64_t>(128, img_idx.numel() - i);
      const at::Tensor ii = img_idx.narrow(0, i, n), tt = txt_idx.narrow(0, i, n);
      out.push_back(itm_logits(model, text_ids.index_select(0, tt), text_masks.index_select(0, tt), images.index_select(0, ii))
                        .select(1, 1));
    }
    return at::cat(out).cpu();
  };
}

namespace {
template <typename Fn>
at::Tensor in_chunks(int64_t n, int64_t chunk, Fn fn) {
  if (chunk < 1) throw Error(cat("chunk size must be at least 1, got ", chunk));
  at::NoGradGuard guard;
  std::vector<at::Tensor> parts;
  for (int64_t i = 0; i < n; i += chunk) parts.push_back(fn(i, std::min(chunk, n - i)).cpu());
  if (parts.empty()) throw Error("nothing to encode (0 inputs)");
  return at::cat(parts);
}
}  // namespace

at::Tensor encode_images(VLMo& model, const at::Tensor& images, int64_t chunk) {
  require_head(model, "itc");
  return in_chunks(images.size(0), chunk, [&](int64_t i, int64_t n) {
    return model->infer_image_ft(images.narrow(0, i, n), TokenOutputs::kCls).cls_feats;
  });
}

at::Tensor encode_texts(VLMo& model, const at::Tensor& text_ids, const at::Tensor& text_masks, int64_t chunk) {
  require_head(model, "itc");
  return in_chunks(text_ids.size(0), chunk, [&](int64_t i, int64_t n) {
    return model->infer_text_ft(text_ids.narrow(0, i, n), text_masks.narrow(0, i, n), TokenOutputs::kCls).cls_feats;
  });
}

}  // namespace vlmo
