// The demo, as one readable story: build the world, pre-train in three stages, fine-tune the
// dual encoder for retrieval, evaluate on the held-out test split, report against chance.
#include "vlmo/demo.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "vlmo/data.h"
#include "vlmo/demo_world.h"
#include "vlmo/error.h"
#include "vlmo/image_tensor.h"
#include "vlmo/pretrain.h"
#include "vlmo/retrieval.h"

namespace vlmo {
namespace {

Config demo_config() {
  Config c;
  c.embed_dim = 128;
  c.depth = 4;
  c.num_heads = 4;
  c.image_size = 64;
  c.patch_size = 16;
  c.vlffn_start_layer_index = 3;
  c.max_text_len = 24;
  c.drop_path_rate = 0.0;
  c.heads = {"mlm", "itm", "itc", "mim"};
  return c;
}

struct Split {
  std::vector<Image> images;
  std::vector<std::string> captions;
  std::vector<int64_t> caption_image;
};

Split build_split(const DemoWorld& w, const std::string& name, int captions_per_image) {
  Split s;
  const auto& scenes = w.split(name);
  for (size_t i = 0; i < scenes.size(); ++i) {
    s.images.push_back(w.render(scenes[i]));
    for (int k = 0; k < captions_per_image; ++k) {
      s.captions.push_back(w.caption(scenes[i], static_cast<int>(i * 7 + k * 3) % w.num_caption_variants()));
      s.caption_image.push_back(static_cast<int64_t>(i));
    }
  }
  return s;
}

// Dual-encoder retrieval on a split: encode every image and caption, score, recall.
Recall evaluate_retrieval(VLMo& model, const Tokenizer& tok, const Split& s, const Config& cfg) {
  at::NoGradGuard guard;
  model->eval();
  std::vector<at::Tensor> img_feats, txt_feats;
  for (size_t i = 0; i < s.images.size(); i += 64) {
    std::vector<at::Tensor> pix;
    for (size_t j = i; j < std::min(s.images.size(), i + 64); ++j) pix.push_back(eval_transform(s.images[j], cfg.image_size));
    img_feats.push_back(model->infer_image_ft(at::stack(pix)).cls_feats);
  }
  for (size_t i = 0; i < s.captions.size(); i += 64) {
    std::vector<int64_t> ids, masks;
    const size_t end = std::min(s.captions.size(), i + 64);
    for (size_t j = i; j < end; ++j) {
      const Encoding e = tok.encode(s.captions[j], cfg.max_text_len, true);
      ids.insert(ids.end(), e.ids.begin(), e.ids.end());
      masks.insert(masks.end(), e.mask.begin(), e.mask.end());
    }
    const int64_t n = static_cast<int64_t>(end - i);
    txt_feats.push_back(model->infer_text_ft(at::tensor(at::ArrayRef<int64_t>(ids), at::kLong).reshape({n, -1}),
                                             at::tensor(at::ArrayRef<int64_t>(masks), at::kLong).reshape({n, -1}))
                            .cls_feats);
  }
  model->train();
  return retrieval_recall(at::matmul(at::cat(img_feats), at::cat(txt_feats).t()), s.caption_image);
}

nlohmann::json recall_json(const Recall& r) {
  return {{"tr_r1", r.tr1}, {"tr_r5", r.tr5}, {"tr_r10", r.tr10}, {"ir_r1", r.ir1}, {"ir_r5", r.ir5}, {"ir_r10", r.ir10}};
}

}  // namespace

nlohmann::json run_demo(const DemoOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  ::mkdir(o.out_dir.c_str(), 0755);
  at::manual_seed(o.seed);
  const Config cfg = demo_config();
  const Tokenizer tok = Tokenizer::from_file(o.vocab.empty() ? Tokenizer::default_vocab_path() : o.vocab);
  const DemoWorld world(o.seed, 6000, 100, 100, cfg.image_size);
  const Split test = build_split(world, "test", 2), val = build_split(world, "val", 2);
  const auto& train_scenes = world.split("train");
  auto steps = [&](int64_t n) { return std::max<int64_t>(2, static_cast<int64_t>(n * o.step_scale)); };

  VLMo model(cfg);
  init_weights(model, o.seed);
  nlohmann::json report;
  report["seed"] = o.seed;
  report["config"] = nlohmann::json::parse(config_to_json_text(cfg));
  report["world"] = {{"train_scenes", train_scenes.size()}, {"val_scenes", val.images.size()},
                     {"test_scenes", test.images.size()}, {"test_captions", test.captions.size()},
                     {"image_size", cfg.image_size}};
  const std::string metrics = o.out_dir + "/metrics.jsonl";
  std::remove(metrics.c_str());

  // One training run of a stage: examples from the training scenes, in a per-epoch order.
  auto run_stage = [&](const std::string& name, Stage stage, const ObjectiveFn& objective, int64_t n_steps,
                       int64_t batch, double lr, bool with_images, bool with_text, bool patch_mask) {
    set_trainable_for_stage(model, stage);
    auto order = std::make_shared<EpochOrder>(train_scenes.size(), mix_seed(o.seed, std::hash<std::string>()(name)));
    CollateOptions co;
    co.image_size = cfg.image_size;
    co.max_text_len = cfg.max_text_len;
    co.patch_mask = patch_mask;
    co.patch_size = cfg.patch_size;
    const uint64_t stage_seed = mix_seed(o.seed, std::hash<std::string>()(name) + 1);
    BatchFn batches = [&, order, co, batch, with_images, with_text, stage_seed](int64_t index) {
      std::vector<Example> ex;
      for (int64_t j = 0; j < batch; ++j) {
        const int64_t g = index * batch + j;
        const Scene& s = train_scenes[order->at(g)];
        Example e;
        if (with_images) e.image = world.render(s);
        if (with_text) e.text = world.caption(s, static_cast<int>(mix_seed(stage_seed, g) % world.num_caption_variants()));
        ex.push_back(std::move(e));
      }
      return collate(ex, tok, co, mix_seed(stage_seed, index));
    };
    TrainOptions t;
    t.name = name;
    t.max_steps = n_steps;
    t.warmup_steps = std::max<int64_t>(1, n_steps / 10);
    t.lr = lr;
    t.batch_size = batch;
    t.metrics_path = "";
    t.progress = o.progress;
    t.log_every = 25;
    t.loader_threads = 1;
    t.checkpoint_path = o.out_dir + "/" + name + ".safetensors";
    t.config_json = config_to_json_text(cfg);
    t.metrics_path = o.out_dir + "/" + name + ".metrics.jsonl";
    const TrainResult r = train(model, objective, batches, t);
    // Summaries: mean of each logged value over the first and the last 10 % of steps.
    nlohmann::json first, last;
    const size_t w = std::max<size_t>(1, r.history.size() / 10);
    for (const auto& [k, v] : r.history.front()) {
      if (k == "step" || k == "lr") continue;
      double a = 0, b = 0;
      for (size_t i = 0; i < w; ++i) a += r.history[i].at(k), b += r.history[r.history.size() - 1 - i].at(k);
      first[k] = a / w;
      last[k] = b / w;
    }
    report["stages"][name] = {{"steps", r.steps}, {"batch", batch}, {"lr", lr}, {"seconds", r.seconds},
                              {"first_steps", first}, {"last_steps", last}};
  };

  run_stage("stage1-image", Stage::kImage, mim_objective, steps(150), 64, 1e-3, true, false, true);
  run_stage("stage2-text", Stage::kText, text_mlm_objective, steps(150), 64, 1e-3, false, true, false);
  run_stage("stage3-vl", Stage::kVL, vl_objective, steps(300), 32, 1e-3, true, true, false);
  const Recall zero_shot = evaluate_retrieval(model, tok, test, cfg);
  run_stage("finetune-retrieval", Stage::kVL, irtr_objective, steps(600), 64, 1e-3, true, true, false);
  const Recall ft = evaluate_retrieval(model, tok, test, cfg);
  const Recall ft_val = evaluate_retrieval(model, tok, val, cfg);
  const Recall chance = chance_recall(static_cast<int64_t>(test.images.size()), test.caption_image);

  report["retrieval"] = {{"test_after_pretraining", recall_json(zero_shot)},
                         {"test_after_finetuning", recall_json(ft)},
                         {"val_after_finetuning", recall_json(ft_val)},
                         {"chance", recall_json(chance)}};
  report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  std::printf("\nVLMo demo: shapes world, %zu test images x 2 captions (seed %llu)\n", test.images.size(),
              static_cast<unsigned long long>(o.seed));
  std::printf("%-34s %8s %8s %8s %8s %8s %8s\n", "test split, dual encoder", "TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10");
  auto row = [](const char* name, const Recall& r) {
    std::printf("%-34s %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%%\n", name, 100 * r.tr1, 100 * r.tr5, 100 * r.tr10,
                100 * r.ir1, 100 * r.ir5, 100 * r.ir10);
  };
  row("chance", chance);
  row("after pre-training (no fine-tune)", zero_shot);
  row("after retrieval fine-tuning", ft);
  std::printf("R@1 over chance: TR %.1fx, IR %.1fx; total time %.0f s; report: %s/report.json\n", ft.tr1 / chance.tr1,
              ft.ir1 / chance.ir1, report["seconds"].get<double>(), o.out_dir.c_str());
  std::ofstream(o.out_dir + "/report.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace vlmo
