// VQA answers: the normalisation of the official evaluation (punctuation, number words, articles and
// contractions): what the evaluation compares and what the training data's answer vocabulary
// is built from, and the soft scores of the training targets. Text processing, so that data and evaluation both use it.
#pragma once
#include <string>

namespace vlmo {

// The official evaluation's processPunctuation followed by processDigitArticle (after the
// whitespace clean-up below).
std::string normalize_vqa_answer(const std::string& answer);
// Newlines and tabs to spaces, outer spaces removed (the evaluation's first step).
std::string clean_vqa_whitespace(std::string s);

// VQAv2 training target for an answer given by `count` of the ten humans: 0, .3, .6, .9, 1.
double vqa_soft_score(int count);

}  // namespace vlmo
