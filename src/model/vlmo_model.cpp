// The VLMo model and its forward paths (reference §1.7).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/utils.h>

#include <cmath>
#include <optional>

#include "model/model_internals.h"
#include "vlmo/error.h"
#include "vlmo/model.h"
#include "vlmo/relative_position.h"

namespace vlmo {

namespace nn = torch::nn;

VLMoImpl::VLMoImpl(const Config& c) : cfg_(c) {
  cfg_.validate();
  const int D = c.embed_dim;
  transformer = register_module("transformer", MultiwayTransformer(c));
  if (c.need_relative_position_embed)
    relative_position_bias_table =
        register_parameter("relative_position_bias_table", at::zeros({c.relative_table_rows(), c.num_heads * c.depth}));
  text_embeddings = register_module("text_embeddings", BertEmbeddings(c));
  token_type_embeddings = register_module("token_type_embeddings", nn::Embedding(c.num_token_types, D));
  pooler = register_module("pooler", Pooler(D));
  if (c.has_head("mlm")) mlm_score = register_module("mlm_score", MLMHead(D, c.vocab_size));
  if (c.has_head("itm")) itm_score = register_module("itm_score", FcHead(D, 2, true));
  if (c.has_head("itc")) {
    itc_text_proj = register_module("itc_text_proj", FcHead(D, D, false));
    itc_image_proj = register_module("itc_image_proj", FcHead(D, D, false));
    itc_vl_text_proj = register_module("itc_vl_text_proj", FcHead(D, D, false));
    itc_vl_image_proj = register_module("itc_vl_image_proj", FcHead(D, D, false));
    logit_scale = register_parameter("logit_scale", at::full({}, std::log(1 / 0.07)));
    logit_vl_scale = register_parameter("logit_vl_scale", at::full({}, std::log(1 / 0.07)));
  }
  auto classifier = [&](int in, int out) {
    nn::Sequential s;
    s->push_back(nn::Linear(in, 2 * D));
    s->push_back(nn::LayerNorm(nn::LayerNormOptions({2 * D}).eps(1e-5)));
    s->push_back(nn::GELU());
    s->push_back(nn::Linear(2 * D, out));
    return s;
  };
  if (c.has_head("vqa")) vqa_classifier = register_module("vqa_classifier", classifier(D, c.vqav2_label_size));
  if (c.has_head("nlvr2")) nlvr2_classifier = register_module("nlvr2_classifier", classifier(2 * D, 2));
  if (c.has_head("mim")) mim_head = register_module("mim_head", MIMHead(D, c.patch_size * c.patch_size * 3));
  set_run_policy(resolve_run_policy());
}

void VLMoImpl::set_run_policy(const RunPolicy& policy) {
  policy_ = policy;
  for (Block& b : transformer->block_list) {
    b->attn->policy = policy;
    for (Mlp* m : {&b->mlp_text, &b->mlp_imag, &b->mlp_vl})
      if (!m->is_empty()) (*m)->policy = policy;
  }
}

void VLMoImpl::set_precision(Precision p) {
  RunPolicy policy = policy_;
  policy.precision = p;
  set_run_policy(policy);
}

std::vector<at::Tensor> VLMoImpl::relative_biases(Modality modality, int64_t text_len) {
  if (!relative_position_bias_table.defined()) return std::vector<at::Tensor>(cfg_.depth);
  at::Tensor& cached = modality == Modality::kImage ? image_index_ : modality == Modality::kText ? text_index_ : fusion_index_;
  const int64_t n = modality == Modality::kImage  ? cfg_.image_tokens()
                    : modality == Modality::kText ? text_len
                                                  : text_len + cfg_.image_tokens();
  if (!cached.defined() || cached.size(0) != n || cached.device() != relative_position_bias_table.device()) {
    at::Tensor index = modality == Modality::kImage ? image_relative_position_index(cfg_.grid())
                       : modality == Modality::kText
                           ? text_relative_position_index(text_len, cfg_.grid(), cfg_.max_text_len_of_initckpt)
                           : fusion_relative_position_index(text_len, cfg_.grid(), cfg_.max_text_len_of_initckpt);
    cached = index.to(relative_position_bias_table.device());
  }
  // (N*N, H*L) -> (H*L, N, N) -> L pieces of (H, N, N)
  at::Tensor all = relative_position_bias_table.index_select(0, cached.view(-1)).view({n, n, -1}).permute({2, 0, 1}).contiguous();
  return all.chunk(cfg_.depth, 0);
}

at::Tensor VLMoImpl::text_embed(const at::Tensor& text_ids_in) {
  const at::Tensor text_ids = text_ids_in.to(device());
  return text_embeddings->forward(text_ids) + token_type_embeddings->forward(at::zeros_like(text_ids));
}

at::Tensor VLMoImpl::image_embed(const at::Tensor& images, int token_type) {
  if (token_type < 0 || token_type >= cfg_.num_token_types)
    throw Error(cat("image token type ", token_type, " is out of range: the model has ", cfg_.num_token_types,
                    " token types (num_token_types)"));
  at::Tensor x = transformer->visual_embed(images.to(device()));
  at::Tensor types = at::full({x.size(0), x.size(1)}, token_type, at::TensorOptions().dtype(at::kLong).device(x.device()));
  return x + token_type_embeddings->forward(types);
}

FusionOutput VLMoImpl::infer(const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images,
                             int image_token_type, TokenOutputs keep) {
  const int64_t Lt = text_ids.size(1);
  if (Lt != cfg_.max_text_len)
    throw Error(cat("fusion input text has ", Lt,
                    " tokens; it must be padded to exactly "
                    "max_text_len = ",
                    cfg_.max_text_len, " (the experts split at that index)"));
  at::Tensor x = at::cat({text_embed(text_ids), image_embed(images, image_token_type)}, 1);
  at::Tensor image_mask = at::ones({x.size(0), cfg_.image_tokens()}, text_masks.options().device(x.device()));
  at::Tensor mask = at::cat({text_masks.to(x.device()), image_mask}, 1);  // (B, Lt + W²+1)
  const auto biases = relative_biases(Modality::kVL, Lt);
  const int64_t last_keep = keep == TokenOutputs::kCls ? 1 : keep == TokenOutputs::kText ? Lt : -1;
  {
    AutocastGuard autocast(device().type(), policy_.precision);
    for (int i = 0; i < cfg_.depth; ++i)
      x = run_block(i, x, mask, Modality::kVL, biases[i], Lt, i == cfg_.depth - 1 ? last_keep : -1);
  }
  x = transformer->norm->forward(x);
  FusionOutput out;
  if (keep != TokenOutputs::kCls) out.text_feats = x.narrow(1, 0, Lt);
  if (keep == TokenOutputs::kAll) out.image_feats = x.narrow(1, Lt, x.size(1) - Lt);
  out.cls_feats = pooler->forward(x);
  out.raw_cls_feats = x.select(1, 0);
  return out;
}

namespace {
// F.normalize(x, dim=-1): x / max(||x||, 1e-12).
at::Tensor l2_normalize(const at::Tensor& x) { return x / x.norm(2, {-1}, true).clamp_min(1e-12); }
}  // namespace

UnimodalOutput VLMoImpl::unimodal(at::Tensor x, const at::Tensor& mask, Modality modality, FcHead proj, FcHead vl_proj,
                                  TokenOutputs keep) {
  const int64_t text_len = modality == Modality::kText ? x.size(1) : 0;
  const auto biases = relative_biases(modality, text_len);
  const int64_t last_keep = keep == TokenOutputs::kCls ? 1 : -1;
  at::Tensor vl_start;  // hidden state after block vlffn_start - 1
  {
    AutocastGuard autocast(device().type(), policy_.precision);
    for (int i = 0; i < cfg_.depth; ++i) {
      x = run_block(i, x, mask, modality, biases[i], text_len, i == cfg_.depth - 1 ? last_keep : -1);
      if (i == cfg_.vlffn_start_layer_index - 1) vl_start = x;
    }
  }
  UnimodalOutput out;
  out.feats = transformer->norm->forward(x);
  if (!proj.is_empty()) out.cls_feats = l2_normalize(proj->forward(out.feats.select(1, 0)));
  if (!vl_proj.is_empty()) {
    at::Tensor y = vl_start;
    {
      AutocastGuard autocast(device().type(), policy_.precision);
      for (int i = cfg_.vlffn_start_layer_index; i < cfg_.depth; ++i)
        y = run_block(i, y, mask, Modality::kVL, biases[i], text_len, i == cfg_.depth - 1 ? last_keep : -1);
    }
    y = transformer->norm->forward(y);
    out.cls_vlffn_feats = l2_normalize(vl_proj->forward(y.select(1, 0)));
  }
  return out;
}

namespace {
// What the backward pass of a checkpointed block needs to run the block again as it ran.
struct BlockRerun : torch::CustomClassHolder {
  Block block{nullptr};
  at::Tensor mask;
  Modality modality = Modality::kVL;
  int64_t text_len = 0, keep = -1;
  std::optional<std::vector<uint64_t>> keys;  // the SampleKeys then active
  at::Tensor rng_state;                       // the device generator's state before the pass
  c10::Device device = c10::kCPU;
  Precision precision = Precision::kFloat32;  // the autocast state then

  at::Tensor run(const at::Tensor& x, const at::Tensor& bias) { return block->forward(x, mask, modality, bias, text_len, keep); }
};

// Activation checkpointing of one block (the reentrant form): the first pass keeps only the
// inputs; backward sets the random state, keys and autocast back, runs the block again with
// autograd and back-propagates through it, which accumulates the block's parameter gradients and
// returns those of the inputs. The first pass runs with autograd on as the rerun does (its graph is
// dropped with the detached output as soon as the block is done), so both passes take the same
// kernels (attention_kernel, and LibTorch's own choices inside SDPA, which depend on whether q, k
// and v carry a gradient): the rerun computes exactly what the first pass computed.
struct CheckpointedBlock : torch::autograd::Function<CheckpointedBlock> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                            c10::intrusive_ptr<BlockRerun> rerun) {
    ctx->save_for_backward({x, bias});
    ctx->saved_data["rerun"] = c10::IValue::make_capsule(rerun);
    torch::AutoGradMode grad_on(true);
    // The inputs as the rerun sees them: detached, with their requires_grad.
    const at::Tensor xi = x.detach().requires_grad_(x.requires_grad());
    const at::Tensor bi = bias.defined() ? bias.detach().requires_grad_(bias.requires_grad()) : at::Tensor();
    return rerun->run(xi, bi).detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto rerun = c10::static_intrusive_pointer_cast<BlockRerun>(ctx->saved_data["rerun"].toCapsule());
    at::Tensor x = saved[0].detach().requires_grad_(saved[0].requires_grad());
    at::Tensor bias = saved[1].defined() ? saved[1].detach().requires_grad_(saved[1].requires_grad()) : at::Tensor();
    at::Tensor out;
    {
      torch::AutoGradMode grad_on(true);
      std::optional<SampleKeys> keys;
      if (rerun->keys) keys.emplace(*rerun->keys);
      at::Generator gen;
      at::Tensor current_state;
      if (rerun->rng_state.defined()) {
        gen = at::globalContext().defaultGenerator(rerun->device);
        std::lock_guard<std::mutex> lock(gen.mutex());
        current_state = gen.get_state();
        gen.set_state(rerun->rng_state);
      }
      AutocastGuard autocast(rerun->device.type(), rerun->precision);
      out = rerun->run(x, bias);
      if (current_state.defined()) {
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(current_state);
      }
    }
    torch::autograd::backward({out}, {grads[0]});
    return {x.requires_grad() ? x.grad() : at::Tensor(), bias.defined() && bias.requires_grad() ? bias.grad() : at::Tensor(),
            at::Tensor()};
  }
};
}  // namespace

at::Tensor VLMoImpl::run_block(int i, const at::Tensor& x, const at::Tensor& mask, Modality modality, const at::Tensor& rel_bias,
                               int64_t text_len, int64_t keep) {
  Block& block = transformer->block_list[static_cast<size_t>(i)];
  // Only in training with autograd on, and only when an input carries a gradient: the reentrant
  // form sends the parameters' gradients through its inputs' graph.
  const bool inputs_need_grad = x.requires_grad() || (rel_bias.defined() && rel_bias.requires_grad());
  if (!checkpointing_ || !is_training() || !at::GradMode::is_enabled() || !inputs_need_grad)
    return block->forward(x, mask, modality, rel_bias, text_len, keep);
  auto rerun = c10::make_intrusive<BlockRerun>();
  rerun->block = block;
  rerun->mask = mask;
  rerun->modality = modality;
  rerun->text_len = text_len;
  rerun->keep = keep;
  if (const auto* keys = SampleKeys::current()) rerun->keys = *keys;
  rerun->device = x.device();
  rerun->precision = !autocast_enabled(x.device().type())             ? Precision::kFloat32
                     : autocast_dtype(x.device().type()) == at::kHalf ? Precision::kFloat16
                                                                      : Precision::kBFloat16;
  if (block->drop_prob > 0 && !rerun->keys) {  // drop path draws from the device's generator
    at::Generator gen = at::globalContext().defaultGenerator(x.device());
    std::lock_guard<std::mutex> lock(gen.mutex());
    rerun->rng_state = gen.get_state();
  }
  return CheckpointedBlock::apply(x, rel_bias, rerun);
}

namespace {
void require_itc(const FcHead& head) {
  if (head.is_empty()) throw Error("this model has no ITC projection heads (config \"heads\" lacks \"itc\")");
}
}  // namespace

UnimodalOutput VLMoImpl::infer_text(const at::Tensor& text_ids, const at::Tensor& text_masks, TokenOutputs keep) {
  require_itc(itc_text_proj);
  return unimodal(text_embed(text_ids), text_masks.to(device()), Modality::kText, itc_text_proj, itc_vl_text_proj, keep);
}

UnimodalOutput VLMoImpl::infer_image(const at::Tensor& images, TokenOutputs keep) {
  require_itc(itc_image_proj);
  return unimodal(image_embed(images, 1), at::Tensor(), Modality::kImage, itc_image_proj, itc_vl_image_proj, keep);
}

UnimodalOutput VLMoImpl::infer_text_ft(const at::Tensor& text_ids, const at::Tensor& text_masks, TokenOutputs keep) {
  require_itc(itc_text_proj);
  return unimodal(text_embed(text_ids), text_masks.to(device()), Modality::kText, itc_text_proj, nullptr, keep);
}

UnimodalOutput VLMoImpl::infer_image_ft(const at::Tensor& images, TokenOutputs keep) {
  require_itc(itc_image_proj);
  return unimodal(image_embed(images, 1), at::Tensor(), Modality::kImage, itc_image_proj, nullptr, keep);
}

at::Tensor VLMoImpl::infer_image_masked(const at::Tensor& images, const at::Tensor& patch_mask) {
  if (mim_head.is_empty()) throw Error("this model has no \"mim\" head (add it to the config's \"heads\")");
  at::Tensor x = transformer->visual_embed(images.to(device()), patch_mask.to(device()), mim_head->mask_token);
  at::Tensor types = at::ones({x.size(0), x.size(1)}, at::TensorOptions().dtype(at::kLong).device(x.device()));
  x = x + token_type_embeddings->forward(types);
  return unimodal(x, at::Tensor(), Modality::kImage, nullptr, nullptr).feats;
}

at::Tensor VLMoImpl::infer_text_mlm(const at::Tensor& text_ids, const at::Tensor& text_masks) {
  return unimodal(text_embed(text_ids), text_masks.to(device()), Modality::kText, nullptr, nullptr).feats;
}

namespace {
void trunc_normal(at::Tensor t, double std) {
  // timm trunc_normal_(std) truncates at +-2 (absolute), i.e. +-100 std for std 0.02.
  torch::NoGradGuard guard;
  t.normal_(0, std).clamp_(-2.0, 2.0);
}
}  // namespace

void init_weights(VLMo& model, uint64_t seed) {
  torch::NoGradGuard guard;
  at::manual_seed(seed);
  auto& m = *model;
  for (auto& item : m.named_modules()) {
    const std::string& name = item.key();
    nn::Module& mod = *item.value();
    const bool in_transformer = name.rfind("transformer", 0) == 0;
    if (auto* lin = mod.as<nn::Linear>()) {
      if (in_transformer) trunc_normal(lin->weight, 0.02);
      else lin->weight.normal_(0, 0.02);
      if (lin->bias.defined()) lin->bias.zero_();
    } else if (auto* emb = mod.as<nn::Embedding>()) {
      emb->weight.normal_(0, 0.02);
    } else if (auto* ln = mod.as<nn::LayerNorm>()) {
      ln->weight.fill_(1);
      ln->bias.zero_();
    } else if (auto* conv = mod.as<nn::Conv2d>()) {
      // PyTorch's default Conv2d init (kaiming_uniform with a = sqrt(5)).
      const double bound = 1.0 / std::sqrt(static_cast<double>(conv->weight[0].numel()));
      conv->weight.uniform_(-bound, bound);
      conv->bias.uniform_(-bound, bound);
    }
  }
  trunc_normal(m.transformer->cls_token, 0.02);
  if (m.transformer->pos_embed.defined()) trunc_normal(m.transformer->pos_embed, 0.02);
  if (!m.mim_head.is_empty()) trunc_normal(m.mim_head->mask_token, 0.02);
  if (m.relative_position_bias_table.defined()) m.relative_position_bias_table.zero_();
  for (auto& b : m.transformer->block_list) {
    b->attn->q_bias.zero_();
    b->attn->v_bias.zero_();
    if (b->gamma_1.defined()) {
      b->gamma_1.fill_(*m.config().layer_scale_init_values);
      b->gamma_2.fill_(*m.config().layer_scale_init_values);
    }
  }
  if (!m.mlm_score.is_empty()) m.mlm_score->bias.zero_();
  if (m.logit_scale.defined()) {
    m.logit_scale.fill_(std::log(1 / 0.07));
    m.logit_vl_scale.fill_(std::log(1 / 0.07));
  }
}

int64_t count_parameters(torch::nn::Module& m, const std::vector<std::string>& prefixes) {
  int64_t n = 0;
  for (const auto& p : m.named_parameters()) {
    bool match = prefixes.empty();
    for (const auto& pre : prefixes) match = match || p.key().rfind(pre, 0) == 0;
    if (match) n += p.value().numel();
  }
  return n;
}

}  // namespace vlmo
