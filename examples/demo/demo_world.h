// The built-in demo world: procedural scenes of coloured shapes (kind, colour, size, position),
// rendered as small RGB images, with captions in varied phrasings. Splits are disjoint: no scene
// of one split appears in another. Everything is a pure function of the seed.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "vlmo/image.h"
#include "vlmo/tokenizer.h"

namespace vlmo {

struct Shape {
  int kind;    // 0 circle, 1 square, 2 triangle
  int colour;  // index into DemoWorld::colour_names()
  bool large;
  int place;  // 0 left, 1 right, 2 top, 3 bottom, 4 middle
};

struct Scene {
  std::vector<Shape> shapes;  // min_shapes .. max_shapes of the world, at different places
  uint64_t style_seed = 0;    // background tint, jitter and noise of the rendering
  std::string signature() const;
};

class DemoWorld {
 public:
  // tint_range: each scene's background is grey 55 plus, per channel, one of `tint_range` levels
  // centred on it. Background is most of an image, so the range sets how much of an untrained
  // image feature is nuisance (docs/demo.md: at 50 levels stage 3's contrastive loss sits
  // at ln(batch) for ~200 steps; at 4 it leaves within ~30).
  // A scene holds min_shapes..max_shapes shapes at distinct places. caption_shapes: 0, a caption
  // names every shape; k > 0, a caption names k of the scene's shapes (all of them when it has k
  // or fewer), a subset picked by the variant, as real captions leave objects out. The defaults
  // are the simpler world some tests are about (1..2 shapes, all named); the demo's recipe draws
  // 2..3 shapes and names 2 (DemoRecipe, demo_world()).
  DemoWorld(uint64_t seed, int n_train, int n_val, int n_test, int image_size, int tint_range = 4, int max_shapes = 2,
            int caption_shapes = 0, int min_shapes = 1);

  const std::vector<Scene>& split(const std::string& name) const;  // "train", "val", "test"
  Image render(const Scene& s) const;
  // A caption in one of kPhrasings phrasings (variant % kPhrasings), naming the subset that
  // variant / kPhrasings picks when captions leave shapes out (kSubsetDraws draws).
  std::string caption(const Scene& s, int variant) const;
  // The shapes caption(s, variant) names, in place order, and whether its phrasing states sizes.
  std::vector<Shape> named_shapes(const Scene& s, int variant) const;
  static bool states_size(int variant) { return variant % kPhrasings != 1 && variant % kPhrasings != 3; }
  // R@1 of an ideal reader of the captions, who knows the world's rules but sees only what each
  // caption says (places, kinds, colours, sizes where stated, how many shapes it names): it ranks
  // by the probability of the caption given the scene (a caption naming k of a scene's n > k
  // shapes: 1 / C(n, k)) and breaks ties at random (expected value). {TR@1, IR@1} over `captions`
  // (owner index into `scenes`, variant); the retrieval figures' upper bound.
  std::pair<double, double> retrieval_ceiling(const std::vector<Scene>& scenes,
                                              const std::vector<std::pair<size_t, int>>& captions) const;
  static constexpr int kPhrasings = 6, kSubsetDraws = 16;
  int num_caption_variants() const { return caption_shapes_ > 0 ? kPhrasings * kSubsetDraws : kPhrasings; }
  int image_size() const { return image_size_; }

  // VQA-style question about a scene, with its single correct answer (variant picks the kind).
  std::pair<std::string, std::string> question(const Scene& s, uint64_t variant) const;
  // The answer vocabulary of the questions (colours, kinds, the counts "1" .. max_shapes, "yes", "no").
  std::vector<std::string> answers() const;
  // NLVR2-style statement over a pair of scenes, with its truth value (variant picks it).
  std::pair<std::string, bool> statement(const Scene& left, const Scene& right, uint64_t variant) const;

  // Scenes as image references for the library's data builders and evaluation ("test/17"), and
  // the loader that renders them.
  static std::string ref(const std::string& split, size_t index);
  Image load(const std::string& ref) const;

  static const std::vector<std::string>& colour_names();
  static const std::vector<std::string>& kind_names();
  static const std::vector<std::string>& place_names();

 private:
  std::pair<std::string, bool> any_statement(const Scene& left, const Scene& right, uint64_t variant) const;
  int image_size_, tint_range_, max_shapes_, caption_shapes_, min_shapes_;
  std::vector<Scene> train_, val_, test_;
};

// How far apart two scenes are for a reader of their captions: scenes with different shape counts
// are 9 apart (beyond any grouping distance used); otherwise the number of differing kinds,
// colours and places over the best pairing of their shapes (0..3 per shape). Sizes are not
// counted: a third of the caption phrasings leave the size out, so scenes that differ only in size
// are false negatives for those captions.
int scene_distance(const Scene& a, const Scene& b);

// For every scene, the indices of the others within distance 1..max_distance (scene_distance):
// its near-duplicates, the pool of the demo's grouped batches (DemoRecipe::stage3_group).
std::vector<std::vector<uint32_t>> scene_neighbours(const std::vector<Scene>& scenes, int max_distance);

// The demo's tokenizer: the five special tokens and the BERT uncased word pieces of every text a
// DemoWorld produces (captions, questions, statements), in BERT's order: about 60 entries instead
// of 30522. It tokenizes the world's texts exactly as `bert` does (greedy longest match only ever
// picks pieces BERT picks), and the word embeddings and the MLM decoder shrink from 2 x 3.9 M
// parameters to 2 x 7 K, which makes a stage-3 step about 1.6x faster.
Tokenizer world_tokenizer(const Tokenizer& bert);

}  // namespace vlmo
