#include "vlmo/reference_check.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "vlmo/checkpoint.h"
#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/objectives.h"

namespace vlmo {

bool CheckResult::ok() const { return !rows.empty() && passed() == static_cast<int>(rows.size()); }

int CheckResult::passed() const {
  int n = 0;
  for (const auto& r : rows) n += r.pass;
  return n;
}

CheckRow compare_tensor(const std::string& name, const at::Tensor& actual, const at::Tensor& expected) {
  CheckRow row;
  row.name = name;
  row.shape = cat(expected.sizes());
  if (!actual.defined()) {
    row.note = "not computed";
    return row;
  }
  if (actual.sizes() != expected.sizes()) {
    row.note = cat("shape ", actual.sizes(), " differs");
    return row;
  }
  const at::Tensor a = actual.detach().to(at::kCPU).to(at::kDouble);
  const at::Tensor b = expected.to(at::kDouble);
  const at::Tensor diff = (a - b).abs();
  if (diff.numel() == 0) {
    row.pass = true;
    return row;
  }
  row.max_abs_err = diff.max().item<double>();
  row.worst_ratio = (diff / (1e-4 * (1 + b.abs()))).max().item<double>();
  row.pass = row.worst_ratio <= 1.0;  // NaN fails
  return row;
}

namespace {

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string read_text(const std::string& p) {
  std::ifstream in = open_input(p, "reference fixture");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// config.json may carry fields of the fixture itself (source_*); the rest is a model config.
Config fixture_config(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(path, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) throw Error(cat(path, ": must be a JSON object"));
  for (const char* k : {"source_image_size", "source_max_text_len"}) j.erase(k);
  return config_from_json_text(j.dump(), path);
}

const at::Tensor& input(const TensorMap& m, const std::string& key, const std::string& file) {
  auto it = m.find(key);
  if (it == m.end()) throw Error(cat(file, ": input tensor \"", key, "\" is missing"));
  return it->second;
}

CheckResult check_forward(const std::string& dir, const RunPolicy& policy) {
  const at::Device device = policy.device;
  const Config cfg = fixture_config(dir + "/config.json");
  VLMo model(cfg);
  load_weights(model, load_safetensors(dir + "/weights.safetensors"), /*strict=*/true);
  model->to(device);
  model->set_run_policy(policy);
  model->train();  // the fixtures were computed in training mode (dropout 0 there)
  const std::string in_file = dir + "/inputs.safetensors";
  const TensorMap in = load_safetensors(in_file);
  const TensorMap expected = load_safetensors(dir + "/expected.safetensors");
  auto get = [&](const std::string& k) { return input(in, k, in_file).to(device); };
  auto optional = [&](const std::string& k) {
    auto it = in.find(k);
    return it == in.end() ? at::Tensor() : it->second.to(device);
  };

  Batch batch;
  batch.text_ids = get("text_ids");
  batch.text_masks = get("text_masks");
  batch.text_ids_mlm = optional("text_ids_mlm");
  batch.text_labels_mlm = optional("text_labels_mlm");
  batch.image_0 = optional("image_0");
  // The official picks batch["image_{t-1}"] over batch["image"] when it exists (t = image token
  // type 1 for every non-NLVR2 pass), so with image_0 present `image` is never read.
  batch.image = batch.image_0.defined() ? batch.image_0 : get("image");
  batch.image_1 = optional("image_1");
  batch.vqa_targets = optional("vqa.targets");
  batch.nlvr2_labels = optional("nlvr2.labels");

  std::map<std::string, at::Tensor> got;
  auto fusion = model->infer(batch.text_ids, batch.text_masks, batch.image);
  got["fusion.text_feats"] = fusion.text_feats;
  got["fusion.image_feats"] = fusion.image_feats;
  got["fusion.cls_feats"] = fusion.cls_feats;
  got["fusion.raw_cls_feats"] = fusion.raw_cls_feats;
  at::Tensor total;
  auto add = [&](const at::Tensor& loss) { total = total.defined() ? total + loss : loss; };
  if (cfg.has_head("itc")) {
    auto text = model->infer_text(batch.text_ids, batch.text_masks);
    auto image = model->infer_image(batch.image);
    got["text.feats"] = text.feats;
    got["text.cls_feats"] = text.cls_feats;
    got["text.cls_vlffn_feats"] = text.cls_vlffn_feats;
    got["image.feats"] = image.feats;
    got["image.cls_feats"] = image.cls_feats;
    got["image.cls_vlffn_feats"] = image.cls_vlffn_feats;
    got["text_ft.cls_feats"] = model->infer_text_ft(batch.text_ids, batch.text_masks).cls_feats;
    got["image_ft.cls_feats"] = model->infer_image_ft(batch.image).cls_feats;
    auto itc = compute_itc(model, batch);
    got["itc.i2t_logits"] = itc.itc.logits_i2t;
    got["itc.loss"] = itc.loss;
    add(itc.loss);
    got["itm.weights_i2t"] = hard_negative_weights(itc.itc.logits_i2t);
    got["itm.weights_t2i"] = hard_negative_weights(itc.itc.logits_t2i);
    if (cfg.has_head("itm") && in.count("itm.neg_image_index")) {
      // The official builds its negative batches as copies of the batch with "image" or the
      // text replaced; when the batch also holds image_0, infer() reads image_0 instead, so
      // every pair sees image_0 (the negative images are dropped). Emulate that exactly.
      const at::Tensor neg_img = get("itm.neg_image_index"), neg_txt = get("itm.neg_text_index");
      const at::Tensor neg_images = batch.image_0.defined() ? batch.image : batch.image.index_select(0, neg_img);
      const int64_t B = batch.text_ids.size(0);
      auto itm = itm_on_pairs(model, at::cat({batch.text_ids, batch.text_ids, batch.text_ids.index_select(0, neg_txt)}),
                              at::cat({batch.text_masks, batch.text_masks, batch.text_masks.index_select(0, neg_txt)}),
                              at::cat({batch.image, neg_images, batch.image}),
                              at::cat({at::ones({B}, at::kLong), at::zeros({2 * B}, at::kLong)}));
      got["itm.logits"] = itm.logits;
      got["itm.loss"] = itm.loss;
      add(itm.loss);
    }
  }
  if (batch.text_ids_mlm.defined()) {
    got["text_mlm.feats"] = model->infer_text_mlm(batch.text_ids_mlm, batch.text_masks);
    if (cfg.has_head("mlm") && batch.text_labels_mlm.defined()) {
      auto mlm = compute_mlm(model, batch, /*full_logits=*/true);
      got["mlm.logits"] = mlm.logits;
      got["mlm.loss"] = mlm.loss;
      add(mlm.loss);
    }
  }
  if (cfg.has_head("vqa") && batch.vqa_targets.defined()) {
    auto vqa = compute_vqa(model, batch);
    got["vqa.logits"] = vqa.logits;
    got["vqa.loss"] = vqa.loss;
    add(vqa.loss);
  }
  if (cfg.has_head("nlvr2") && batch.nlvr2_labels.defined() && batch.image_0.defined()) {
    auto nlvr2 = compute_nlvr2(model, batch);
    got["nlvr2.logits"] = nlvr2.logits;
    got["nlvr2.loss"] = nlvr2.loss;
    add(nlvr2.loss);
  }
  if (total.defined()) {
    got["total.loss"] = total;
    total.backward();
    for (const auto& p : model->named_parameters()) {
      const at::Tensor& g = p.value().grad();
      got["grad." + p.key()] = g.defined() ? g : at::zeros_like(p.value());
    }
  }

  CheckResult result;
  result.kind = "forward";
  for (const auto& [name, want] : expected) result.rows.push_back(compare_tensor(name, got[name], want));
  return result;
}

CheckResult check_resize(const std::string& dir, const RunPolicy& policy) {
  const at::Device device = policy.device;
  const Config cfg = fixture_config(dir + "/config.json");
  VLMo model(cfg);
  init_weights(model, 0);
  load_weights(model, load_safetensors(dir + "/source.safetensors"), /*strict=*/false);
  model->to(device);
  const TensorMap state = model_state_dict(*model);
  CheckResult result;
  result.kind = "resize";
  for (const auto& [name, want] : load_safetensors(dir + "/expected.safetensors")) {
    auto it = state.find(name);
    result.rows.push_back(compare_tensor(name, it == state.end() ? at::Tensor() : it->second, want));
  }
  return result;
}

}  // namespace

CheckResult check_reference(const std::string& dir, const RunPolicy& policy) {
  // The fixtures are exact fp32: TF32 tensor-core maths (cuDNN's default for convolutions)
  // would differ by ~1e-3.
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  if (!exists(dir + "/config.json")) throw Error(cat(dir, ": not a reference fixture folder (no config.json)"));
  if (!exists(dir + "/expected.safetensors")) throw Error(cat(dir, ": not a reference fixture folder (no expected.safetensors)"));
  if (exists(dir + "/weights.safetensors")) {
    if (!exists(dir + "/inputs.safetensors")) throw Error(cat(dir, ": forward fixture without inputs.safetensors"));
    return check_forward(dir, policy);
  }
  if (exists(dir + "/source.safetensors")) return check_resize(dir, policy);
  throw Error(cat(dir, ": neither weights.safetensors (forward fixture) nor source.safetensors "
                       "(resize fixture) found"));
}

}  // namespace vlmo
