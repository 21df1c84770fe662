// Helpers of the tests that train on the demo's world: the pre-training heads, weight snapshots,
// batches of a world's scenes, means of logged values, short training options.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "demo_world.h"
#include "test_util.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/train.h"

namespace vlmo::test {

// Every pre-training head (tiny_config(kPretrainingHeads): the demo's stages, drop path Config's 0.1).
inline const std::vector<std::string> kPretrainingHeads = {"mlm", "itm", "itc", "mim"};

// A copy of a model's weights (model_state_dict, cloned).
inline TensorMap snapshot(VLMo& m) {
  TensorMap out;
  for (const auto& [k, v] : model_state_dict(*m)) out[k] = v.clone();
  return out;
}

// Batches of the first `n` scenes of a small world.
inline BatchFn world_batches(const DemoWorld& w, int n, int batch, bool images, bool text, bool patch_mask) {
  auto order = std::make_shared<EpochOrder>(n, 7);
  CollateOptions co;
  co.image_size = 32;
  co.max_text_len = 16;
  co.patch_mask = patch_mask;
  return [&w, order, co, batch, images, text](int64_t index) {
    std::vector<Example> ex;
    for (int j = 0; j < batch; ++j) {
      const Scene& s = w.split("train")[order->at(index * batch + j)];
      ex.push_back({images ? w.render(s) : Image{}, text ? w.caption(s, 0) : ""});
    }
    return collate(ex, bert(), co, static_cast<uint64_t>(index));
  };
}

inline double mean_of(const TrainResult& r, const std::string& key, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += r.history.at(i).at(key);
  return s / (to - from);
}

inline TrainOptions options(int64_t steps, double lr) {
  TrainOptions t;
  t.max_steps = steps;
  t.warmup_steps = 2;
  t.lr = lr;
  t.batch_size = 16;
  t.progress = false;
  return t;
}

}  // namespace vlmo::test
