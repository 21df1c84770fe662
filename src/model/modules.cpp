// Building blocks of the multiway Transformer and the heads (reference §1.2, §1.3, §1.5).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <optional>

#include "model/model_internals.h"
#include "ops/attention.h"
#include "ops/packed_linear.h"
#include "vlmo/error.h"
#include "vlmo/model.h"
#include "vlmo/ops.h"
#include "vlmo/precision.h"

namespace vlmo {

namespace nn = torch::nn;

namespace {
thread_local const std::vector<uint64_t>* active_keys = nullptr;
thread_local AttentionRecorder* active_recorder = nullptr;
std::array<std::atomic<int64_t>, 3> kernel_counts{};  // by AttentionKernel

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A keep mask for the rows of x: from the keys when a SampleKeys guard is active, else from
// the global generator.
at::Tensor keep_mask(const at::Tensor& x, at::IntArrayRef row_shape, double keep, uint64_t salt) {
  if (const auto* keys = SampleKeys::current()) {
    if (static_cast<int64_t>(keys->size()) != x.size(0))
      throw Error(cat("keyed randomness: a batch of ", x.size(0), " rows under ", keys->size(), " sample keys"));
    return keyed_keep_mask(*keys, row_shape, keep, salt).to(x.options());
  }
  std::vector<int64_t> shape = {x.size(0)};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  return at::empty(shape, x.options()).bernoulli_(keep);
}

// timm DropPath: drops whole residual branches per sample, scaling the kept ones by 1/keep.
at::Tensor drop_path(const at::Tensor& x, double p, bool training, uint64_t salt) {
  if (p <= 0 || !training) return x;
  const double keep = 1.0 - p;
  const std::vector<int64_t> row_shape(x.dim() - 1, 1);
  return x.div(keep) * keep_mask(x, row_shape, keep, salt);
}
}  // namespace

SampleKeys::SampleKeys(std::vector<uint64_t> keys) : keys_(std::move(keys)), previous_(active_keys) { active_keys = &keys_; }
SampleKeys::~SampleKeys() { active_keys = previous_; }
const std::vector<uint64_t>* SampleKeys::current() { return active_keys; }

AttentionRecorder::AttentionRecorder() : previous_(active_recorder) { active_recorder = this; }
AttentionRecorder::~AttentionRecorder() { active_recorder = previous_; }
AttentionRecorder* AttentionRecorder::current() { return active_recorder; }

at::Tensor keyed_keep_mask(const std::vector<uint64_t>& keys, at::IntArrayRef row_shape, double keep, uint64_t salt) {
  std::vector<int64_t> shape = {static_cast<int64_t>(keys.size())};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  at::Tensor mask = at::empty(shape, at::kFloat);
  for (size_t i = 0; i < keys.size(); ++i) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(splitmix64(keys[i] ^ splitmix64(salt)));
    mask[static_cast<int64_t>(i)].bernoulli_(keep, gen);
  }
  return mask;
}

struct QuantizedLinear {
  c10::IValue packed;  // the engine's packed weight (and bias), an opaque custom-class object
  int64_t out_features = 0;

  static c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }
  QuantizedLinear(const at::Tensor& weight, const at::Tensor& bias) : out_features(weight.size(0)) {
    at::NoGradGuard guard;
    const at::Tensor w = weight.detach().to(at::kFloat).contiguous();
    // Symmetric per output channel: the largest |w| of a row maps to 127.
    const at::Tensor scales = (w.abs().amax(1) / 127.0).clamp_min(1e-12).to(at::kDouble);
    const at::Tensor q = at::quantize_per_channel(w, scales, at::zeros({w.size(0)}, at::kLong), 0, at::kQInt8);
    torch::jit::Stack stack{q, bias.defined() ? c10::IValue(bias.detach().to(at::kFloat).contiguous()) : c10::IValue()};
    op("quantized::linear_prepack").callBoxed(&stack);
    packed = stack.at(0);
  }
  at::Tensor forward(const at::Tensor& x) const {
    torch::jit::Stack stack{x.to(at::kFloat).contiguous(), packed, /*reduce_range=*/true};
    op("quantized::linear_dynamic").callBoxed(&stack);
    return stack.at(0).toTensor();
  }
};

namespace {
void refuse_training(const torch::nn::Module& m) {
  if (m.is_training()) throw Error("this model is int8-quantised: inference only (eval mode), it passes no gradient");
}
}  // namespace

// What inference keeps of a module's weights between passes: the low-precision copies autocast
// would make in every pass, and the fp32 weights packed for oneDNN (src/ops/packed_linear.h).
struct InferenceWeights {
  struct Entry {
    at::Tensor source, value;
    int64_t version = -1;
  };
  std::mutex mutex;
  std::array<Entry, 4> entries;
  std::array<std::shared_ptr<const PackedLinear>, 2> packed;

  // Whether a pass runs its linear layers through packed weights: fp32 inference on the CPU (no
  // autograd, eval mode, no autocast) with oneDNN's products.
  static bool packs(const torch::nn::Module& m, const RunPolicy& policy, const at::Tensor& x) {
    return policy.cpu_products == CpuProducts::kOneDnn && !at::GradMode::is_enabled() && !m.is_training() && x.is_cpu() &&
           x.scalar_type() == at::kFloat && !autocast_enabled(c10::DeviceType::CPU);
  }
  // Layer i: x w^T + b (then GELU) through its packed weight, repacked when `w` changed; at::linear
  // where oneDNN has no fast kernel.
  at::Tensor linear(size_t i, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool gelu) {
    std::shared_ptr<const PackedLinear> p;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto& e = packed.at(i);
      if (!e || !e->packs(w)) e = std::make_shared<const PackedLinear>(w, b.defined(), gelu);
      p = e;
    }
    at::Tensor y = p->forward(x, b);
    if (y.defined()) return y;
    y = at::linear(x, w, b);
    return gelu ? at::gelu(y) : y;
  }

  // Whether a pass may use the kept copies: inference (no autograd, module in eval mode) under
  // autocast. Training passes leave the casts to autocast (their weights change every step).
  static bool applies(const torch::nn::Module& m, const at::Tensor& x) {
    return !at::GradMode::is_enabled() && !m.is_training() && autocast_enabled(x.device().type());
  }
  // Entry i's copy of w as inference under `policy` keeps it (vlmo/ops.h: low_precision_weight).
  at::Tensor get(const RunPolicy& policy, size_t i, const at::Tensor& w, c10::DeviceType device) {
    if (!w.defined() || w.scalar_type() != at::kFloat) return w;  // autocast casts fp32 only (fp64 stays)
    const at::ScalarType t = policy.bf16_emulated(device) ? at::kFloat : autocast_dtype(device);
    std::lock_guard<std::mutex> lock(mutex);
    Entry& e = entries.at(i);
    if (!e.value.defined() || !e.source.is_same(w) || e.version != static_cast<int64_t>(w._version()) ||
        e.value.scalar_type() != t) {
      e.value = low_precision_weight(policy, device, w);
      e.source = w;
      e.version = static_cast<int64_t>(w._version());
    }
    return e.value;
  }
};

MlpImpl::MlpImpl(int dim, int hidden) {
  fc1 = register_module("fc1", nn::Linear(dim, hidden));
  fc2 = register_module("fc2", nn::Linear(hidden, dim));
  low = std::make_shared<InferenceWeights>();  // made here, not on first use: passes may run concurrently
}

at::Tensor MlpImpl::forward(const at::Tensor& x, const at::Tensor& scale) {
  const auto scaled = [&](const at::Tensor& y) { return scale.defined() ? scale * y : y; };
  if (q_fc1) {
    refuse_training(*this);
    return scaled(q_fc2->forward(at::gelu(q_fc1->forward(x))));
  }
  const RunPolicy& p = policy;
  if (InferenceWeights::packs(*this, p, x))
    return scaled(low->linear(1, low->linear(0, x, fc1->weight, fc1->bias, /*gelu=*/true), fc2->weight, fc2->bias, false));
  if (InferenceWeights::applies(*this, x)) {
    const auto d = x.device().type();
    const at::Tensor h = at::gelu(linear_as(p, x, low->get(p, 0, fc1->weight, d), low->get(p, 1, fc1->bias, d), true));
    return scaled(linear_as(p, h, low->get(p, 2, fc2->weight, d), low->get(p, 3, fc2->bias, d), true));
  }
  return mlp_as(p, x, fc1->weight, fc1->bias, fc2->weight, fc2->bias, scale);
}

int64_t attention_kernel_calls(AttentionKernel k) { return kernel_counts.at(static_cast<size_t>(k)).load(); }
std::array<int64_t, 3> attention_kernel_counts() {
  std::array<int64_t, 3> n{};
  for (size_t k = 0; k < n.size(); ++k) n[k] = kernel_counts[k].load();
  return n;
}
std::map<std::string, int64_t> attention_kernel_calls_since(const std::array<int64_t, 3>& before) {
  std::map<std::string, int64_t> calls;
  const std::array<int64_t, 3> now = attention_kernel_counts();
  for (size_t k = 0; k < now.size(); ++k) calls[attention_kernel_name(static_cast<AttentionKernel>(k))] = now[k] - before[k];
  return calls;
}
int64_t fused_attention_calls() {
  return attention_kernel_calls(AttentionKernel::kCpuInference) + attention_kernel_calls(AttentionKernel::kSdpa);
}

AttentionImpl::AttentionImpl(int dim, int heads) : num_heads(heads), scale(std::pow(static_cast<double>(dim / heads), -0.5)) {
  qkv = register_module("qkv", nn::Linear(nn::LinearOptions(dim, 3 * dim).bias(false)));
  q_bias = register_parameter("q_bias", at::zeros({dim}));
  v_bias = register_parameter("v_bias", at::zeros({dim}));
  proj = register_module("proj", nn::Linear(dim, dim));
  low = std::make_shared<InferenceWeights>();
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& key_mask, const at::Tensor& rel_bias, int64_t queries,
                                  const at::Tensor& out_scale) {
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  const int64_t Q = queries < 0 ? N : std::min(queries, N);
  const at::Tensor bias = at::cat({q_bias, at::zeros_like(v_bias), v_bias});
  // (B, N, 3C) -> (3, B, H, N, hd)
  if (q_qkv) refuse_training(*this);
  const bool keep_low = !q_qkv && InferenceWeights::applies(*this, x);
  const auto dev = x.device().type();
  const RunPolicy& p = policy;
  const bool packed = !q_qkv && InferenceWeights::packs(*this, p, x);
  at::Tensor qkv_lin = q_qkv      ? q_qkv->forward(x)
                       : packed   ? low->linear(0, x, qkv->weight, bias, false)
                       : keep_low ? linear_as(p, x, low->get(p, 0, qkv->weight, dev), bias, true)
                                  : linear_as(p, x, qkv->weight, bias);  // (B, N, 3C)
  auto project = [&](const at::Tensor& o) {
    if (!q_proj && !packed && !keep_low) return linear_as(p, o, proj->weight, proj->bias, false, out_scale);
    const at::Tensor y = q_proj   ? q_proj->forward(o)
                         : packed ? low->linear(1, o, proj->weight, proj->bias, false)
                                  : linear_as(p, o, low->get(p, 1, proj->weight, dev), low->get(p, 2, proj->bias, dev), true);
    return out_scale.defined() ? out_scale * y : y;
  };
  // Emulated bf16 (vlmo/run_policy.h): q, k and v rounded to bf16, the kernels' products in fp32.
  const bool emulated = p.bf16_emulated(dev) && qkv_lin.scalar_type() != at::kDouble;
  const AttentionCall call{dev, qkv_lin.scalar_type(), at::GradMode::is_enabled(), active_recorder != nullptr};
  const AttentionKernel kernel = attention_kernel(p, call);
  ++kernel_counts.at(static_cast<size_t>(kernel));
  if (kernel == AttentionKernel::kCpuInference) {
    std::optional<AutocastGuard> fp32;  // emulated: the kernel's products in fp32 (autocast would make them bf16)
    if (emulated) fp32.emplace(dev, Precision::kFloat32);
    const at::Tensor out =
        cpu_inference_attention(emulated ? bf16_rounded_fp32(qkv_lin) : qkv_lin, Q, num_heads, scale, key_mask, rel_bias);
    fp32.reset();
    return project(out);
  }
  at::Tensor qkv_out = qkv_lin.reshape({B, N, 3, num_heads, C / num_heads}).permute({2, 0, 3, 1, 4});
  if (kernel == AttentionKernel::kSdpa) return project(sdpa_attention(qkv_out, Q, key_mask, rel_bias, emulated));
  const std::vector<at::Tensor> qkv_parts = qkv_out.unbind(0);  // (see sdpa_attention)
  at::Tensor q = qkv_parts[0].narrow(2, 0, Q), k = qkv_parts[1], v = qkv_parts[2];
  // Emulated bf16: q, k and v rounded once, as the fused kernels take them; the products, the
  // logits and the probabilities in fp32, as there.
  std::optional<AutocastGuard> fp32;
  if (emulated) {
    fp32.emplace(dev, Precision::kFloat32);
    q = bf16_rounded_fp32(q), k = bf16_rounded_fp32(k), v = bf16_rounded_fp32(v);
  }
  // fp32 training with oneDNN's products: the probabilities computed again in backward, not kept.
  if (!emulated && call.autograd && !call.recording && p.cpu_products == CpuProducts::kOneDnn && dev == c10::DeviceType::CPU &&
      q.scalar_type() == at::kFloat && !autocast_enabled(dev))
    return project(recomputing_attention(q, k, v, scale, key_mask, rel_bias).transpose(1, 2).reshape({B, Q, C}));
  const auto product = [&](const at::Tensor& a, const at::Tensor& b) {
    return emulated ? batched_matmul(a, b, p.cpu_products) : matmul_as(p, a, b);
  };
  q = q * scale;
  // Logits in fp32 even under reduced precision, as the official (fp64 stays fp64). Under
  // autocast the product itself runs in the low precision whatever its inputs (the official's
  // q.float() @ k.float() too), so q and k are not converted first; the bias makes them fp32.
  const bool autocast = autocast_enabled(q.device().type());
  const auto logit_type = autocast ? q.scalar_type() : at::promote_types(q.scalar_type(), at::kFloat);
  at::Tensor attn = product(q.to(logit_type), k.to(logit_type).transpose(-2, -1));  // (B,H,Q,N)
  if (autocast) attn = attn.to(at::promote_types(attn.scalar_type(), at::kFloat));
  if (rel_bias.defined()) attn = attn + rel_bias.narrow(1, 0, Q).unsqueeze(0);
  // In place: attn is a fresh product or sum here, which no backward function keeps.
  if (key_mask.defined())
    attn.masked_fill_(key_mask.index({at::indexing::Slice(), at::indexing::None, at::indexing::None, at::indexing::Slice()}) == 0,
                      -std::numeric_limits<float>::infinity());
  attn = attn.softmax(-1).to(x.scalar_type());
  if (active_recorder) active_recorder->record(attn.select(2, 0).detach().clone());
  at::Tensor out = product(attn, v).transpose(1, 2).reshape({B, Q, C});  // (B, Q, C)
  fp32.reset();
  return project(out);
}

BlockImpl::BlockImpl(const Config& c, int layer_index, double drop_path_prob) : drop_prob(drop_path_prob), layer(layer_index) {
  const int D = c.embed_dim;
  auto ln = [&] { return nn::LayerNorm(nn::LayerNormOptions({D}).eps(1e-6)); };
  norm1 = register_module("norm1", ln());
  attn = register_module("attn", Attention(D, c.num_heads));
  norm2_text = register_module("norm2_text", ln());
  norm2_imag = register_module("norm2_imag", ln());
  mlp_text = register_module("mlp_text", Mlp(D, c.mlp_hidden()));
  mlp_imag = register_module("mlp_imag", Mlp(D, c.mlp_hidden()));
  if (layer_index >= c.vlffn_start_layer_index) {
    norm2_vl = register_module("norm2_vl", ln());
    mlp_vl = register_module("mlp_vl", Mlp(D, c.mlp_hidden()));
  }
  if (c.layer_scale_init_values) {
    gamma_1 = register_parameter("gamma_1", at::full({D}, *c.layer_scale_init_values));
    gamma_2 = register_parameter("gamma_2", at::full({D}, *c.layer_scale_init_values));
  }
}

at::Tensor BlockImpl::residual(const at::Tensor& x, const at::Tensor& branch_out, int branch) {
  return x +
         drop_path(branch_out, drop_prob, is_training(), static_cast<uint64_t>(layer) * 4 + static_cast<uint64_t>(branch) + 1);
}

at::Tensor BlockImpl::forward(const at::Tensor& x_in, const at::Tensor& key_mask, Modality modality, const at::Tensor& rel_bias,
                              int64_t text_len, int64_t keep) {
  const int64_t Q = keep < 0 ? x_in.size(1) : std::min(keep, x_in.size(1));
  at::Tensor x = residual(x_in.narrow(1, 0, Q), attn->forward(norm1->forward(x_in), key_mask, rel_bias, Q, gamma_1), 0);
  switch (modality) {
    case Modality::kImage: return residual(x, mlp_imag->forward(norm2_imag->forward(x), gamma_2), 1);
    case Modality::kText: return residual(x, mlp_text->forward(norm2_text->forward(x), gamma_2), 1);
    case Modality::kVL:
      if (has_vl()) return residual(x, mlp_vl->forward(norm2_vl->forward(x), gamma_2), 1);
      if (Q <= text_len) return residual(x, mlp_text->forward(norm2_text->forward(x), gamma_2), 1);
      {
        // Lower layers: the fixed split at max_text_len, text expert then image expert.
        at::Tensor xt = x.narrow(1, 0, text_len), xi = x.narrow(1, text_len, x.size(1) - text_len);
        xt = residual(xt, mlp_text->forward(norm2_text->forward(xt), gamma_2), 1);
        xi = residual(xi, mlp_imag->forward(norm2_imag->forward(xi), gamma_2), 2);
        return at::cat({xt, xi}, 1);
      }
  }
  throw Error("BlockImpl::forward: unknown modality");
}

PatchEmbedImpl::PatchEmbedImpl(const Config& c) : image_size(c.image_size) {
  proj = register_module("proj", nn::Conv2d(nn::Conv2dOptions(3, c.embed_dim, c.patch_size).stride(c.patch_size)));
}

at::Tensor PatchEmbedImpl::forward(const at::Tensor& images) {
  if (images.dim() != 4 || images.size(1) != 3 || images.size(2) != image_size || images.size(3) != image_size)
    throw Error(cat("image batch has shape ", images.sizes(), ", the model expects (B, 3, ", image_size, ", ", image_size, ")"));
  return proj->forward(images).flatten(2).transpose(1, 2);  // (B, W², C)
}

MultiwayTransformerImpl::MultiwayTransformerImpl(const Config& c) {
  patch_embed = register_module("patch_embed", PatchEmbed(c));
  cls_token = register_parameter("cls_token", at::zeros({1, 1, c.embed_dim}));
  if (c.use_abs_pos_emb) pos_embed = register_parameter("pos_embed", at::zeros({1, c.image_tokens(), c.embed_dim}));
  blocks = register_module("blocks", nn::ModuleList());
  for (int i = 0; i < c.depth; ++i) {
    const double dpr = c.depth > 1 ? c.drop_path_rate * i / (c.depth - 1) : 0.0;
    block_list.push_back(Block(c, i, dpr));
    blocks->push_back(block_list.back());
  }
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({c.embed_dim}).eps(1e-6)));
}

at::Tensor MultiwayTransformerImpl::visual_embed(const at::Tensor& images, const at::Tensor& patch_mask,
                                                 const at::Tensor& mask_token) {
  at::Tensor x = patch_embed->forward(images);  // (B, W², C)
  if (patch_mask.defined()) {
    const at::Tensor m = patch_mask.to(x.dtype()).unsqueeze(-1);
    x = x * (1 - m) + mask_token * m;
  }
  x = at::cat({cls_token.expand({x.size(0), -1, -1}), x}, 1);  // (B, W²+1, C)
  if (pos_embed.defined()) x = x + pos_embed;
  return x;
}

BertEmbeddingsImpl::BertEmbeddingsImpl(const Config& c) : add_positions(c.use_abs_pos_emb), dropout(c.drop_path_rate) {
  const int D = c.embed_dim;
  word_embeddings = register_module("word_embeddings", nn::Embedding(nn::EmbeddingOptions(c.vocab_size, D).padding_idx(0)));
  position_embeddings = register_module("position_embeddings", nn::Embedding(c.max_text_len, D));
  token_type_embeddings = register_module("token_type_embeddings", nn::Embedding(2, D));
  LayerNorm = register_module("LayerNorm", nn::LayerNorm(nn::LayerNormOptions({D}).eps(1e-12)));
  position_ids = register_buffer("position_ids", at::arange(c.max_text_len).unsqueeze(0));
}

at::Tensor BertEmbeddingsImpl::forward(const at::Tensor& ids) {
  const int64_t L = ids.size(1);
  if (L > position_ids.size(1)) throw Error(cat("text of ", L, " tokens is longer than max_text_len ", position_ids.size(1)));
  at::Tensor x = word_embeddings->forward(ids) + token_type_embeddings->forward(at::zeros_like(ids));
  if (add_positions) x = x + position_embeddings->forward(position_ids.narrow(1, 0, L));
  x = LayerNorm->forward(x);
  if (dropout <= 0 || !is_training()) return x;
  if (!SampleKeys::current()) return at::dropout(x, dropout, true);
  const double keep = 1.0 - dropout;  // inverted dropout with each row's mask from its key
  return x * keep_mask(x, {x.size(1), x.size(2)}, keep, /*salt=*/0) / keep;
}

PoolerImpl::PoolerImpl(int dim) { dense = register_module("dense", nn::Linear(dim, dim)); }

at::Tensor PoolerImpl::forward(const at::Tensor& x) { return at::tanh(dense->forward(x.select(1, 0))); }

PredictionTransformImpl::PredictionTransformImpl(int dim) {
  dense = register_module("dense", nn::Linear(dim, dim));
  LayerNorm = register_module("LayerNorm", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-12)));
}

at::Tensor PredictionTransformImpl::forward(const at::Tensor& x) { return LayerNorm->forward(at::gelu(dense->forward(x))); }

MLMHeadImpl::MLMHeadImpl(int dim, int vocab) {
  transform = register_module("transform", PredictionTransform(dim));
  decoder = register_module("decoder", nn::Linear(nn::LinearOptions(dim, vocab).bias(false)));
  bias = register_parameter("bias", at::zeros({vocab}));
}

at::Tensor MLMHeadImpl::forward(const at::Tensor& x) { return decoder->forward(transform->forward(x)) + bias; }

MIMHeadImpl::MIMHeadImpl(int dim, int patch_pixels) {
  mask_token = register_parameter("mask_token", at::zeros({1, 1, dim}));
  decoder = register_module("decoder", nn::Linear(dim, patch_pixels));
}

FcHeadImpl::FcHeadImpl(int in, int out, bool bias) {
  fc = register_module("fc", nn::Linear(nn::LinearOptions(in, out).bias(bias)));
}

namespace {
// The quantized engine for int8 linear layers: x86 (FBGEMM + oneDNN, LibTorch 2), FBGEMM, oneDNN
// (Debian's LibTorch 1.13 has no FBGEMM), QNNPACK (ARM); NoQEngine when none is built in.
at::QEngine int8_engine() {
  const auto engines = at::globalContext().supportedQEngines();
  for (at::QEngine e : {at::QEngine::X86, at::QEngine::FBGEMM, at::QEngine::ONEDNN, at::QEngine::QNNPACK})
    if (std::find(engines.begin(), engines.end(), e) != engines.end()) return e;
  return at::QEngine::NoQEngine;
}
}  // namespace

bool int8_supported() {
  return int8_engine() != at::QEngine::NoQEngine &&
         c10::Dispatcher::singleton().findSchema({"quantized::linear_dynamic", ""}).has_value();
}

void quantize_int8(VLMo& model) {
  if (!model->device().is_cpu())
    throw Error("int8 quantisation runs on the CPU only (the model is on " + model->device().str() + ")");
  if (!int8_supported())
    throw Error("int8 quantisation needs LibTorch's quantized operators (FBGEMM, oneDNN or QNNPACK), which this build lacks");
  at::globalContext().setQEngine(int8_engine());
  for (Block& b : model->transformer->block_list) {
    BlockImpl* block = b.get();
    auto& a = *block->attn;
    a.q_qkv = std::make_shared<QuantizedLinear>(a.qkv->weight, at::cat({a.q_bias, at::zeros_like(a.v_bias), a.v_bias}));
    a.q_proj = std::make_shared<QuantizedLinear>(a.proj->weight, a.proj->bias);
    for (Mlp* m : {&block->mlp_text, &block->mlp_imag, &block->mlp_vl}) {
      if (m->is_empty()) continue;
      (*m)->q_fc1 = std::make_shared<QuantizedLinear>((*m)->fc1->weight, (*m)->fc1->bias);
      (*m)->q_fc2 = std::make_shared<QuantizedLinear>((*m)->fc2->weight, (*m)->fc2->bias);
    }
  }
}

}  // namespace vlmo
