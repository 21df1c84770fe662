#include "serve/answer_agreement.h"

#include <algorithm>
#include <cmath>

namespace vlmo::serve {
namespace {

struct Agreement {
  double tol;

  bool close(double a, double b) const { return std::abs(a - b) <= tol * (1 + std::abs(a)); }

  // The score of a ranked entry ({"id", "score"} or {"answer", "probability"}), or null.
  static const nlohmann::json* score_of(const nlohmann::json& e) {
    if (!e.is_object()) return nullptr;
    for (const char* k : {"score", "probability"})
      if (e.contains(k) && e[k].is_number()) return &e[k];
    return nullptr;
  }
  static double score(const nlohmann::json& e) { return score_of(e)->get<double>(); }
  static nlohmann::json identity(nlohmann::json e) {
    e.erase("score");
    e.erase("probability");
    return e;
  }
  static bool ranked(const nlohmann::json& l) {
    return l.is_array() && !l.empty() &&
           std::all_of(l.begin(), l.end(), [](const nlohmann::json& e) { return score_of(e) != nullptr; });
  }

  // Every entry of x is in y with a close score, or ties with x's cut-off (its last score).
  bool covered(const nlohmann::json& x, const nlohmann::json& y) const {
    const double cut = score(x.back());
    for (const auto& e : x) {
      const auto id = identity(e);
      const auto match = std::find_if(y.begin(), y.end(), [&](const nlohmann::json& f) { return identity(f) == id; });
      if (match == y.end() ? !close(cut, score(e)) : !close(score(e), score(*match))) return false;
    }
    return true;
  }

  bool ranking(const nlohmann::json& a, const nlohmann::json& b) const {
    for (size_t i = 0; i < a.size(); ++i)
      if (!close(score(a[i]), score(b[i]))) return false;
    return covered(a, b) && covered(b, a);
  }

  bool object(const nlohmann::json& a, const nlohmann::json& b) const {
    const bool label_ties =
        a.contains("probability_true") && a["probability_true"].is_number() && close(0.5, a["probability_true"].get<double>());
    for (auto it = a.begin(); it != a.end(); ++it) {
      if (!b.contains(it.key())) return false;
      if (it.key() == "label" && label_ties && b["label"].is_boolean() && it.value().is_boolean()) continue;
      if (!agree(it.value(), b[it.key()])) return false;
    }
    return true;
  }

  bool agree(const nlohmann::json& a, const nlohmann::json& b) const {
    if (a.is_number() && b.is_number()) return close(a.get<double>(), b.get<double>());
    if (a.type() != b.type() || a.size() != b.size()) return false;
    if (a.is_object()) return object(a, b);
    if (ranked(a) && ranked(b)) return ranking(a, b);
    if (a.is_array()) {
      for (size_t i = 0; i < a.size(); ++i)
        if (!agree(a[i], b[i])) return false;
      return true;
    }
    return a == b;
  }
};

}  // namespace

bool answers_agree(const nlohmann::json& a, const nlohmann::json& b, double tolerance) {
  return Agreement{tolerance}.agree(a, b);
}

}  // namespace vlmo::serve
