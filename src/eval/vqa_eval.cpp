#include "vlmo/vqa_eval.h"

#include <cctype>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "vlmo/error.h"
#include "vlmo/vqa_answer.h"

namespace vlmo {

double vqa_accuracy(const std::string& predicted, const std::vector<std::string>& human_answers) {
  if (human_answers.empty()) throw Error("vqa_accuracy: no human answers");
  std::vector<std::string> gt;
  for (const auto& a : human_answers) gt.push_back(clean_vqa_whitespace(a));
  std::string pred = clean_vqa_whitespace(predicted);
  if (std::set<std::string>(gt.begin(), gt.end()).size() > 1) {
    for (auto& a : gt) a = normalize_vqa_answer(a);
    pred = normalize_vqa_answer(pred);
  }
  double sum = 0;
  for (size_t i = 0; i < gt.size(); ++i) {
    int matching = 0;
    for (size_t j = 0; j < gt.size(); ++j)
      if (j != i && gt[j] == pred) ++matching;
    sum += std::min(1.0, matching / 3.0);
  }
  return sum / static_cast<double>(gt.size());
}

Nlvr2Score nlvr2_score(const std::vector<std::string>& ids, const std::vector<bool>& correct) {
  if (ids.size() != correct.size() || ids.empty()) throw Error("nlvr2_score: identifiers and results differ in number");
  std::map<std::string, bool> sentence_ok;
  double right = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    right += correct[i];
    // split-set-pair-sentence -> split-set-sentence
    std::vector<std::string> parts;
    std::stringstream ss(ids[i]);
    std::string p;
    while (std::getline(ss, p, '-')) parts.push_back(p);
    const std::string key = parts.size() == 4 ? parts[0] + "-" + parts[1] + "-" + parts[3] : ids[i];
    auto it = sentence_ok.find(key);
    sentence_ok[key] = (it == sentence_ok.end() ? true : it->second) && correct[i];
  }
  Nlvr2Score s;
  s.accuracy = right / static_cast<double>(ids.size());
  double consistent = 0;
  for (const auto& [k, ok] : sentence_ok) consistent += ok;
  s.consistency = consistent / static_cast<double>(sentence_ok.size());
  return s;
}

}  // namespace vlmo
