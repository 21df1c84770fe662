// --contrastive-batch global (vlmo/pretrain.h): ITC and ITM over every sample of the
// optimizer step, whatever the number of ranks and micro-batches, with the exact gradient of the
// step's loss, computed by gradient caching:
//   1. every micro-batch is embedded without autograd (image and text [CLS], both branches);
//   2. the features of every rank are gathered and put in the order of their sample index; the
//      ITC loss over that N x N matrix is differentiated with respect to the features (and the
//      logit scales, whose gradient is then complete on every rank);
//   3. each text's negative image and each image's negative text are drawn from the whole step's
//      similarity rows, from the sample's key (not from a shared generator);
//   4. each micro-batch runs again with autograd: its features are dotted with their cached
//      gradients, and its ITM pairs and MLM pass are added, normalised by the step's counts
//      (3N pairs; every masked token of the step); one backward per micro-batch.
// Every random draw of the model (drop path, dropout) is keyed by the sample's index and the
// pass, so the repeated pass equals the cached one and no result depends on how the step is cut.
// Gradients are scaled by the world size, so that the trainer's mean over ranks is their sum.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "vlmo/data.h"
#include "vlmo/distributed.h"
#include "vlmo/error.h"
#include "vlmo/pretrain.h"
#include "vlmo/tasks.h"

namespace vlmo {

namespace {

// Which pass or draw a key is for (mixed with the sample index and the run's seed).
enum Purpose : uint64_t { kImagePass = 1, kTextPass, kItmPositive, kItmNegImage, kItmNegText, kMlmPass, kDrawImage, kDrawText };

std::vector<uint64_t> keys_for(uint64_t seed, const std::vector<int64_t>& samples, Purpose purpose) {
  std::vector<uint64_t> keys(samples.size());
  const uint64_t base = mix_seed(seed, 0x6b657973ull + purpose);
  for (size_t i = 0; i < samples.size(); ++i) keys[i] = mix_seed(base, static_cast<uint64_t>(samples[i]));
  return keys;
}

std::vector<uint64_t> concat(std::vector<uint64_t> a, const std::vector<uint64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

at::Tensor keyed_sample_rows(const at::Tensor& weights, const at::Tensor& rows, const std::vector<uint64_t>& keys) {
  at::NoGradGuard guard;
  if (!at::isfinite(weights).all().item<bool>())
    throw NonFiniteError("hard-negative weights are not finite (the similarities are NaN or inf)");
  const at::Tensor w = weights.index_select(0, rows.to(weights.device())).to(at::kDouble).cpu().contiguous();
  const int64_t n = w.size(0), cols = w.size(1);
  if (static_cast<int64_t>(keys.size()) != n) throw Error("keyed_sample_rows: one key per row expected");
  at::Tensor out = at::empty({n}, at::kLong);
  auto acc = w.accessor<double, 2>();
  auto o = out.accessor<int64_t, 1>();
  for (int64_t i = 0; i < n; ++i) {
    double total = 0;
    for (int64_t j = 0; j < cols; ++j) total += acc[i][j];
    if (cols < 2)
      throw Error(cat("hard negatives need at least 2 candidates per row, got ", cols,
                      " (a step of 1 sample has none: use a global batch of at least 2)"));
    if (!(total > 0)) throw Error(hard_negative_underflow(i, cols));
    const double u = static_cast<double>(mix_seed(keys[i], 0x75) >> 11) * 0x1.0p-53 * total;  // [0, total)
    double cum = 0;
    int64_t pick = -1;
    for (int64_t j = 0; j < cols; ++j) {
      if (acc[i][j] <= 0) continue;
      cum += acc[i][j];
      pick = j;  // the last candidate with weight takes the rounding remainder
      if (u < cum) break;
    }
    o[i] = pick;
  }
  return out;
}

namespace {

// The contrastive features of a pass: pre-training [img | img_vl | txt | txt_vl] (two ITC
// branches), retrieval fine-tuning [img | txt] (the fine-tuned dual encoder, one branch). With
// `grads` (the cached gradients of those features): the scalar whose gradient flows through them.
at::Tensor unimodal_features(VLMo& model, const Batch& b, const std::vector<int64_t>& samples, uint64_t seed, bool retrieval,
                             const at::Tensor& grads = {}) {
  UnimodalOutput img, txt;
  {
    SampleKeys k(keys_for(seed, samples, kImagePass));
    img = retrieval ? model->infer_image_ft(b.image, TokenOutputs::kCls) : model->infer_image(b.image, TokenOutputs::kCls);
  }
  {
    SampleKeys k(keys_for(seed, samples, kTextPass));
    txt = retrieval ? model->infer_text_ft(b.text_ids, b.text_masks, TokenOutputs::kCls)
                    : model->infer_text(b.text_ids, b.text_masks, TokenOutputs::kCls);
  }
  const std::vector<at::Tensor> parts =
      retrieval ? std::vector<at::Tensor>{img.cls_feats, txt.cls_feats}
                : std::vector<at::Tensor>{img.cls_feats, img.cls_vlffn_feats, txt.cls_feats, txt.cls_vlffn_feats};
  if (!grads.defined()) return at::cat(parts, 1);
  at::Tensor dot;
  int64_t off = 0;
  for (const auto& p : parts) {
    const at::Tensor d = (p * grads.narrow(1, off, p.size(1))).sum();
    dot = dot.defined() ? dot + d : d;
    off += p.size(1);
  }
  return dot;
}

// The gathered pool of the step that ITM negatives come from, and per local row the pool rows
// of its negative image and negative text.
struct NegativePool {
  at::Tensor images, ids, masks, neg_image, neg_text;
};

// Running sums of a step's second pass (step 4).
struct SecondPassSums {
  double itm_sum = 0, itm_correct = 0, mlm_sum = 0, mlm_correct = 0;
};

// The masked tokens of each micro-batch and of the whole step (summed over ranks).
std::pair<std::vector<double>, double> masked_tokens(const std::vector<Batch>& micro, const Distributed* dist, bool multi) {
  double masked_total = 0;
  std::vector<double> masked(micro.size(), 0.0);
  for (size_t m = 0; m < micro.size(); ++m) {
    if (!micro[m].text_labels_mlm.defined()) throw Error("batch field \"text_labels_mlm\" is missing for this objective");
    masked[m] = micro[m].text_labels_mlm.ne(-100).sum().item<double>();
    masked_total += masked[m];
  }
  if (multi) {
    std::vector<at::Tensor> t = {at::tensor({masked_total}, at::kDouble)};
    dist->all_reduce_sum(t);
    masked_total = t[0].item<double>();
  }
  return {masked, masked_total};
}

// Step 4 for one micro-batch (rows `row`.. of this rank): its features dotted with their cached
// gradients, plus its ITM pairs (positive, negative image, negative text) and its MLM pass,
// normalised by the step's counts; one backward.
void second_pass(VLMo& model, const Batch& b, const std::vector<int64_t>& samples, uint64_t seed, bool retrieval,
                 const at::Tensor& grads, const NegativePool* pool, int64_t row, double masked, double masked_total, double world,
                 int64_t N, double loss_scale, size_t m, SecondPassSums& sums) {
  const int64_t B = b.image.size(0);
  at::Tensor total = unimodal_features(model, b, samples, seed, retrieval, grads);
  if (pool) {
    at::Tensor ni, nt_ids, nt_masks;
    {
      at::NoGradGuard guard;
      ni = pool->images.index_select(0, pool->neg_image.narrow(0, row, B));
      nt_ids = pool->ids.index_select(0, pool->neg_text.narrow(0, row, B));
      nt_masks = pool->masks.index_select(0, pool->neg_text.narrow(0, row, B));
    }
    SampleKeys k(concat(concat(keys_for(seed, samples, kItmPositive), keys_for(seed, samples, kItmNegImage)),
                        keys_for(seed, samples, kItmNegText)));
    const at::Tensor logits = itm_logits(model, at::cat({b.text_ids, b.text_ids, nt_ids}),
                                         at::cat({b.text_masks, b.text_masks, nt_masks}), at::cat({b.image, ni, b.image}));
    const at::Tensor labels = at::cat({at::ones({B}, at::kLong), at::zeros({2 * B}, at::kLong)}).to(logits.device());
    const at::Tensor sum = at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum);
    sums.itm_sum += sum.item<double>();
    sums.itm_correct += logits.argmax(1).eq(labels).sum().item<double>();
    total = total + sum * (world / (3.0 * static_cast<double>(N)));
  }
  if (masked_total > 0) {
    SampleKeys k(keys_for(seed, samples, kMlmPass));
    const auto fused = model->infer(b.text_ids_mlm, b.text_masks, b.image, 1, TokenOutputs::kText);
    // mlm_loss is 0.25 x the mean over this batch's masked tokens; rescaled to a sum over the step's.
    const MlmOutput mlm = mlm_loss(model, fused.text_feats, b.text_labels_mlm, 0.25 * masked / masked_total);
    sums.mlm_sum += mlm.loss.item<double>();
    sums.mlm_correct += mlm.accuracy.item<double>() * masked;
    total = total + mlm.loss * world;
  }
  if (!std::isfinite(total.item<double>()))
    throw NonFiniteError(cat("micro-batch ", m + 1, " of the step has a non-finite ITM or MLM loss"));
  (loss_scale == 1 ? total : total * loss_scale).backward();
}

// This rank's samples, micro-batch by micro-batch.
std::vector<std::vector<int64_t>> step_samples(const std::vector<Batch>& micro) {
  std::vector<std::vector<int64_t>> samples(micro.size());
  for (size_t m = 0; m < micro.size(); ++m) {
    const Batch& b = micro[m];
    if (!b.image.defined() || !b.text_ids.defined() || !b.text_masks.defined())
      throw Error("the global contrastive batch needs image-text batches");
    if (b.first_sample < 0) throw Error("the global contrastive batch needs the batches' sample indices");
    for (int64_t j = 0; j < b.image.size(0); ++j) samples[m].push_back(b.first_sample + j);
  }
  return samples;
}

Outputs global_step(VLMo& model, const std::vector<Batch>& micro, const Distributed* dist, uint64_t seed, bool retrieval,
                    bool retrieval_itm) {
  if (micro.empty()) throw Error("global contrastive step without micro-batches");
  const bool multi = dist && dist->world_size() > 1;
  const double world = multi ? dist->world_size() : 1;
  const bool with_itm = (!retrieval || retrieval_itm) && model->config().has_head("itm"),
             with_mlm = !retrieval && model->config().has_head("mlm");
  require_head(model, "itc");
  if (retrieval && retrieval_itm) require_head(model, "itm");  // asked for: never skipped silently
  const int64_t D = model->config().embed_dim;

  const std::vector<std::vector<int64_t>> samples = step_samples(micro);
  std::vector<int64_t> local;
  for (const auto& sm : samples) local.insert(local.end(), sm.begin(), sm.end());
  const int64_t n_local = static_cast<int64_t>(local.size());

  // 1. Features of every micro-batch without autograd.
  std::vector<at::Tensor> feats;
  {
    at::NoGradGuard guard;
    for (size_t m = 0; m < micro.size(); ++m) feats.push_back(unimodal_features(model, micro[m], samples[m], seed, retrieval));
  }
  // 2. Every collective of the step, before anything that may fail on one rank only.
  const GatherFn gather = gather_over(dist);
  const at::Tensor local_ids = at::tensor(local, at::kLong);
  const at::Tensor all_ids = gather(local_ids);  // local first, then the other ranks
  const at::Tensor all_feats = gather(at::cat(feats));
  NegativePool pool;
  std::vector<at::Tensor> images, ids, masks;
  for (const Batch& b : micro) images.push_back(b.image), ids.push_back(b.text_ids), masks.push_back(b.text_masks);
  if (with_itm) {
    pool.images = gather(at::cat(images));
    pool.ids = gather(at::cat(ids));
    pool.masks = gather(at::cat(masks));
  }
  double masked_total = 0;
  std::vector<double> masked(micro.size(), 0.0);  // masked tokens per micro-batch
  if (with_mlm) std::tie(masked, masked_total) = masked_tokens(micro, dist, multi);
  // The step's samples in the order of their index (the same matrix on every rank).
  const at::Tensor order = all_ids.argsort();
  const int64_t N = all_ids.size(0);
  at::Tensor inverse = at::empty_like(order);
  inverse.index_put_({order}, at::arange(N, at::kLong));
  const at::Tensor local_pos = inverse.narrow(0, 0, n_local);  // this rank's rows in that order

  // ITC over the whole step, differentiated with respect to the cached features.
  at::Tensor cached = all_feats.index_select(0, order.to(all_feats.device())).detach().requires_grad_(true);
  const int64_t branches = retrieval ? 1 : 2;  // text features start at column branches x D
  const ContrastiveOutput itc = contrastive_loss(cached.narrow(1, 0, D), cached.narrow(1, branches * D, D), model->logit_scale);
  const at::Tensor itc_loss =
      retrieval
          ? itc.loss
          : 0.5 * (itc.loss + contrastive_loss(cached.narrow(1, D, D), cached.narrow(1, 3 * D, D), model->logit_vl_scale).loss);
  if (!std::isfinite(itc_loss.item<double>())) throw NonFiniteError(cat("ITC loss ", itc_loss.item<double>()));
  // Under loss scaling (fp16) every gradient of the step carries the trainer's scale: the logit
  // scales' from here, the encoders' through the scaled feature gradients and the scaled total.
  const double loss_scale = current_loss_scale();
  (loss_scale == 1 ? itc_loss : itc_loss * loss_scale)
      .backward();  // the logit scales' gradients are complete here, on every rank
  const at::Tensor feat_grads = cached.grad().index_select(0, local_pos.to(cached.device())) * world / loss_scale;
  Outputs out;
  const std::string name = retrieval ? "irtr" : "itc";
  out[name + "_loss"] = itc_loss.detach();
  out[name + "_i2t_acc"] =
      itc.logits_i2t.argmax(1).eq(at::arange(N, itc.logits_i2t.options().dtype(at::kLong))).to(at::kFloat).mean().detach();

  // 3. Hard negatives from the whole step, keyed by sample.
  if (with_itm) {
    const at::Tensor pick_image =
        keyed_sample_rows(hard_negative_weights(itc.logits_t2i), local_pos, keys_for(seed, local, kDrawImage));
    const at::Tensor pick_text =
        keyed_sample_rows(hard_negative_weights(itc.logits_i2t), local_pos, keys_for(seed, local, kDrawText));
    pool.neg_image = order.index_select(0, pick_image);
    pool.neg_text = order.index_select(0, pick_text);
  }

  // 4. Each micro-batch again, with autograd.
  SecondPassSums sums;
  int64_t row = 0;
  for (size_t m = 0; m < micro.size(); ++m) {
    const int64_t B = micro[m].image.size(0);
    second_pass(model, micro[m], samples[m], seed, retrieval, feat_grads.narrow(0, row, B), with_itm ? &pool : nullptr, row,
                masked[m], with_mlm ? masked_total : 0.0, world, N, loss_scale, m, sums);
    row += B;
  }
  // Values whose mean over ranks is the step's value (the trainer averages them).
  if (with_itm) {
    out["itm_loss"] = at::scalar_tensor(world * sums.itm_sum / (3.0 * static_cast<double>(N)), at::kDouble);
    out["itm_acc"] = at::scalar_tensor(world * sums.itm_correct / (3.0 * static_cast<double>(N)), at::kDouble);
  }
  if (with_mlm) {
    out["mlm_loss"] = at::scalar_tensor(world * sums.mlm_sum, at::kDouble);
    out["mlm_acc"] = at::scalar_tensor(masked_total > 0 ? world * sums.mlm_correct / masked_total : 0.0, at::kDouble);
  }
  return out;
}

}  // namespace

StepObjectiveFn vl_global_step_objective(uint64_t seed) {
  return [seed](VLMo& model, const std::vector<Batch>& micro, const Distributed* group) {
    return global_step(model, micro, group, seed, false, false);
  };
}

StepObjectiveFn irtr_global_step_objective(uint64_t seed, bool with_itm) {
  return [seed, with_itm](VLMo& model, const std::vector<Batch>& micro, const Distributed* group) {
    return global_step(model, micro, group, seed, true, with_itm);
  };
}

}  // namespace vlmo
