// The demo, as one readable story: build the world, pre-train in three stages, fine-tune the
// dual encoder for retrieval, evaluate on the held-out test split, report against chance.
#include "demo.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "demo_diagnostics.h"
#include "demo_world.h"
#include "vlmo/checkpoint.h"
#include "vlmo/data.h"
#include "vlmo/distributed.h"
#include "vlmo/downstream_data.h"
#include "vlmo/error.h"
#include "vlmo/evaluate.h"
#include "vlmo/files.h"
#include "vlmo/finetune.h"
#include "vlmo/image.h"
#include "vlmo/image_tensor.h"
#include "vlmo/metrics_plot.h"
#include "vlmo/pretrain.h"
#include "vlmo/safetensors.h"
#include "vlmo/tasks.h"

namespace vlmo {
namespace {

// The test scenes as PNG files (OUT/gallery/test-NNN.png) and their dual-encoder embeddings
// (OUT/gallery.safetensors, the format of `vlmo embed`, ids relative to OUT): a collection that
// `vlmo serve --index` and `vlmo search` use as it is.
// Also OUT/gallery/test.json: the test split's captions in the Karpathy format, so that
// `vlmo evaluate --task irtr --karpathy OUT/gallery/test.json --images OUT/gallery` scores the
// demo's models on its test split.
void write_gallery(VLMo& model, const DemoWorld& world, const std::vector<KarpathyImage>& test, const std::string& out_dir) {
  const std::string dir = out_dir + "/gallery";
  std::error_code mk;
  std::filesystem::create_directories(dir, mk);
  std::vector<std::string> ids;
  std::vector<at::Tensor> pix;
  nlohmann::json karpathy = nlohmann::json::array();
  const auto& scenes = world.split("test");
  for (size_t i = 0; i < scenes.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "test-%03zu.png", i);
    const std::string png = encode_png(world.render(scenes[i]));
    write_file_atomic(dir + "/" + name, png);
    ids.push_back(std::string("gallery/") + name);
    karpathy.push_back({{"filename", name}, {"split", "test"}, {"sentences", nlohmann::json::array()}});
    for (const auto& c : test.at(i).captions) karpathy.back()["sentences"].push_back({{"raw", c}});
    pix.push_back(eval_transform(decode_image(png, name), model->config().image_size));  // as vlmo embed reads it
  }
  write_file_atomic(dir + "/test.json", nlohmann::json{{"images", karpathy}}.dump(1) + "\n");
  at::NoGradGuard guard;
  const at::Tensor emb = encode_images(model, at::stack(pix));
  write_safetensors(
      out_dir + "/gallery.safetensors", {{"embeddings", emb}},
      {{"ids", nlohmann::json(ids).dump()}, {"modality", "image"}, {"model", out_dir + "/finetune-retrieval.safetensors"}});
}

// The variant of the c-th caption of scene i in the retrieval splits.
int split_caption_variant(const DemoWorld& w, size_t i, int c) {
  return static_cast<int>((i * 7 + static_cast<size_t>(c) * 3) % static_cast<size_t>(w.num_caption_variants()));
}

// A split as retrieval data: scene references with their captions.
std::vector<KarpathyImage> retrieval_split(const DemoWorld& w, const std::string& name, int captions_per_image) {
  std::vector<KarpathyImage> out;
  const auto& scenes = w.split(name);
  for (size_t i = 0; i < scenes.size(); ++i) {
    KarpathyImage k{DemoWorld::ref(name, i), name, {}};
    for (int c = 0; c < captions_per_image; ++c) k.captions.push_back(w.caption(scenes[i], split_caption_variant(w, i, c)));
    out.push_back(std::move(k));
  }
  return out;
}

// R@1 of an ideal reader of a split's captions (DemoWorld::retrieval_ceiling).
nlohmann::json retrieval_ceiling_json(const DemoWorld& w, const std::string& name, int captions_per_image) {
  std::vector<std::pair<size_t, int>> captions;
  for (size_t i = 0; i < w.split(name).size(); ++i)
    for (int c = 0; c < captions_per_image; ++c) captions.push_back({i, split_caption_variant(w, i, c)});
  const auto [tr1, ir1] = w.retrieval_ceiling(w.split(name), captions);
  return {{"tr_r1", tr1}, {"ir_r1", ir1}};
}

std::vector<int64_t> caption_owner(const std::vector<KarpathyImage>& images) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < images.size(); ++i) out.insert(out.end(), images[i].captions.size(), static_cast<int64_t>(i));
  return out;
}

nlohmann::json recall_json(const Recall& r) {
  return {{"tr_r1", r.tr1}, {"tr_r5", r.tr5}, {"tr_r10", r.tr10}, {"ir_r1", r.ir1}, {"ir_r5", r.ir5}, {"ir_r10", r.ir10}};
}

}  // namespace

Config demo_config(const DemoRecipe& r) {
  Config c;
  c.embed_dim = r.embed_dim;
  c.depth = r.depth;
  c.num_heads = r.num_heads;
  c.image_size = r.image_size;
  c.patch_size = 16;
  c.vlffn_start_layer_index = r.vlffn_start;
  c.layer_scale_init_values = r.layer_scale;
  c.use_abs_pos_emb = r.absolute_positions;
  c.need_relative_position_embed = !r.absolute_positions;
  c.max_text_len = r.max_text_len;
  c.drop_path_rate = 0.0;
  c.heads = {"mlm", "itm", "itc", "mim"};
  return c;
}

DemoWorld demo_world(const DemoRecipe& r, uint64_t seed, int n_train, int n_val, int n_test) {
  return DemoWorld(seed, n_train, n_val, n_test, r.image_size, r.background_tint, r.max_shapes, r.caption_shapes, r.min_shapes);
}

void init_demo_weights(VLMo& model, const DemoRecipe& r, uint64_t seed) {
  init_weights(model, seed);
  if (r.image_pos_init_std != 0.02 && model->transformer->pos_embed.defined()) {
    torch::NoGradGuard no_grad;
    model->transformer->pos_embed.normal_(0, r.image_pos_init_std);  // after init_weights' draws: seeded
  }
}

namespace {
// The recipe's fields by name, for apply() and to_json().
template <typename Recipe, typename F>  // Recipe: DemoRecipe or const DemoRecipe
void for_each_field(Recipe& r, F&& f) {
  f("embed_dim", r.embed_dim), f("depth", r.depth), f("num_heads", r.num_heads), f("image_size", r.image_size);
  f("vlffn_start", r.vlffn_start), f("layer_scale", r.layer_scale);
  f("absolute_positions", r.absolute_positions), f("background_tint", r.background_tint);
  f("max_shapes", r.max_shapes), f("min_shapes", r.min_shapes), f("caption_shapes", r.caption_shapes),
      f("max_text_len", r.max_text_len);
  f("image_pos_init_std", r.image_pos_init_std);
  f("stage1_steps", r.stage1_steps), f("stage2_steps", r.stage2_steps), f("stage3_steps", r.stage3_steps);
  f("retrieval_steps", r.retrieval_steps), f("vqa_steps", r.vqa_steps), f("nlvr2_steps", r.nlvr2_steps);
  f("stage1_batch", r.stage1_batch), f("stage2_batch", r.stage2_batch), f("stage3_batch", r.stage3_batch);
  f("retrieval_batch", r.retrieval_batch), f("vqa_batch", r.vqa_batch), f("nlvr2_batch", r.nlvr2_batch);
  f("stage1_lr", r.stage1_lr), f("stage2_lr", r.stage2_lr), f("stage3_lr", r.stage3_lr);
  f("retrieval_lr", r.retrieval_lr), f("vqa_lr", r.vqa_lr), f("nlvr2_lr", r.nlvr2_lr);
  f("vqa_head_lr_mult", r.vqa_head_lr_mult), f("nlvr2_head_lr_mult", r.nlvr2_head_lr_mult);
  f("stage3_itm_head_lr_mult", r.stage3_itm_head_lr_mult), f("stage3_mlm_prob", r.stage3_mlm_prob);
  f("stage3_group", r.stage3_group), f("stage3_group_distance", r.stage3_group_distance);
  f("stage3_group_from", r.stage3_group_from), f("retrieval_itm", r.retrieval_itm);
  f("retrieval_group", r.retrieval_group);
  f("warmup_fraction", r.warmup_fraction), f("finetune_warmup_fraction", r.finetune_warmup_fraction);
}
}  // namespace

void DemoRecipe::apply(const nlohmann::json& overrides) {
  if (!overrides.is_object()) throw Error("demo recipe: expected a JSON object of field: value");
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    const std::string key = it.key();  // named copies: clang (C++17) does not capture structured bindings
    const nlohmann::json& value = it.value();
    bool found = false;
    for_each_field(*this, [&](const char* name, auto& field) {
      if (key != name) return;
      found = true;
      using T = std::decay_t<decltype(field)>;
      if constexpr (std::is_same_v<T, bool>) {
        if (!value.is_boolean()) throw Error(cat("demo recipe: \"", key, "\" must be true or false"));
        field = value.get<bool>();
      } else if constexpr (std::is_same_v<T, std::optional<double>>) {
        if (value.is_null()) field.reset();
        else if (value.is_number()) field = value.get<double>();
        else throw Error(cat("demo recipe: \"", key, "\" must be a number or null"));
      } else if constexpr (std::is_floating_point_v<T>) {
        // Learning rates, their multipliers and the warm-up fraction: a negative one would train backwards.
        if (!value.is_number() || value.get<double>() < 0) throw Error(cat("demo recipe: \"", key, "\" must be a number >= 0"));
        field = value.get<T>();
      } else {
        // caption_shapes 0 means "every shape"; every other count or size must be positive.
        const int64_t least = std::string(key) == "caption_shapes" ? 0 : 1;
        if (!value.is_number_integer() || value.get<int64_t>() < least)
          throw Error(cat("demo recipe: \"", key, "\" must be ", least ? "a positive integer" : "an integer >= 0"));
        field = static_cast<T>(value.get<int64_t>());
      }
    });
    if (!found) throw Error(cat("demo recipe: unknown field \"", key, "\" (see vlmo demo --help)"));
  }
}

nlohmann::json DemoRecipe::to_json() const {
  nlohmann::json j;
  for_each_field(*this, [&](const char* name, const auto& field) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, std::optional<double>>) j[name] = field ? nlohmann::json(*field) : nlohmann::json();
    else j[name] = field;
  });
  return j;
}

namespace {

// Grouped batches (DemoRecipe::stage3_group): from step `from_step` on, the g-th sample of the
// run belongs to group g / size, whose first member is the epoch order's scene at that group's
// start and whose others are distinct near-duplicates of it, drawn by the group's seed.
struct Grouping {
  int64_t size = 1, from_step = 0;
  std::shared_ptr<const std::vector<std::vector<uint32_t>>> neighbours;
};

// What a stage's batches hold: images, captions, masked patches; the contrastive objective of
// several processes; the learning-rate multiplier of the head parameters.
struct StageSpec {
  bool with_images = false, with_text = false, patch_mask = false;
  StepObjectiveFn step_objective;
  double head_lr_mult = 1.0;
  std::vector<std::string> heads;
  Grouping grouping;
};

// Mean of each logged value (but step and lr) over the first and the last 10 % of steps.
std::pair<nlohmann::json, nlohmann::json> first_and_last_steps(const TrainResult& r) {
  nlohmann::json first, last;
  const size_t w = std::max<size_t>(1, r.history.size() / 10);
  for (const auto& [k, v] : r.history.front()) {
    if (k == "step" || k == "lr") continue;
    double a = 0, b = 0;
    for (size_t i = 0; i < w; ++i) a += r.history[i].at(k), b += r.history[r.history.size() - 1 - i].at(k);
    first[k] = a / w;
    last[k] = b / w;
  }
  return {first, last};
}

// The retrieval results of the run (what the report and the printed table show).
struct RetrievalResults {
  RetrievalEvaluation zero_shot, test, pretrained_rerank;
  Recall val, chance;
};

// One run of the demo, stage by stage: the world and the model are built once, then each stage
// trains or evaluates and adds its part to the report.
class DemoRun {
 public:
  explicit DemoRun(const DemoOptions& o);
  nlohmann::json run();

 private:
  void describe_world();
  void fit(VLMo& m, const std::string& name, const ObjectiveFn& objective, const BatchFn& batches, int64_t n_steps, int64_t batch,
           double lr, double head_lr_mult, const std::map<std::string, std::string>& meta,
           const StepObjectiveFn& step_objective = {}, const std::vector<std::string>& heads = {});
  void fit(VLMo& m, const FinetunePlan& plan, int64_t n_steps, int64_t batch, double lr, double head_lr_mult);
  void run_stage(const std::string& name, Stage stage, const ObjectiveFn& objective, int64_t n_steps, int64_t batch, double lr,
                 const StageSpec& spec);
  Grouping grouping(int64_t size, double from_fraction, int64_t n_steps);
  void diagnose(const std::string& after);
  int start_position();
  void pretrain(int start);
  void finetune_retrieval(RetrievalResults& r);
  void vqa();
  void nlvr2();
  void report_retrieval(const RetrievalResults& r);
  void print_report(const RetrievalResults& r) const;
  void place(VLMo& m) const;
  int64_t steps(int64_t n) const { return std::max<int64_t>(2, static_cast<int64_t>(n * o_.step_scale)); }
  int64_t per_rank(int64_t batch) const;

  const DemoOptions& o_;
  const DemoRecipe& rc_;
  const std::chrono::steady_clock::time_point t_start_ = std::chrono::steady_clock::now();
  Tokenizer tok_;
  Config cfg_;
  DemoWorld world_;
  std::vector<KarpathyImage> test_, val_;
  const std::vector<Scene>& train_scenes_;
  int world_size_ = 1;
  bool writer_ = true;
  VLMo model_{nullptr};
  nlohmann::json report_;
  at::Tensor probe_images_;
  std::vector<std::string> probe_captions_;
  std::shared_ptr<const std::vector<std::vector<uint32_t>>> near_duplicates_;
  TensorMap stage3_weights_;  // the start of VQA and NLVR2 (in memory: every rank has them)
  ImageLoader scenes_;
};

Tokenizer demo_tokenizer(const DemoOptions& o) {
  return o.vocab.empty() ? world_tokenizer(Tokenizer::from_file(Tokenizer::default_vocab_path())) : Tokenizer::from_file(o.vocab);
}

Config demo_config_for(const DemoRecipe& rc, const Tokenizer& tok) {
  Config c = demo_config(rc);
  c.vocab_size = static_cast<int>(tok.vocab_size());
  return c;
}

// Seeds torch's generator and returns the seed: called in the member initialisers before the
// world and the model are made, so that every draw happens in the order of a seeded run.
uint64_t seeded_first(const DemoOptions& o) {
  at::manual_seed(o.seed);
  return o.seed;
}

DemoRun::DemoRun(const DemoOptions& o)
    : o_(o),
      rc_(o.recipe),
      tok_(demo_tokenizer(o)),
      cfg_(demo_config_for(o.recipe, tok_)),
      world_(demo_world(o.recipe, seeded_first(o), 6000, 100, 100)),
      test_(retrieval_split(world_, "test", 2)),
      val_(retrieval_split(world_, "val", 2)),
      train_scenes_(world_.split("train")),
      scenes_([this](const std::string& ref) { return world_.load(ref); }) {
  // Several processes (torchrun): each trains on its share of every global batch (batch / W
  // samples per rank: the same global batches as one process); every rank evaluates the same
  // weights; only rank 0 writes files and prints.
  world_size_ = o.group ? o.group->world_size() : 1;
  writer_ = !o.group || o.group->rank() == 0;
  model_ = VLMo(cfg_);
  init_demo_weights(model_, rc_, o.seed);
  place(model_);
  describe_world();
  const std::string metrics = o.out_dir + "/metrics.jsonl";
  if (writer_) std::remove(metrics.c_str());
  // The model's state on the test split after each stage (report "diagnostics").
  std::vector<at::Tensor> probe_pixels;
  for (size_t i = 0; i < test_.size(); ++i) {
    probe_captions_.push_back(test_[i].captions[0]);
    probe_pixels.push_back(to_normalized_tensor(world_.load(test_[i].path)));
  }
  probe_images_ = at::stack(probe_pixels);
}

void DemoRun::describe_world() {
  report_["seed"] = o_.seed;
  report_["config"] = nlohmann::json::parse(config_to_json_text(cfg_));
  report_["world"] = {{"train_scenes", train_scenes_.size()},
                      {"val_scenes", val_.size()},
                      {"test_scenes", test_.size()},
                      {"test_captions", 2 * test_.size()},
                      {"image_size", cfg_.image_size},
                      {"shapes_per_scene", {rc_.min_shapes, rc_.max_shapes}},
                      {"shapes_per_caption", rc_.caption_shapes},
                      {"test_ceiling", retrieval_ceiling_json(world_, "test", 2)}};
  report_["processes"] = world_size_;
  report_["recipe"] = rc_.to_json();
  report_["precision"] = precision_name(o_.policy.precision);
  if (!o_.precision_note.empty()) report_["precision_choice"] = o_.precision_note;
}

int64_t DemoRun::per_rank(int64_t batch) const {
  if (batch % world_size_ != 0)
    throw Error(
        cat("the demo's batch of ", batch, " does not split over ", world_size_, " processes (use 1, 2, 4, 8, 16 or 32)"));
  return batch / world_size_;
}

// Every model of the demo: on the device, with the run-time settings.
void DemoRun::place(VLMo& m) const {
  m->to(o_.policy.device);
  m->set_run_policy(o_.policy);
  m->set_activation_checkpointing(o_.activation_checkpointing);
}

// One training run of a stage: trains `m` with `batches` and records the stage in the report.
void DemoRun::fit(VLMo& m, const std::string& name, const ObjectiveFn& objective, const BatchFn& batches, int64_t n_steps,
                  int64_t batch, double lr, double head_lr_mult, const std::map<std::string, std::string>& meta,
                  const StepObjectiveFn& step_objective, const std::vector<std::string>& heads) {
  TrainOptions t;
  t.group = o_.group;
  t.step_objective = step_objective;
  t.name = name;
  t.max_steps = n_steps;
  const bool pretraining = name.rfind("stage", 0) == 0;  // "stage1-image" ... "stage3-vl"; else fine-tuning
  t.warmup_steps =
      std::max<int64_t>(1, static_cast<int64_t>(n_steps * (pretraining ? rc_.warmup_fraction : rc_.finetune_warmup_fraction)));
  t.lr = lr;
  t.head_lr_mult = head_lr_mult;
  t.head_prefixes = heads;
  t.batch_size = per_rank(batch);
  t.progress = o_.progress;
  t.log_every = 25;
  t.loader_threads = 1;
  t.checkpoint_path = o_.out_dir + "/" + name + ".safetensors";
  t.config_json = config_to_json_text(m->config());
  t.metadata = meta;
  t.metadata[kVocabMetadataKey] = tok_.vocab_text();  // every command that loads the model tokenizes with it
  t.metrics_path = o_.out_dir + "/" + name + ".metrics.jsonl";
  const TrainResult r = train(m, objective, batches, t);
  const auto [first, last] = first_and_last_steps(r);
  report_["stages"][name] = {{"steps", r.steps},     {"batch", batch},       {"lr", lr},
                             {"seconds", r.seconds}, {"first_steps", first}, {"last_steps", last}};
}

// A fine-tuning of the library's plan (vlmo/finetune.h), with the demo's batches and schedule.
void DemoRun::fit(VLMo& m, const FinetunePlan& plan, int64_t n_steps, int64_t batch, double lr, double head_lr_mult) {
  fit(m, plan.name, plan.objective, plan.train.batches, n_steps, batch, lr, head_lr_mult, plan.metadata, plan.step_objective);
}

// A stage on the main model: examples from the training scenes, in a per-epoch order.
void DemoRun::run_stage(const std::string& name, Stage stage, const ObjectiveFn& objective, int64_t n_steps, int64_t batch,
                        double lr, const StageSpec& spec) {
  set_trainable_for_stage(model_, stage);
  auto order = std::make_shared<EpochOrder>(train_scenes_.size(), mix_seed(o_.seed, std::hash<std::string>()(name)));
  CollateOptions co;
  co.image_size = cfg_.image_size;
  co.max_text_len = cfg_.max_text_len;
  co.patch_mask = spec.patch_mask;
  co.patch_size = cfg_.patch_size;
  if (name == "stage3-vl") co.mlm_prob = rc_.stage3_mlm_prob;
  const uint64_t stage_seed = mix_seed(o_.seed, std::hash<std::string>()(name) + 1);
  const int64_t rank_batch = per_rank(batch);
  auto scene_at = [order, grouping = spec.grouping, batch, stage_seed](int64_t g) -> size_t {
    if (grouping.size <= 1 || g / batch < grouping.from_step) return order->at(g);
    const int64_t k = g / grouping.size, m = g % grouping.size;
    const size_t anchor = order->at(k * grouping.size);
    const auto& near = (*grouping.neighbours)[anchor];
    if (m == 0 || near.empty()) return m == 0 ? anchor : order->at(g);
    std::vector<uint32_t> pick(near);  // the first size - 1 of a seeded partial shuffle
    std::mt19937_64 rng(mix_seed(stage_seed ^ 0x67726f7570ULL, static_cast<uint64_t>(k)));
    for (int64_t i = 0; i < m && i < static_cast<int64_t>(pick.size()); ++i)
      std::swap(pick[i], pick[i + rng() % (pick.size() - i)]);
    return pick[static_cast<size_t>(std::min<int64_t>(m, static_cast<int64_t>(pick.size()))) - 1];
  };
  BatchFn batches = [this, scene_at, co, rank_batch, with_images = spec.with_images, with_text = spec.with_text,
                     stage_seed](int64_t index) {
    std::vector<Example> ex;
    for (int64_t j = 0; j < rank_batch; ++j) {
      const int64_t g = index * rank_batch + j;
      const Scene& s = train_scenes_[scene_at(g)];
      Example e;
      if (with_images) e.image = world_.render(s);
      if (with_text) e.text = world_.caption(s, static_cast<int>(mix_seed(stage_seed, g) % world_.num_caption_variants()));
      ex.push_back(std::move(e));
    }
    return collate(ex, tok_, co, stage_seed, index * rank_batch);  // masks keyed by sample, as the scenes
  };
  fit(model_, name, objective, batches, n_steps, batch, lr, spec.head_lr_mult, {}, spec.step_objective, spec.heads);
}

// Grouped batches of a stage (DemoRecipe::stage3_group, retrieval_group): the near-duplicate
// lists are made once, when a stage first needs them.
Grouping DemoRun::grouping(int64_t size, double from_fraction, int64_t n_steps) {
  Grouping g{size, static_cast<int64_t>(from_fraction * static_cast<double>(n_steps)), nullptr};
  if (g.size <= 1) return g;
  if (!near_duplicates_) {
    auto near = std::make_shared<std::vector<std::vector<uint32_t>>>(
        scene_neighbours(train_scenes_, static_cast<int>(rc_.stage3_group_distance)));
    size_t total = 0, none = 0;
    for (const auto& n : *near) total += n.size(), none += n.empty();
    report_["world"]["near_duplicates"] = {{"max_distance", rc_.stage3_group_distance},
                                           {"mean_per_scene", static_cast<double>(total) / static_cast<double>(near->size())},
                                           {"scenes_without", none}};
    near_duplicates_ = near;
  }
  g.neighbours = near_duplicates_;
  return g;
}

void DemoRun::diagnose(const std::string& after) {
  report_["diagnostics"][after] = diagnose_model(model_, tok_, probe_images_, probe_captions_, mix_seed(o_.seed, 13));
}

// --start-at: the stages before it are taken from the given checkpoint instead of trained.
int DemoRun::start_position() {
  static const std::vector<std::string> kStarts = {"", "stage2", "stage3", "finetune"};
  const auto start_pos = std::find(kStarts.begin(), kStarts.end(), o_.start_at);
  if (start_pos == kStarts.end())
    throw Error(cat("demo: --start-at \"", o_.start_at, "\" is not one of stage2, stage3, finetune"));
  const int start = static_cast<int>(start_pos - kStarts.begin());
  if (start > 0) {
    if (o_.start_weights.empty()) throw Error("demo: --start-at needs --weights (a checkpoint of an earlier demo run)");
    const LoadReport lr = load_weights(model_, read_weights(o_.start_weights), false);
    if (!lr.missing.empty() || !lr.mismatched.empty())
      throw Error(cat(o_.start_weights, ": not a checkpoint of this demo model\n", lr.describe()));
    report_["started_at"] = {{"stage", o_.start_at}, {"weights", o_.start_weights}};
  }
  return start;
}

// The three official stages (from --start-at on), each followed by the diagnostics.
void DemoRun::pretrain(int start) {
  if (start <= 0) {
    run_stage("stage1-image", Stage::kImage, mim_objective, steps(rc_.stage1_steps), rc_.stage1_batch, rc_.stage1_lr,
              StageSpec{true, false, true, {}, 1.0, {}, {}});
    diagnose("stage1-image");
  }
  if (start <= 1) {
    run_stage("stage2-text", Stage::kText, text_mlm_objective, steps(rc_.stage2_steps), rc_.stage2_batch, rc_.stage2_lr,
              StageSpec{false, true, false, {}, 1.0, {}, {}});
    diagnose("stage2-text");
  }
  // With several processes the contrastive stages use the global contrastive batch, which keeps
  // the one-process gradient (the official all-gather gives the encoders 1/W of it: README
  // "Several processes"). With one process and no accumulation it is the official loss, which
  // the plain objective computes without the extra feature pass (about 15 % faster).
  if (start <= 2)
    run_stage("stage3-vl", Stage::kVL, vl_objective, steps(rc_.stage3_steps), rc_.stage3_batch, rc_.stage3_lr,
              {true,
               true,
               false,
               world_size_ > 1 ? vl_global_step_objective(mix_seed(o_.seed, 3)) : StepObjectiveFn{},
               rc_.stage3_itm_head_lr_mult,
               {"itm_score.", "pooler."},
               grouping(rc_.stage3_group, rc_.stage3_group_from, steps(rc_.stage3_steps))});
  diagnose("stage3-vl");  // the model fine-tuning starts from (also when it was loaded)
  for (const auto& p : model_->named_parameters()) stage3_weights_[p.key()] = p.value().detach().clone();
}

// Retrieval fine-tuning of the dual encoder, evaluated on the test and validation splits; the
// same top 8 also re-scored by the pre-trained fusion encoder (the stage-3 weights), whose ITM
// head the official ITC-only fine-tuning has not moved away from its encoder.
void DemoRun::finetune_retrieval(RetrievalResults& r) {
  // The library's retrieval plan on the main model (its batches: run_stage's, from the world).
  const FinetunePlan plan =
      retrieval_plan({}, rc_.retrieval_itm, world_size_ > 1 ? std::optional<uint64_t>(mix_seed(o_.seed, 4)) : std::nullopt);
  run_stage("finetune-retrieval", Stage::kVL, plan.objective, steps(rc_.retrieval_steps), rc_.retrieval_batch, rc_.retrieval_lr,
            {true, true, false, plan.step_objective, 1.0, {}, grouping(rc_.retrieval_group, 0.0, steps(rc_.retrieval_steps))});
  r.test = evaluate_retrieval(model_, tok_, test_, scenes_, /*rerank_k=*/8);
  {
    VLMo pretrained(cfg_);
    load_weights(pretrained, stage3_weights_, false);
    place(pretrained);
    r.pretrained_rerank = evaluate_retrieval(model_, tok_, test_, scenes_, /*rerank_k=*/8, /*batch=*/64, pretrained);
  }
  r.val = evaluate_retrieval(model_, tok_, val_, scenes_).recall;
  r.chance = chance_recall(static_cast<int64_t>(test_.size()), caption_owner(test_));
  if (writer_) write_gallery(model_, world_, test_, o_.out_dir);
}

// VQA: a 13-way answer classifier on the fusion encoder, from the stage-3 weights; tested on two
// questions per test scene, ten identical human answers each.
void DemoRun::vqa() {
  const std::vector<std::string> answers = world_.answers();
  auto label_of = [&](const std::string& a) {
    return static_cast<int64_t>(std::find(answers.begin(), answers.end(), a) - answers.begin());
  };
  auto order = std::make_shared<EpochOrder>(train_scenes_.size(), mix_seed(o_.seed, 501));
  const int64_t B = per_rank(rc_.vqa_batch);
  BatchFn batches = [&, order, B](int64_t index) {
    std::vector<at::Tensor> pix;
    std::vector<std::string> qs;
    at::Tensor targets = at::zeros({B, static_cast<int64_t>(answers.size())});
    for (int64_t j = 0; j < B; ++j) {
      const int64_t g = index * B + j;
      const Scene& sc = train_scenes_[order->at(g)];
      const auto [q, a] = world_.question(sc, mix_seed(o_.seed + 7, g));
      pix.push_back(to_normalized_tensor(world_.render(sc)));
      qs.push_back(q);
      targets[j][label_of(a)] = 1.0;  // every demo question has one unanimous answer
    }
    Batch b;
    std::tie(b.text_ids, b.text_masks) = encode_batch(tok_, qs, cfg_.max_text_len);
    b.image = at::stack(pix);
    b.vqa_targets = targets;
    return b;
  };
  const FinetunePlan plan = vqa_plan(answers, {batches});
  VLMo vqa = finetune_model(plan.model_config(cfg_), stage3_weights_, o_.seed);
  place(vqa);
  fit(vqa, plan, steps(rc_.vqa_steps), rc_.vqa_batch, rc_.vqa_lr, rc_.vqa_head_lr_mult);
  std::map<std::string, int> counts;
  for (size_t i = 0; i < train_scenes_.size(); ++i) counts[world_.question(train_scenes_[i], mix_seed(o_.seed + 7, i)).second]++;
  const std::string majority =
      std::max_element(counts.begin(), counts.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  std::vector<VqaQuestion> qs;
  double majority_acc = 0;
  for (size_t i = 0; i < world_.split("test").size(); ++i)
    for (uint64_t k = 0; k < 2; ++k) {
      VqaQuestion q;
      q.question_id = static_cast<int64_t>(2 * i + k);
      q.image = DemoWorld::ref("test", i);
      std::string gold;
      std::tie(q.question, gold) = world_.question(world_.split("test")[i], mix_seed(o_.seed + 99, 2 * i + k));
      q.answers.assign(10, gold);
      majority_acc += gold == majority;
      qs.push_back(std::move(q));
    }
  const VqaEvaluation e = evaluate_vqa(vqa, tok_, qs, answers, scenes_);
  report_["vqa"] = {{"test_questions", qs.size()},
                    {"accuracy", e.accuracy},
                    {"majority_answer", majority},
                    {"majority_accuracy", majority_acc / static_cast<double>(qs.size())}};
}

// NLVR2: statements over image pairs, two fusion passes, three token types; tested on 200 pairs.
void DemoRun::nlvr2() {
  // The g-th statement of a split: a pair of scenes and a statement about them, from the salt.
  auto statement_at = [this](const std::string& split, uint64_t g, uint64_t salt) {
    const auto& sc = world_.split(split);
    const size_t l = mix_seed(salt, 2 * g) % sc.size(), r = mix_seed(salt, 2 * g + 1) % sc.size();
    const auto [text, truth] = world_.statement(sc[l], sc[r], mix_seed(salt + 1, g));
    return Nlvr2Example{cat(split, "-", g, "-0-0"), text, DemoWorld::ref(split, l), DemoWorld::ref(split, r), truth};
  };
  const int64_t B = per_rank(rc_.nlvr2_batch);
  BatchFn batches = [&, B](int64_t index) {
    std::vector<at::Tensor> p0, p1;
    std::vector<std::string> st;
    std::vector<int64_t> labels;
    for (int64_t j = 0; j < B; ++j) {
      const Nlvr2Example e = statement_at("train", static_cast<uint64_t>(index * B + j), mix_seed(o_.seed, 777));
      p0.push_back(to_normalized_tensor(world_.load(e.image0)));
      p1.push_back(to_normalized_tensor(world_.load(e.image1)));
      st.push_back(e.sentence);
      labels.push_back(e.label ? 1 : 0);
    }
    Batch b;
    std::tie(b.text_ids, b.text_masks) = encode_batch(tok_, st, cfg_.max_text_len);
    b.image_0 = at::stack(p0);
    b.image_1 = at::stack(p1);
    b.nlvr2_labels = at::tensor(at::ArrayRef<int64_t>(labels), at::kLong);
    return b;
  };
  const FinetunePlan plan = nlvr2_plan({batches});
  VLMo nlvr2 = finetune_model(plan.model_config(cfg_), stage3_weights_, o_.seed);
  place(nlvr2);
  fit(nlvr2, plan, steps(rc_.nlvr2_steps), rc_.nlvr2_batch, rc_.nlvr2_lr, rc_.nlvr2_head_lr_mult);
  std::vector<Nlvr2Example> test_pairs;
  double pos = 0;
  for (uint64_t g = 0; g < 200; ++g) {
    test_pairs.push_back(statement_at("test", g, mix_seed(o_.seed, 778)));
    pos += test_pairs.back().label;
  }
  pos /= static_cast<double>(test_pairs.size());
  const Nlvr2Evaluation e = evaluate_nlvr2(nlvr2, tok_, test_pairs, scenes_);
  report_["nlvr2"] = {
      {"test_pairs", test_pairs.size()}, {"accuracy", e.score.accuracy}, {"majority_accuracy", std::max(pos, 1 - pos)}};
}

void DemoRun::report_retrieval(const RetrievalResults& r) {
  report_["retrieval"].update(
      {{"test_after_finetuning", recall_json(r.test.recall)},
       {"val_after_finetuning", recall_json(r.val)},
       {"test_after_finetuning_itm_rerank_top8", recall_json(r.test.reranked)},
       {"test_after_finetuning_itm_rerank_top8_logits", recall_json(r.test.reranked_logits)},
       {"test_after_finetuning_pretrained_itm_rerank_top8", recall_json(r.pretrained_rerank.reranked)},
       {"test_after_finetuning_pretrained_itm_rerank_top8_logits", recall_json(r.pretrained_rerank.reranked_logits)},
       {"chance", recall_json(r.chance)}});
  // The fusion encoder's matching on the test split after pre-training: each caption with its
  // image and with another test image (random, or the dual encoder's most similar one).
  const auto& d3 = report_["diagnostics"]["stage3-vl"];
  report_["itm"] = {{"test_accuracy_random_negatives", d3["itm_acc_random"]},
                    {"test_accuracy_hard_negatives", d3["itm_acc_hard"]},
                    {"test_pairwise_hard_itm", d3["itm_pairwise_hard"]},
                    {"test_pairwise_hard_dual", d3["dual_pairwise_hard"]}};
}

void DemoRun::print_report(const RetrievalResults& r) const {
  const Recall& ft = r.test.recall;
  std::printf("\nVLMo demo: shapes world, %zu test images x 2 captions (seed %llu)\n", test_.size(),
              static_cast<unsigned long long>(o_.seed));
  std::printf("%-34s %8s %8s %8s %8s %8s %8s\n", "test split, dual encoder", "TR@1", "TR@5", "TR@10", "IR@1", "IR@5", "IR@10");
  auto row = [](const char* name, const Recall& x) {
    std::printf("%-34s %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%% %7.1f%%\n", name, 100 * x.tr1, 100 * x.tr5, 100 * x.tr10,
                100 * x.ir1, 100 * x.ir5, 100 * x.ir10);
  };
  row("chance", r.chance);
  std::printf("%-34s %7.1f%% %26.1f%%\n", "ceiling (ideal reader of captions)",
              100 * report_["world"]["test_ceiling"]["tr_r1"].get<double>(),
              100 * report_["world"]["test_ceiling"]["ir_r1"].get<double>());
  row("after pre-training (no fine-tune)", r.zero_shot.recall);
  row("  + ITM re-ranking of the top 8", r.zero_shot.reranked);
  row(rc_.retrieval_itm ? "after fine-tuning (ITC + ITM)" : "after fine-tuning (ITC)", ft);
  row("  + ITM re-ranking of the top 8", r.test.reranked);
  row("  + re-ranked by pre-trained ITM", r.pretrained_rerank.reranked);
  if (rc_.retrieval_itm)
    std::printf("  (fine-tuned with ITC + ITM, the supplementary's variant for re-ranking; --recipe\n"
                "   '{\"retrieval_itm\": false}' is the official ITC only, after which the ITM head no longer fits)\n");
  else
    std::printf("  (the official retrieval fine-tuning trains ITC only: its ITM head no longer fits the encoder, the\n"
                "   pre-trained fusion encoder's does; --recipe '{\"retrieval_itm\": true}' fine-tunes ITC + ITM)\n");
  std::printf("\n%-34s %8s %10s\n", "task (test split)", "accuracy", "majority");
  std::printf("%-34s %7.1f%% %9.1f%%\n", "VQA (2 questions per image)", 100 * report_["vqa"]["accuracy"].get<double>(),
              100 * report_["vqa"]["majority_accuracy"].get<double>());
  std::printf("%-34s %7.1f%% %9.1f%%\n", "NLVR2 (200 image pairs)", 100 * report_["nlvr2"]["accuracy"].get<double>(),
              100 * report_["nlvr2"]["majority_accuracy"].get<double>());
  std::printf("%-34s %7.1f%% %9.1f%%\n", "ITM (pre-trained) vs hardest image",
              100 * report_["itm"]["test_accuracy_hard_negatives"].get<double>(), 50.0);
  std::printf("%-34s %7.1f%% %9.1f%%\n", "ITM (pre-trained) vs random image",
              100 * report_["itm"]["test_accuracy_random_negatives"].get<double>(), 50.0);
  std::printf("R@1 over chance: TR %.1fx, IR %.1fx; total time %.0f s; report: %s/report.json\n", ft.tr1 / r.chance.tr1,
              ft.ir1 / r.chance.ir1, report_["seconds"].get<double>(), o_.out_dir.c_str());
}

nlohmann::json DemoRun::run() {
  diagnose("init");
  pretrain(start_position());
  // Downstream training draws from the world directly (a fresh caption, question or statement at
  // every visit of a scene); evaluation goes through the library's loops, with scenes as images.
  RetrievalResults r;
  r.zero_shot = evaluate_retrieval(model_, tok_, test_, scenes_, /*rerank_k=*/8);
  report_["retrieval"] = {{"test_after_pretraining", recall_json(r.zero_shot.recall)},
                          {"test_after_pretraining_itm_rerank_top8", recall_json(r.zero_shot.reranked)},
                          {"test_after_pretraining_itm_rerank_top8_logits", recall_json(r.zero_shot.reranked_logits)}};
  auto seconds = [this] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start_).count(); };
  if (o_.pretrain_only) {
    report_["seconds"] = seconds();
    if (writer_) write_file_atomic(o_.out_dir + "/report.json", report_.dump(2) + "\n");
    return report_;
  }
  finetune_retrieval(r);
  vqa();
  nlvr2();
  report_retrieval(r);
  report_["seconds"] = seconds();
  if (!writer_) return report_;
  print_report(r);
  write_file_atomic(o_.out_dir + "/report.json", report_.dump(2) + "\n");
  const std::vector<std::string> charts = plot_metrics({o_.out_dir}, o_.out_dir + "/plots");
  std::printf("learning curves: %zu charts (PNG + SVG) in %s/plots\n", charts.size() / 2, o_.out_dir.c_str());
  std::printf(
      "try the models in a browser:\n  vlmo serve --model %s/finetune-retrieval.safetensors --vqa-model %s/finetune-vqa.safetensors "
      "--nlvr2-model %s/finetune-nlvr2.safetensors --index %s/gallery.safetensors\n",
      o_.out_dir.c_str(), o_.out_dir.c_str(), o_.out_dir.c_str(), o_.out_dir.c_str());
  return report_;
}

}  // namespace

nlohmann::json run_demo(const DemoOptions& o) {
  std::error_code mk;
  std::filesystem::create_directories(o.out_dir, mk);  // a folder that cannot be made is named by the first write
  return DemoRun(o).run();
}

}  // namespace vlmo
