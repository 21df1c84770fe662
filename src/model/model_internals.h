// Hooks of the model for tests, diagnostics and the library's own use; not part of the installed
// interface (vlmo/model.h). Programs of this repository (the CLI, the demo, the tests) include it
// from src/.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

#include "vlmo/model.h"

namespace vlmo {

// Attention probe. While an AttentionRecorder lives on this thread, every attention layer appends
// the (detached) attention probabilities of its first query, the [CLS] token: (B, heads, N) per
// layer, in the order the layers run. A diagnostic (`vlmo demo` measures the [CLS] attention
// entropy with it); it costs one copy per layer. Guards nest like SampleKeys.
class AttentionRecorder {
 public:
  AttentionRecorder();
  ~AttentionRecorder();
  AttentionRecorder(const AttentionRecorder&) = delete;
  AttentionRecorder& operator=(const AttentionRecorder&) = delete;
  const std::vector<at::Tensor>& cls_attention() const { return rows_; }
  static AttentionRecorder* current();
  void record(const at::Tensor& probs) { rows_.push_back(probs); }

 private:
  std::vector<at::Tensor> rows_;
  AttentionRecorder* previous_;
};

// A (rows, shape...) float mask of 1s (kept, probability `keep`) and 0s on the CPU: row i drawn
// from keys[i] mixed with `salt`.
at::Tensor keyed_keep_mask(const std::vector<uint64_t>& keys, at::IntArrayRef row_shape, double keep, uint64_t salt);

int64_t fused_attention_calls();  // attention layers run by a fused path so far (tests, profiling)

// While one lives on this thread the fused paths are not taken: the first pass of a checkpointed
// block, which must compute exactly what its recomputation in the backward pass will.
class PlainAttentionScope {
 public:
  PlainAttentionScope();
  ~PlainAttentionScope();
  PlainAttentionScope(const PlainAttentionScope&) = delete;
  PlainAttentionScope& operator=(const PlainAttentionScope&) = delete;
};

}  // namespace vlmo
