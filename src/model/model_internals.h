// Hooks of the model for tests, diagnostics and the library's own use; not part of the installed
// interface (vlmo/model.h). Programs of this repository (the CLI, the demo, the tests) include it
// from src/.
#pragma once
#include <ATen/Tensor.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
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

// Attention layer calls so far (this process) by the kernel that ran them (tests, vlmo bench), and
// those of the fused kernels (cpu-inference and SDPA) together.
int64_t attention_kernel_calls(AttentionKernel k);
std::array<int64_t, 3> attention_kernel_counts();  // indexed by AttentionKernel
// The calls by kernel name (attention_kernel_name) since attention_kernel_counts() gave `before`.
std::map<std::string, int64_t> attention_kernel_calls_since(const std::array<int64_t, 3>& before);
int64_t fused_attention_calls();

}  // namespace vlmo
