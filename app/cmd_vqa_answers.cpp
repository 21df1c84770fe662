// vlmo vqa-answers: the official VQAv2 answer vocabulary (reference §4) from the annotation files.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "vlmo/downstream_data.h"
#include "vlmo/error.h"
#include "vlmo/safetensors.h"

namespace vlmo::cli {
namespace {

int run_vqa_answers(const Args& a) {
  if (a.get("out").empty()) throw Error("--out ANSWERS.json is required");
  std::vector<std::string> files = a.positional;
  if (!a.get("annotations").empty()) files.insert(files.begin(), a.get("annotations"));
  if (files.empty()) throw Error("give the annotation files: --annotations TRAIN_ANNOTATIONS.json VAL_ANNOTATIONS.json");
  std::vector<VqaQuestion> all;
  for (const auto& f : files) {
    auto qs = read_vqa_annotations(f);
    std::cerr << f << ": " << qs.size() << " questions\n";
    all.insert(all.end(), qs.begin(), qs.end());
  }
  const auto answers = build_answer_vocab(all, a.get_int("min-count"));
  if (answers.empty()) throw Error(cat("no answer occurs at least ", a.get("min-count"), " times"));
  write_file_atomic(a.get("out"), nlohmann::json(answers).dump() + "\n");
  std::cout << "wrote " << answers.size() << " answers (label order) to " << a.get("out") << "\n";
  return 0;
}

}  // namespace

Command vqa_answers_command() {
  Command c{"vqa-answers",
            "Build the official VQAv2 answer list: each question's multiple_choice_answer normalised, counted over "
            "the given annotation files (train2014 + val2014), kept when it occurs --min-count times, in order of "
            "first occurrence (3129 answers on VQAv2). Writes a JSON array of strings in label order.",
            "vlmo vqa-answers --annotations TRAIN_ANNOTATIONS.json [VAL_ANNOTATIONS.json ...] --out answers.json"};
  c.options = {{"annotations", "", "first annotation file (more may follow as arguments)"},
               {"out", "", "answer list to write (JSON array)"},
               integer_option("min-count", "9", "keep answers that occur at least this often", 1)};
  c.max_positional = 64;
  c.run = run_vqa_answers;
  return c;
}

}  // namespace vlmo::cli
