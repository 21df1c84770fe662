#include "vlmo/downstream_data.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "vlmo/error.h"
#include "vlmo/files.h"
#include "vlmo/json_lines.h"
#include "vlmo/safetensors.h"
#include "vlmo/vqa_answer.h"

namespace vlmo {
namespace {
nlohmann::json read_json(const std::string& path) {
  std::ifstream in = open_input(path, "JSON");
  try {
    nlohmann::json j;
    in >> j;
    return j;
  } catch (const std::exception& e) {
    throw Error(cat(path, ": not valid JSON (", e.what(), ")"));
  }
}
}  // namespace

std::vector<VqaQuestion> read_vqav2(const std::string& questions_json, const std::string& annotations_json) {
  const nlohmann::json q = read_json(questions_json);
  if (!q.is_object() || !q.contains("questions") || !q["questions"].is_array())
    throw Error(cat(questions_json, ": expected {\"questions\": [...]} (VQAv2 questions file)"));
  std::vector<VqaQuestion> out;
  std::map<int64_t, size_t> by_id;
  for (size_t i = 0; i < q["questions"].size(); ++i) {
    const auto& e = q["questions"][i];
    if (!e.is_object() || !e.contains("question_id") || !e["question_id"].is_number_integer() || !e.contains("image_id") ||
        !e["image_id"].is_number_integer() || !e.contains("question") || !e["question"].is_string())
      throw Error(cat(questions_json, ": questions[", i, "] needs integer question_id and image_id and a string question"));
    VqaQuestion v;
    v.question_id = e["question_id"].get<int64_t>();
    v.image_id = e["image_id"].get<int64_t>();
    v.question = e["question"].get<std::string>();
    by_id[v.question_id] = out.size();
    out.push_back(std::move(v));
  }
  if (annotations_json.empty()) return out;
  for (auto& ann : read_vqa_annotations(annotations_json)) {
    auto it = by_id.find(ann.question_id);
    if (it == by_id.end()) throw Error(cat(annotations_json, ": question_id ", ann.question_id, " is not in ", questions_json));
    VqaQuestion& v = out[it->second];
    v.multiple_choice_answer = std::move(ann.multiple_choice_answer);
    v.answers = std::move(ann.answers);
  }
  return out;
}

std::vector<VqaQuestion> read_vqa_annotations(const std::string& annotations_json) {
  const nlohmann::json a = read_json(annotations_json);
  if (!a.is_object() || !a.contains("annotations") || !a["annotations"].is_array())
    throw Error(cat(annotations_json, ": expected {\"annotations\": [...]} (VQAv2 annotations file)"));
  std::vector<VqaQuestion> out;
  for (size_t i = 0; i < a["annotations"].size(); ++i) {
    const auto& e = a["annotations"][i];
    const std::string where = cat(annotations_json, ": annotations[", i, "]");
    if (!e.is_object() || !e.contains("question_id") || !e["question_id"].is_number_integer() || !e.contains("answers") ||
        !e["answers"].is_array())
      throw Error(cat(where, ": needs an integer question_id and an answers list"));
    VqaQuestion v;
    v.question_id = e["question_id"].get<int64_t>();
    if (e.contains("image_id") && e["image_id"].is_number_integer()) v.image_id = e["image_id"].get<int64_t>();
    if (e.contains("multiple_choice_answer")) {
      if (!e["multiple_choice_answer"].is_string()) throw Error(cat(where, ": multiple_choice_answer is not a string"));
      v.multiple_choice_answer = e["multiple_choice_answer"].get<std::string>();
    }
    for (const auto& ans : e["answers"]) {
      if (!ans.is_object() || !ans.contains("answer") || !ans["answer"].is_string())
        throw Error(cat(where, ": an answer lacks a string \"answer\""));
      v.answers.push_back(ans["answer"].get<std::string>());
    }
    out.push_back(std::move(v));
  }
  return out;
}

void attach_coco_images(std::vector<VqaQuestion>& questions, const std::string& folder, const std::string& split) {
  for (auto& q : questions) q.image = coco_image_path(folder, split, q.image_id);
}

VqaValSplit split_vqa_val(const std::vector<VqaQuestion>& val, int rest_images) {
  std::vector<int64_t> order;
  std::unordered_map<int64_t, size_t> position;
  for (const auto& q : val)
    if (position.emplace(q.image_id, order.size()).second) order.push_back(q.image_id);
  const size_t first_rest = order.size() > static_cast<size_t>(std::max(0, rest_images)) ? order.size() - rest_images : 0;
  VqaValSplit out;
  for (const auto& q : val) (position[q.image_id] >= first_rest ? out.rest_val : out.trainable_val).push_back(q);
  return out;
}

std::string coco_image_path(const std::string& folder, const std::string& split, int64_t image_id) {
  char name[64];
  std::snprintf(name, sizeof name, "COCO_%s_%012lld.jpg", split.c_str(), static_cast<long long>(image_id));
  return folder + "/" + name;
}

std::vector<std::string> build_answer_vocab(const std::vector<VqaQuestion>& questions, int min_count) {
  std::vector<std::string> order;
  std::unordered_map<std::string, int> counts;
  for (const auto& q : questions) {
    if (q.multiple_choice_answer.empty()) continue;
    const std::string a = normalize_vqa_answer(q.multiple_choice_answer);
    if (counts[a]++ == 0) order.push_back(a);
  }
  std::vector<std::string> vocab;
  for (const auto& a : order)
    if (counts[a] >= min_count) vocab.push_back(a);
  return vocab;
}

SoftTargets vqa_soft_targets(const std::vector<std::string>& raw_answers,
                             const std::unordered_map<std::string, int64_t>& answer_to_label) {
  std::vector<std::string> order;
  std::unordered_map<std::string, int> counts;
  for (const auto& a : raw_answers)
    if (counts[a]++ == 0) order.push_back(a);
  SoftTargets t;
  for (const auto& a : order) {
    auto it = answer_to_label.find(a);
    if (it == answer_to_label.end()) continue;
    t.labels.push_back(it->second);
    t.scores.push_back(vqa_soft_score(counts[a]));
  }
  return t;
}

std::unordered_map<std::string, int64_t> answer_labels(const std::vector<std::string>& answers) {
  std::unordered_map<std::string, int64_t> label;
  for (size_t i = 0; i < answers.size(); ++i) label[answers[i]] = static_cast<int64_t>(i);
  return label;
}

void write_vqa_submission(const std::string& path, const std::vector<std::pair<int64_t, std::string>>& answers) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [id, a] : answers) j.push_back({{"question_id", id}, {"answer", a}});
  write_file_atomic(path, j.dump() + "\n");
}

std::vector<Nlvr2Example> read_nlvr2(const std::string& jsonl, const std::string& image_root, const std::string& split) {
  std::vector<Nlvr2Example> out;
  for (const auto& [n, j] : read_json_lines(jsonl)) {
    for (const char* f : {"identifier", "sentence", "label"})
      if (!j.contains(f) || !j[f].is_string()) throw Error(cat(jsonl, ":", n, ": expected a string field \"", f, "\""));
    Nlvr2Example e;
    e.identifier = j["identifier"].get<std::string>();
    e.sentence = j["sentence"].get<std::string>();
    const std::string label = j["label"].get<std::string>();
    if (label != "True" && label != "False")
      throw Error(cat(jsonl, ":", n, ": label must be \"True\" or \"False\", got \"", label, "\""));
    e.label = label == "True";
    const size_t dash = e.identifier.rfind('-');
    if (dash == std::string::npos) throw Error(cat(jsonl, ":", n, ": identifier \"", e.identifier, "\" has no sentence index"));
    std::string dir = image_root + "/" + split;
    if (j.contains("directory"))
      dir += "/" + (j["directory"].is_string() ? j["directory"].get<std::string>() : j["directory"].dump());
    const std::string base = dir + "/" + e.identifier.substr(0, dash);
    e.image0 = base + "-img0.png";
    e.image1 = base + "-img1.png";
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace vlmo
