// The VLMo model: the multiway (MoME) Transformer, its embeddings and heads, and every
// forward path of the official LightningModule (reference §1). Parameter and buffer names
// equal the official state_dict keys. Not here: losses (vlmo/objectives.h), file I/O.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <memory>
#include <vector>

#include "vlmo/config.h"
#include "vlmo/precision.h"
#include "vlmo/run_policy.h"

namespace vlmo {

enum class Modality { kImage, kText, kVL };

// Keyed randomness. While a SampleKeys object lives on this thread, drop path and the text
// embedding dropout draw each batch row's mask from that row's key (and the layer and branch)
// instead of the global generator: a sample's masks then do not depend on the batch, rank or
// micro-batch it is computed in, and a pass repeated with the same keys draws the same masks
// (gradient caching, `--contrastive-batch global`). Every forward pass under it must have
// exactly keys.size() rows. Guards nest (the innermost wins); they are not shared across threads.
class SampleKeys {
 public:
  explicit SampleKeys(std::vector<uint64_t> keys);
  ~SampleKeys();
  SampleKeys(const SampleKeys&) = delete;
  SampleKeys& operator=(const SampleKeys&) = delete;
  // The active keys on this thread, or nullptr.
  static const std::vector<uint64_t>* current();

 private:
  std::vector<uint64_t> keys_;
  const std::vector<uint64_t>* previous_;
};

// A linear layer with int8 weights (one scale per output channel) and activations quantised per
// call (dynamic quantisation: CPU inference only, no autograd). See quantize_int8.
struct QuantizedLinear;
// What inference keeps of a layer's weights between passes, made again when a weight changes: the
// low-precision copies under bf16 autocast (autocast's own cache ends with each pass), and the
// fp32 weights packed for oneDNN's kernels on the CPU.
struct InferenceWeights;

// timm Mlp: fc1 -> GELU (erf) -> fc2 (dropout 0).
struct MlpImpl : torch::nn::Module {
  MlpImpl(int dim, int hidden);
  // `scale` (dim; undefined: none): the block's layer scale, applied to the output here, where the
  // training pass need not keep the unscaled output for its gradient (vlmo/ops.h: mlp_product).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& scale = at::Tensor());
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  std::shared_ptr<const QuantizedLinear> q_fc1, q_fc2;  // set by quantize_int8: used instead of fc1 / fc2
  std::shared_ptr<InferenceWeights> low;
  RunPolicy policy;  // the model's (VLMoImpl::set_run_policy)
};
TORCH_MODULE(Mlp);

// Shared self-attention: qkv without k bias, fp32 logits, additive relative bias, key mask. The
// kernel of each call is attention_kernel(policy, ...) (vlmo/run_policy.h): with the fused path, on
// the CPU without autograd in fp32 a per-(sample, head) kernel that reads q / k / v in place;
// elsewhere, on LibTorch >= 2, at::scaled_dot_product_attention with the relative bias and the
// padding mask as its additive mask; the plain product-softmax-product otherwise (src/ops/attention.h).
struct AttentionImpl : torch::nn::Module {
  AttentionImpl(int dim, int num_heads);
  // x (B, N, C); key_mask (B, N) 1 = attend, or undefined; rel_bias (H, N, N) or undefined.
  // `queries` >= 0: only the first `queries` tokens attend (their outputs alone are returned,
  // (B, queries, C)); every token is still a key and value. `out_scale` (C; undefined: none): the
  // block's layer scale, applied by the output projection (vlmo/ops.h: linear_product).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_mask, const at::Tensor& rel_bias, int64_t queries = -1,
                     const at::Tensor& out_scale = at::Tensor());
  int num_heads;
  double scale;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  at::Tensor q_bias, v_bias;
  std::shared_ptr<const QuantizedLinear> q_qkv, q_proj;  // set by quantize_int8
  std::shared_ptr<InferenceWeights> low;
  RunPolicy policy;  // the model's (VLMoImpl::set_run_policy)
};
TORCH_MODULE(Attention);

// One multiway block: shared attention; V-, L- and (top layers) VL-FFN experts.
struct BlockImpl : torch::nn::Module {
  BlockImpl(const Config& c, int layer, double drop_path);
  // `text_len`: the fixed split of "vl" sequences in blocks without a VL expert. `keep` >= 0:
  // return only the first `keep` tokens' outputs (B, keep, C), skipping the work of the others
  // (the last block of a pass whose caller reads [CLS] or the text positions alone).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& key_mask, Modality modality, const at::Tensor& rel_bias,
                     int64_t text_len, int64_t keep = -1);
  bool has_vl() const { return !mlp_vl.is_empty(); }
  double drop_prob;
  int layer;
  torch::nn::LayerNorm norm1{nullptr}, norm2_text{nullptr}, norm2_imag{nullptr}, norm2_vl{nullptr};
  Attention attn{nullptr};
  Mlp mlp_text{nullptr}, mlp_imag{nullptr}, mlp_vl{nullptr};
  at::Tensor gamma_1, gamma_2;  // undefined without layer scale

 private:
  // x + drop_path(branch_out), branch_out already scaled by gamma_1 / gamma_2; `branch` (0
  // attention, 1 FFN, 2 the image half of a split FFN) keys the drop-path draw.
  at::Tensor residual(const at::Tensor& x, const at::Tensor& branch_out, int branch);
};
TORCH_MODULE(Block);

struct PatchEmbedImpl : torch::nn::Module {
  PatchEmbedImpl(const Config& c);
  at::Tensor forward(const at::Tensor& images);  // (B,3,S,S) -> (B, W², C)
  int image_size;
  torch::nn::Conv2d proj{nullptr};
};
TORCH_MODULE(PatchEmbed);

struct MultiwayTransformerImpl : torch::nn::Module {
  explicit MultiwayTransformerImpl(const Config& c);
  // Patch tokens with [CLS] prepended (+ absolute position embedding if configured). With a
  // (B, W²) patch mask, masked patch embeddings are replaced by `mask_token` (stage-1 MIM).
  at::Tensor visual_embed(const at::Tensor& images, const at::Tensor& patch_mask = {}, const at::Tensor& mask_token = {});
  PatchEmbed patch_embed{nullptr};
  at::Tensor cls_token, pos_embed;
  torch::nn::ModuleList blocks{nullptr};
  std::vector<Block> block_list;
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(MultiwayTransformer);

// HF BertEmbeddings (transformers 4.8.1) as VLMo configures it.
struct BertEmbeddingsImpl : torch::nn::Module {
  explicit BertEmbeddingsImpl(const Config& c);
  at::Tensor forward(const at::Tensor& ids);  // (B, L) -> (B, L, C)
  bool add_positions;
  double dropout;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  at::Tensor position_ids;
};
TORCH_MODULE(BertEmbeddings);

struct PoolerImpl : torch::nn::Module {
  explicit PoolerImpl(int dim);
  at::Tensor forward(const at::Tensor& x);  // tanh(dense(x[:, 0]))
  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(Pooler);

// BertPredictionHeadTransform: dense -> GELU -> LayerNorm (eps 1e-12).
struct PredictionTransformImpl : torch::nn::Module {
  explicit PredictionTransformImpl(int dim);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
};
TORCH_MODULE(PredictionTransform);

// MLM head: transform, untied decoder (no bias) plus a separate bias.
struct MLMHeadImpl : torch::nn::Module {
  MLMHeadImpl(int dim, int vocab);
  at::Tensor forward(const at::Tensor& x);
  PredictionTransform transform{nullptr};
  torch::nn::Linear decoder{nullptr};
  at::Tensor bias;
};
TORCH_MODULE(MLMHead);

// A head that is one Linear named "fc" (ITMHead, ITCHead).
struct FcHeadImpl : torch::nn::Module {
  FcHeadImpl(int in, int out, bool bias);
  at::Tensor forward(const at::Tensor& x) { return fc->forward(x); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(FcHead);

// Masked image modelling head of the built-in stage 1 (BEiT-style masking; regresses the
// per-patch normalised pixels of masked patches, since BEiT's dVAE tokenizer is not available).
struct MIMHeadImpl : torch::nn::Module {
  MIMHeadImpl(int dim, int patch_pixels);
  at::Tensor mask_token;               // (1, 1, C)
  torch::nn::Linear decoder{nullptr};  // C -> patch * patch * 3
};
TORCH_MODULE(MIMHead);

// Which token outputs a pass must produce. The last block of a pass computes only those rows
// (attention queries and the FFN expert), which is where the work of the other tokens is saved:
// about 1/depth of an image embedding, of an ITM / VQA / NLVR2 fusion pass, and of the MLM
// pass's image tokens. The rows that are produced are the same as with kAll.
enum class TokenOutputs {
  kAll,   // every token
  kText,  // fusion passes: the text positions (MLM); image_feats undefined
  kCls,   // [CLS] alone: feats (B, 1, C); fusion text_feats / image_feats undefined
};

// Outputs of a single-modality (dual-encoder) pass.
struct UnimodalOutput {
  at::Tensor feats;            // (B, N, C) after the final norm; (B, 1, C) with TokenOutputs::kCls
  at::Tensor cls_feats;        // projected, L2-normalised [CLS]
  at::Tensor cls_vlffn_feats;  // VL-FFN branch (pre-training passes only), else undefined
};

struct FusionOutput {
  at::Tensor text_feats;     // (B, Lt, C)
  at::Tensor image_feats;    // (B, W²+1, C)
  at::Tensor cls_feats;      // pooler(x) on the text [CLS]
  at::Tensor raw_cls_feats;  // x[:, 0]
};

struct VLMoImpl : torch::nn::Module {
  explicit VLMoImpl(const Config& c);

  // Fusion encoder: text (padded to max_text_len) then image, every block in "vl" mode.
  FusionOutput infer(const at::Tensor& text_ids, const at::Tensor& text_masks, const at::Tensor& images, int image_token_type = 1,
                     TokenOutputs keep = TokenOutputs::kAll);
  // Pre-training dual-encoder passes: expert path plus the VL-FFN branch for ITC.
  UnimodalOutput infer_text(const at::Tensor& text_ids, const at::Tensor& text_masks, TokenOutputs keep = TokenOutputs::kAll);
  UnimodalOutput infer_image(const at::Tensor& images, TokenOutputs keep = TokenOutputs::kAll);
  // Retrieval dual encoder: pure expert path, no VL-FFN.
  UnimodalOutput infer_text_ft(const at::Tensor& text_ids, const at::Tensor& text_masks, TokenOutputs keep = TokenOutputs::kAll);
  UnimodalOutput infer_image_ft(const at::Tensor& images, TokenOutputs keep = TokenOutputs::kAll);
  // Text-only MLM path (stage 2): all text experts, final norm; returns (B, L, C).
  at::Tensor infer_text_mlm(const at::Tensor& text_ids, const at::Tensor& text_masks);
  // Image-only pass over images with masked patches (stage-1 MIM): (B, W²+1, C) after the norm.
  at::Tensor infer_image_masked(const at::Tensor& images, const at::Tensor& patch_mask);

  // Per-layer relative bias [H, N, N] for an index matrix, or undefined tensors without rel-pos.
  std::vector<at::Tensor> relative_biases(Modality modality, int64_t text_len);

  const Config& config() const { return cfg_; }

  // Run-time settings (not part of checkpoints).
  // How the blocks run (vlmo/run_policy.h): precision, attention path, the CPU's product kernels.
  // A new model has resolve_run_policy()'s (the defaults and the environment's overrides).
  // Precision bf16 / fp16: the transformer blocks of every infer* pass run under autocast (matrix
  // products in bfloat16 / float16); the residual stream, the final norm, the projections and
  // every head stay in the weights' dtype, so outputs come back in it. fp32: no autocast.
  void set_run_policy(const RunPolicy& policy);
  const RunPolicy& run_policy() const { return policy_; }
  void set_precision(Precision p);  // the policy with this precision
  Precision precision() const { return policy_.precision; }
  // Activation checkpointing: in training mode with autograd on, a block keeps only its inputs
  // and runs again in the backward pass (same random draws, same autocast state), trading about
  // one more forward pass of compute for the activation memory of the blocks. Same losses and
  // gradients as without it.
  void set_activation_checkpointing(bool on) { checkpointing_ = on; }
  bool activation_checkpointing() const { return checkpointing_; }
  // Where the weights are. Every infer* entry point moves its inputs there (a no-op when they
  // are), so callers may pass host tensors to a model on a GPU; outputs stay on this device.
  c10::Device device() const { return token_type_embeddings->weight.device(); }

  MultiwayTransformer transformer{nullptr};
  at::Tensor relative_position_bias_table;
  BertEmbeddings text_embeddings{nullptr};
  torch::nn::Embedding token_type_embeddings{nullptr};
  Pooler pooler{nullptr};
  MLMHead mlm_score{nullptr};
  FcHead itm_score{nullptr};
  FcHead itc_text_proj{nullptr}, itc_image_proj{nullptr}, itc_vl_text_proj{nullptr}, itc_vl_image_proj{nullptr};
  at::Tensor logit_scale, logit_vl_scale;
  torch::nn::Sequential vqa_classifier{nullptr}, nlvr2_classifier{nullptr};
  MIMHead mim_head{nullptr};

 private:
  Config cfg_;
  at::Tensor text_embed(const at::Tensor& text_ids);
  at::Tensor image_embed(const at::Tensor& images, int token_type);
  UnimodalOutput unimodal(at::Tensor x, const at::Tensor& mask, Modality modality, FcHead proj, FcHead vl_proj,
                          TokenOutputs keep = TokenOutputs::kAll);
  // Block i of the transformer (checkpointed when that is on and applies).
  at::Tensor run_block(int i, const at::Tensor& x, const at::Tensor& mask, Modality modality, const at::Tensor& rel_bias,
                       int64_t text_len, int64_t keep);
  at::Tensor image_index_, text_index_, fusion_index_;  // cached index matrices (CPU)
  RunPolicy policy_;
  bool checkpointing_ = false;
};
TORCH_MODULE(VLMo);

// Official initialisation (objectives.init_weights + timm trunc_normal): Linear/Embedding
// N(0, 0.02) (truncated for the transformer), biases 0, LayerNorm (1, 0).
void init_weights(VLMo& model, uint64_t seed);

// Dynamic int8 quantisation for CPU inference: every linear layer of the transformer blocks
// (attention qkv and proj, the fc1 / fc2 of every expert) runs on int8 weights, symmetric with
// one scale per output channel, and activations quantised per call (LibTorch's quantized
// engine: x86 / FBGEMM, else oneDNN, else QNNPACK). The float weights stay (checkpoints are
// unchanged); heads, embeddings, layer norms and attention stay fp32. The model must be on
// the CPU; inference only (a quantised layer in training mode throws: it passes no gradient).
void quantize_int8(VLMo& model);
// Whether quantize_int8 can run here (a LibTorch with a quantized engine).
bool int8_supported();

// Parameter count of every parameter whose name starts with one of `prefixes` (all if empty).
int64_t count_parameters(torch::nn::Module& m, const std::vector<std::string>& prefixes = {});

}  // namespace vlmo
