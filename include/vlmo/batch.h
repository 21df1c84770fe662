// A model batch as the official collate builds it, and the batch-maker type the trainer and the
// data builders share. Data-level: no model, no training.
#pragma once
#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace vlmo {

// Tensors a task does not need stay undefined.
struct Batch {
  at::Tensor text_ids, text_masks;           // (B, L) int64; 1 = real token
  at::Tensor text_ids_mlm, text_labels_mlm;  // (B, L) int64; labels -100 = ignore
  at::Tensor image;                          // (B, 3, S, S) float in [-1, 1]
  at::Tensor image_0, image_1;               // NLVR2 pairs
  at::Tensor vqa_targets;                    // (B, num_labels) soft scores
  at::Tensor nlvr2_labels;                   // (B) int64 in {0, 1}
  at::Tensor patch_mask;                     // (B, W²) bool: stage-1 masked image modelling
  // Data problems met while building this batch: samples skipped per reason ("corrupt_image",
  // "empty_caption", "bad_utf8", "missing_file", "truncated_shard", ...), and one line per
  // skipped sample naming its file and line or archive member. The trainer logs and counts them.
  std::map<std::string, int64_t> skipped;
  std::vector<std::string> skip_log;
  // The run-wide index of row 0 (row i is sample first_sample + i); set by the trainer as
  // batch index x batch size, -1 when unknown. Keys a sample's random draws in the model
  // (vlmo::SampleKeys) under --contrastive-batch global.
  int64_t first_sample = -1;
};

// The batch with every tensor on `device` (a no-op for tensors already there). Towards a CUDA
// device the host tensors are pinned first and copied asynchronously on the current stream.
Batch to_device(const Batch& batch, c10::Device device);

// A batch maker: the batch with this index (in an endless sequence over epochs), a pure
// function of the index, so that any thread may build it and resumption is exact.
using BatchFn = std::function<Batch(int64_t index)>;

}  // namespace vlmo
