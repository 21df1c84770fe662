// Helpers of the tests that train on the demo's world: the small trained config, batches of a
// world's scenes, means of logged values, short training options.
#pragma once
#include <memory>
#include <string>

#include "demo_world.h"
#include "test_util.h"
#include "vlmo/data.h"
#include "vlmo/train.h"

namespace vlmo::test {

// tiny_config with every pre-training head and drop path 0.1.
inline Config tiny() {
  return tiny_config({"mlm", "itm", "itc", "mim"}, [](Config& c) { c.drop_path_rate = 0.1; });
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
