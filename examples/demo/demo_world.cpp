#include "demo_world.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "vlmo/data.h"
#include "vlmo/error.h"

namespace vlmo {
namespace {

const uint8_t kColours[][3] = {{220, 40, 40}, {40, 190, 60}, {50, 80, 230}, {235, 220, 40}, {150, 60, 200}, {245, 245, 245}};

std::string shape_phrase(const Shape& s, bool with_size) {
  std::string out = with_size ? (s.large ? "large " : "small ") : "";
  return out + DemoWorld::colour_names()[s.colour] + " " + DemoWorld::kind_names()[s.kind];
}

std::string where(int place, int style) {
  static const char* kOn[] = {"on the left", "on the right", "at the top", "at the bottom", "in the middle"};
  static const char* kSide[] = {"on the left side", "on the right side", "near the top", "near the bottom", "in the center"};
  return style ? kSide[place] : kOn[place];
}

Scene random_scene(std::mt19937_64& rng, int min_shapes, int max_shapes) {
  Scene s;
  const int n = min_shapes + static_cast<int>(rng() % static_cast<uint64_t>(max_shapes - min_shapes + 1));
  std::vector<int> places = {0, 1, 2, 3, 4};
  std::shuffle(places.begin(), places.end(), rng);
  for (int i = 0; i < n; ++i)
    s.shapes.push_back({static_cast<int>(rng() % 3), static_cast<int>(rng() % 6), rng() % 2 == 0, places[i]});
  std::sort(s.shapes.begin(), s.shapes.end(), [](const Shape& a, const Shape& b) { return a.place < b.place; });
  s.style_seed = rng();
  return s;
}

}  // namespace

const std::vector<std::string>& DemoWorld::colour_names() {
  static const std::vector<std::string> k = {"red", "green", "blue", "yellow", "purple", "white"};
  return k;
}
const std::vector<std::string>& DemoWorld::kind_names() {
  static const std::vector<std::string> k = {"circle", "square", "triangle"};
  return k;
}
const std::vector<std::string>& DemoWorld::place_names() {
  static const std::vector<std::string> k = {"left", "right", "top", "bottom", "middle"};
  return k;
}

std::string Scene::signature() const {
  std::string s;
  for (const auto& x : shapes)
    s += std::to_string(x.kind) + std::to_string(x.colour) + (x.large ? "L" : "S") + std::to_string(x.place) + ";";
  return s;
}

DemoWorld::DemoWorld(uint64_t seed, int n_train, int n_val, int n_test, int image_size, int tint_range, int max_shapes,
                     int caption_shapes, int min_shapes)
    : image_size_(image_size),
      tint_range_(tint_range),
      max_shapes_(max_shapes),
      caption_shapes_(caption_shapes),
      min_shapes_(min_shapes) {
  if (max_shapes < 1 || max_shapes > 5)
    throw Error(cat("demo world: max_shapes ", max_shapes, " is outside 1..5 (a scene has 5 places)"));
  if (min_shapes < 1 || min_shapes > max_shapes)
    throw Error(cat("demo world: min_shapes ", min_shapes, " is outside 1..max_shapes (", max_shapes, ")"));
  if (caption_shapes < 0 || caption_shapes > 5)
    throw Error(cat("demo world: caption_shapes ", caption_shapes, " is outside 0..5 (0: every shape)"));
  if (image_size < 32) throw Error(cat("demo world: image size ", image_size, " is too small (>= 32)"));
  if (tint_range < 1 || tint_range > 100)
    throw Error(cat("demo world: background tint range ", tint_range, " is outside 1..100"));
  std::mt19937_64 rng(seed);
  std::set<std::string> used;
  // Test and validation scenes first, each distinct; training scenes never repeat one of them.
  auto fill = [&](std::vector<Scene>& out, int n, bool unique) {
    int guard = 0;
    while (static_cast<int>(out.size()) < n) {
      if (++guard > 200 * n + 1000) throw Error("demo world: could not draw enough distinct scenes");
      Scene s = random_scene(rng, min_shapes, max_shapes);
      const std::string sig = s.signature();
      if (used.count(sig)) continue;
      if (unique) used.insert(sig);
      out.push_back(std::move(s));
    }
  };
  fill(test_, n_test, true);
  fill(val_, n_val, true);
  fill(train_, n_train, false);
}

const std::vector<Scene>& DemoWorld::split(const std::string& name) const {
  if (name == "train") return train_;
  if (name == "val") return val_;
  if (name == "test") return test_;
  throw Error(cat("demo world: unknown split \"", name, "\" (train, val, test)"));
}

Image DemoWorld::render(const Scene& s) const {
  std::mt19937_64 rng(s.style_seed);
  const int S = image_size_;
  Image img;
  img.width = img.height = S;
  img.rgb.resize(static_cast<size_t>(S) * S * 3);
  int tint[3];
  for (int& t : tint) t = 55 - tint_range_ / 2 + static_cast<int>(rng() % static_cast<uint64_t>(tint_range_));
  std::normal_distribution<double> noise(0, 6);
  for (int y = 0; y < S; ++y)
    for (int x = 0; x < S; ++x)
      for (int c = 0; c < 3; ++c)
        img.row(y)[3 * x + c] = static_cast<uint8_t>(std::clamp(tint[c] + y * 20.0 / S + noise(rng), 0.0, 255.0));
  // The places are cells of a 3 x 3 layout (left = middle row, first column, ...): at the demo's
  // 48 px and 16 px patches each shape lies inside one patch, so a place is a patch position.
  const double centres[5][2] = {{1 / 6.0, 0.5}, {5 / 6.0, 0.5}, {0.5, 1 / 6.0}, {0.5, 5 / 6.0}, {0.5, 0.5}};
  for (const auto& sh : s.shapes) {
    std::uniform_real_distribution<double> jitter(-0.02 * S, 0.02 * S);
    const double cx = centres[sh.place][0] * S + jitter(rng), cy = centres[sh.place][1] * S + jitter(rng);
    const double r = (sh.large ? 0.14 : 0.08) * S * (0.9 + 0.2 * (rng() % 100) / 100.0);
    int col[3];
    for (int c = 0; c < 3; ++c) col[c] = std::clamp(kColours[sh.colour][c] + static_cast<int>(rng() % 31) - 15, 0, 255);
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        bool inside = false;
        if (sh.kind == 0) inside = dx * dx + dy * dy <= r * r;
        else if (sh.kind == 1) inside = std::fabs(dx) <= r * 0.85 && std::fabs(dy) <= r * 0.85;
        else inside = dy <= r * 0.8 && dy >= -r && std::fabs(dx) <= (dy + r) * 0.6;  // apex up
        if (inside)
          for (int c = 0; c < 3; ++c) img.row(y)[3 * x + c] = static_cast<uint8_t>(col[c]);
      }
  }
  return img;
}

std::vector<Shape> DemoWorld::named_shapes(const Scene& s, int variant) const {
  std::vector<Shape> named = s.shapes;
  if (caption_shapes_ > 0 && static_cast<int>(named.size()) > caption_shapes_) {
    std::mt19937_64 pick(mix_seed(s.style_seed, static_cast<uint64_t>(variant / kPhrasings)));
    std::shuffle(named.begin(), named.end(), pick);
    named.resize(static_cast<size_t>(caption_shapes_));
    std::sort(named.begin(), named.end(), [](const Shape& a, const Shape& b) { return a.place < b.place; });
  }
  return named;
}

std::string DemoWorld::caption(const Scene& s, int variant) const {
  const int v = variant % kPhrasings;
  std::vector<std::string> parts;
  for (const auto& sh : named_shapes(s, variant)) {
    switch (v) {
      case 0: parts.push_back("a " + shape_phrase(sh, true) + " " + where(sh.place, 0)); break;
      case 1: parts.push_back("a " + shape_phrase(sh, false) + " " + where(sh.place, 1)); break;
      case 2: parts.push_back(where(sh.place, 0) + " there is a " + shape_phrase(sh, true)); break;
      case 3: parts.push_back("one " + shape_phrase(sh, false) + " " + where(sh.place, 0)); break;
      case 4: parts.push_back("a " + shape_phrase(sh, true) + " placed " + where(sh.place, 1)); break;
      default: parts.push_back(shape_phrase(sh, true) + " " + where(sh.place, 0)); break;
    }
  }
  static const char* kJoin[] = {" and ", ", and ", " next to ", " and also ", " together with ", " plus "};
  std::string out = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) out += kJoin[v] + parts[i];
  if (v == 2 || v == 5) out[0] = static_cast<char>(std::toupper(out[0]));
  return out + (v % 2 ? "." : "");
}

std::pair<double, double> DemoWorld::retrieval_ceiling(const std::vector<Scene>& scenes,
                                                       const std::vector<std::pair<size_t, int>>& captions) const {
  // likelihood[c][j]: probability (up to the phrasing's, common to all scenes) that scene j yields
  // what caption c says.
  const size_t ns = scenes.size(), nc = captions.size();
  std::vector<std::vector<double>> lik(nc, std::vector<double>(ns, 0.0));
  for (size_t c = 0; c < nc; ++c) {
    const auto& [owner, variant] = captions[c];
    if (owner >= ns) throw Error(cat("demo world: caption ", c, " belongs to scene ", owner, " of ", ns));
    const std::vector<Shape> told = named_shapes(scenes[owner], variant);
    const bool sized = states_size(variant);
    for (size_t j = 0; j < ns; ++j) {
      const auto& shapes = scenes[j].shapes;
      const size_t n = shapes.size(), k = told.size();
      const bool all_named = caption_shapes_ == 0 || n <= static_cast<size_t>(caption_shapes_);
      if (all_named ? k != n : k != static_cast<size_t>(caption_shapes_)) continue;
      bool fits = true;
      for (const Shape& t : told) {
        bool found = false;
        for (const Shape& x : shapes)
          found = found || (x.place == t.place && x.kind == t.kind && x.colour == t.colour && (!sized || x.large == t.large));
        fits = fits && found;
      }
      if (!fits) continue;
      double subsets = 1;  // C(n, k)
      for (size_t i = 0; i < k; ++i) subsets = subsets * static_cast<double>(n - i) / static_cast<double>(i + 1);
      lik[c][j] = all_named ? 1.0 : 1.0 / subsets;
    }
  }
  // Expected R@1 when the best-scored candidates tie and one of them is drawn.
  auto expected_hit = [](const std::vector<double>& score, const std::vector<bool>& own) {
    const double best = *std::max_element(score.begin(), score.end());
    if (best <= 0) return 0.0;
    double ties = 0, hits = 0;
    for (size_t i = 0; i < score.size(); ++i)
      if (score[i] >= best * (1 - 1e-9)) ties += 1, hits += own[i] ? 1 : 0;
    return hits / ties;
  };
  double tr = 0, ir = 0;
  for (size_t c = 0; c < nc; ++c) {
    std::vector<bool> own(ns, false);
    own[captions[c].first] = true;
    ir += expected_hit(lik[c], own);
  }
  for (size_t j = 0; j < ns; ++j) {
    std::vector<double> score(nc);
    std::vector<bool> own(nc);
    for (size_t c = 0; c < nc; ++c) score[c] = lik[c][j], own[c] = captions[c].first == j;
    tr += expected_hit(score, own);
  }
  return {ns ? tr / static_cast<double>(ns) : 0.0, nc ? ir / static_cast<double>(nc) : 0.0};
}

std::vector<std::string> DemoWorld::answers() const {
  std::vector<std::string> a = colour_names();
  for (const auto& k : kind_names()) a.push_back(k);
  for (int n = min_shapes_; n <= max_shapes_; ++n) a.push_back(std::to_string(n));
  a.push_back("yes"), a.push_back("no");
  return a;
}

std::pair<std::string, std::string> DemoWorld::question(const Scene& s, uint64_t v) const {
  std::mt19937_64 rng(v);
  const Shape& sh = s.shapes[rng() % s.shapes.size()];
  switch (rng() % 5) {
    case 0: return {"what color is the shape " + where(sh.place, 0) + "?", colour_names()[sh.colour]};
    case 1: return {"what shape is " + where(sh.place, 0) + "?", kind_names()[sh.kind]};
    case 2: return {"how many shapes are there?", std::to_string(s.shapes.size())};
    case 3: {
      // Half the time ask about a shape that is there.
      const bool real = rng() % 2 == 0;
      const int colour = real ? sh.colour : static_cast<int>(rng() % 6), kind = real ? sh.kind : static_cast<int>(rng() % 3);
      bool present = false;
      for (const auto& x : s.shapes) present = present || (x.colour == colour && x.kind == kind);
      return {"is there a " + colour_names()[colour] + " " + kind_names()[kind] + "?", present ? "yes" : "no"};
    }
    default: return {"is the shape " + where(sh.place, 0) + " large?", sh.large ? "yes" : "no"};
  }
}

std::pair<std::string, bool> DemoWorld::statement(const Scene& l, const Scene& r, uint64_t v) const {
  // Draw statements until one has the wanted truth value, so that both labels are equally common.
  std::mt19937_64 pick(v);
  const bool want = pick() % 2 == 0;
  std::pair<std::string, bool> s;
  for (int attempt = 0; attempt < 50; ++attempt) {
    s = any_statement(l, r, pick());
    if (s.second == want) break;
  }
  return s;
}

std::pair<std::string, bool> DemoWorld::any_statement(const Scene& l, const Scene& r, uint64_t v) const {
  std::mt19937_64 rng(v);
  auto has = [](const Scene& s, int colour, int kind) {
    for (const auto& x : s.shapes)
      if ((colour < 0 || x.colour == colour) && (kind < 0 || x.kind == kind)) return true;
    return false;
  };
  // Pick the attribute from a shape that exists half the time, so both truth values are common.
  const Scene& src = rng() % 2 ? l : r;
  const Shape& sh = src.shapes[rng() % src.shapes.size()];
  const bool real = rng() % 2 == 0;
  const int colour = real ? sh.colour : static_cast<int>(rng() % 6), kind = real ? sh.kind : static_cast<int>(rng() % 3);
  const std::string thing = colour_names()[colour] + " " + kind_names()[kind];
  switch (rng() % 4) {
    case 0: return {"the left image contains a " + thing + ".", has(l, colour, kind)};
    case 1: return {"the right image contains a " + thing + ".", has(r, colour, kind)};
    case 2: return {"both images contain a " + kind_names()[kind] + ".", has(l, -1, kind) && has(r, -1, kind)};
    default: return {"the left image has more shapes than the right image.", l.shapes.size() > r.shapes.size()};
  }
}

std::string DemoWorld::ref(const std::string& split, size_t index) { return split + "/" + std::to_string(index); }

Image DemoWorld::load(const std::string& ref) const {
  const size_t slash = ref.find('/');
  if (slash == std::string::npos) throw Error(cat("demo world: bad scene reference \"", ref, "\""));
  const auto& scenes = split(ref.substr(0, slash));
  const size_t i = std::stoul(ref.substr(slash + 1));
  if (i >= scenes.size()) throw Error(cat("demo world: no scene ", ref));
  return render(scenes[i]);
}

int scene_distance(const Scene& a, const Scene& b) {
  if (a.shapes.size() != b.shapes.size()) return 9;
  auto diff = [](const Shape& x, const Shape& y) {
    return static_cast<int>(x.kind != y.kind) + static_cast<int>(x.colour != y.colour) + static_cast<int>(x.place != y.place);
  };
  // The best pairing: every order of b's shapes against a's (at most 5! = 120; the demo's 2: 2).
  std::vector<size_t> order(b.shapes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  int best = std::numeric_limits<int>::max();
  do {
    int d = 0;
    for (size_t i = 0; i < order.size(); ++i) d += diff(a.shapes[i], b.shapes[order[i]]);
    best = std::min(best, d);
  } while (std::next_permutation(order.begin(), order.end()));
  return best;
}

std::vector<std::vector<uint32_t>> scene_neighbours(const std::vector<Scene>& scenes, int max_distance) {
  std::vector<std::vector<uint32_t>> out(scenes.size());
  for (size_t i = 0; i < scenes.size(); ++i)
    for (size_t j = i + 1; j < scenes.size(); ++j) {
      const int d = scene_distance(scenes[i], scenes[j]);
      if (d >= 1 && d <= max_distance) out[i].push_back(static_cast<uint32_t>(j)), out[j].push_back(static_cast<uint32_t>(i));
    }
  return out;
}

Tokenizer world_tokenizer(const Tokenizer& bert) {
  const DemoWorld probe(0, 0, 0, 0, 48);  // no scenes: only its texts are used
  std::vector<Scene> singles;
  for (int kind = 0; kind < 3; ++kind)
    for (int colour = 0; colour < 6; ++colour)
      for (int place = 0; place < 5; ++place)
        for (bool large : {false, true}) singles.push_back(Scene{{Shape{kind, colour, large, place}}, 0});
  std::vector<std::string> texts;
  for (size_t i = 0; i < singles.size(); ++i) {
    const Scene& s = singles[i];
    Scene pair = s;  // a second shape at another place, for the two-shape phrasings
    pair.shapes.push_back(
        Shape{(s.shapes[0].kind + 1) % 3, (s.shapes[0].colour + 1) % 6, !s.shapes[0].large, (s.shapes[0].place + 1) % 5});
    for (int v = 0; v < probe.num_caption_variants(); ++v)
      texts.push_back(probe.caption(s, v)), texts.push_back(probe.caption(pair, v));
    for (uint64_t v = 0; v < 64; ++v) {
      texts.push_back(probe.question(pair, mix_seed(i, v)).first);
      texts.push_back(probe.statement(s, pair, mix_seed(i + 1000, v)).first);
      texts.push_back(probe.statement(pair, s, mix_seed(i + 2000, v)).first);
    }
  }
  std::set<int64_t> ids = {bert.pad_id(), bert.unk_id(), bert.cls_id(), bert.sep_id(), bert.mask_id()};
  for (const auto& t : texts)
    for (int64_t id : bert.tokenize_ids(t)) ids.insert(id);
  std::vector<std::string> vocab;
  for (int64_t id : ids) vocab.push_back(bert.token(id));
  return Tokenizer(std::move(vocab), "the demo world's vocabulary");
}

}  // namespace vlmo
