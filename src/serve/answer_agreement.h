// What `vlmo serve` promises about batching: a request answered in a batch with others gets the
// answer it gets alone, up to the last bits of the matrix products (a batch runs products of another
// shape, whose kernels block and sum differently; so do other CPUs and thread counts). Precisely,
// with tol(x) = 1e-4 x (1 + |x|):
//   - every number is within tol of the number alone;
//   - a ranked list (search "results" {id, score}, VQA "answers" {answer, probability}; descending)
//     has scores within tol position by position, and the same entries, except that entries whose
//     scores tie within tol may come in either order, and at the list's cut-off (top_k) an entry may
//     give its place to one that ties with it;
//   - a yes/no "label" beside a "probability_true" may differ only where that is within tol of 0.5;
//   - strings, flags and the shape of the answer are equal.
// The load test (vlmo_serve_load) and the server tests check exactly this.
#pragma once
#include <nlohmann/json.hpp>

namespace vlmo::serve {

constexpr double kAnswerTolerance = 1e-4;

// Whether `a` and `b` are the same answer up to what batching may change (above).
bool answers_agree(const nlohmann::json& a, const nlohmann::json& b, double tolerance = kAnswerTolerance);

}  // namespace vlmo::serve
