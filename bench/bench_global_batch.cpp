// The cost of the global contrastive batch (--contrastive-batch global: gradient caching, one
// extra forward of the image and text encoders without autograd) against plain accumulation
// (the official per-micro-batch objective), on the same model, data and step shape, one process.
// Usage: vlmo_bench_global_batch [--preset tiny|small|base] [--image-size S] [--batch B]
//                                [--accumulate M] [--steps N] [--threads T]
// Prints a table (samples/s, s/step, ratio) and one JSON line per mode.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "vlmo/model.h"
#include "vlmo/pretrain.h"
#include "vlmo/train.h"

using namespace vlmo;

namespace {

Config bench_config(const std::string& preset, int image_size) {
  Config c;
  if (preset == "tiny") c.embed_dim = 64, c.depth = 4, c.num_heads = 2, c.vlffn_start_layer_index = 2;
  else if (preset == "small") c.embed_dim = 256, c.depth = 6, c.num_heads = 4, c.vlffn_start_layer_index = 4;
  else if (preset == "base") c = Config::preset("base");
  else {
    std::fprintf(stderr, "error: --preset: expected tiny, small or base, got \"%s\"\n", preset.c_str());
    std::exit(2);
  }
  c.image_size = image_size;
  c.max_text_len = 40;
  c.heads = {"mlm", "itm", "itc"};
  c.validate();
  return c;
}

// Synthetic pre-training batches: random pixels, random tokens of random length, 15 % masked.
BatchFn synthetic(const Config& c, int64_t batch) {
  return [c, batch](int64_t index) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(1000 + index));
    Batch b;
    b.image = at::rand({batch, 3, c.image_size, c.image_size}, g) * 2 - 1;
    b.text_ids = at::randint(1000, 30000, {batch, c.max_text_len}, g);
    b.text_masks = at::ones({batch, c.max_text_len}, at::kLong);
    for (int64_t i = 0; i < batch; ++i) b.text_masks[i].narrow(0, 8 + i % 24, c.max_text_len - 8 - i % 24).zero_();
    b.text_ids = b.text_ids * b.text_masks;
    const at::Tensor masked = (at::rand({batch, c.max_text_len}, g) < 0.15).logical_and(b.text_masks.eq(1));
    b.text_labels_mlm = at::where(masked, b.text_ids, at::full_like(b.text_ids, -100));
    b.text_ids_mlm = at::where(masked, at::full_like(b.text_ids, 103), b.text_ids);
    return b;
  };
}

int arg(int argc, char** argv, const char* name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == name) return std::atoi(argv[i + 1]);
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "small";
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--preset") preset = argv[i + 1];
  const int image_size = arg(argc, argv, "--image-size", 64), batch = arg(argc, argv, "--batch", 8),
            accumulate = arg(argc, argv, "--accumulate", 4), steps = arg(argc, argv, "--steps", 3),
            threads = arg(argc, argv, "--threads", static_cast<int>(std::thread::hardware_concurrency()));
  if (batch < 2 || accumulate < 1 || steps < 1 || threads < 1 || image_size < 16) {
    std::fprintf(stderr, "error: need --batch >= 2, --accumulate >= 1, --steps >= 1, --threads >= 1, --image-size >= 16\n");
    return 2;
  }
  at::set_num_threads(threads);
  const Config c = bench_config(preset, image_size);
  double seconds[2] = {0, 0};
  for (int mode = 0; mode < 2; ++mode) {
    VLMo m(c);
    init_weights(m, 1);
    TrainOptions o;
    o.max_steps = steps + 1;  // the first step is a warm-up, timed apart
    o.warmup_steps = 1;
    o.lr = 1e-4;
    o.batch_size = batch;
    o.accumulate = accumulate;
    o.progress = false;
    if (mode == 1) o.step_objective = vl_global_step_objective(1);
    const TrainResult r = train(m, vl_objective, synthetic(c, batch), o);
    for (size_t s = 1; s < r.history.size(); ++s) seconds[mode] += r.history[s].at("step_s");
  }
  const double samples = static_cast<double>(steps) * batch * accumulate;
  std::printf(
      "global contrastive batch vs plain accumulation: preset %s, %d px, batch %d x accumulate %d, %d steps, %d threads\n",
      preset.c_str(), image_size, batch, accumulate, steps, threads);
  std::printf("| mode | contrastive batch | s/step | samples/s |\n|---|---|---|---|\n");
  const char* names[2] = {"local (official)", "global (gradient caching)"};
  for (int mode = 0; mode < 2; ++mode)
    std::printf("| %s | %d | %.3f | %.2f |\n", names[mode], mode ? batch * accumulate : batch, seconds[mode] / steps,
                samples / seconds[mode]);
  std::printf("global / local time: %.3fx\n", seconds[1] / seconds[0]);
  for (int mode = 0; mode < 2; ++mode)
    std::printf("{\"mode\": \"%s\", \"preset\": \"%s\", \"image_size\": %d, \"batch\": %d, \"accumulate\": %d, "
                "\"s_per_step\": %.4f, \"samples_per_s\": %.3f}\n",
                mode ? "global" : "local", preset.c_str(), image_size, batch, accumulate, seconds[mode] / steps,
                samples / seconds[mode]);
  return 0;
}
