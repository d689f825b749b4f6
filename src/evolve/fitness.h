// Fitness of a candidate model: each task's score on a fixed slice of its items, combined as a
// weighted mean. exact_match: greedy decoding and exact string match (as `amalgam eval`);
// likelihood: the answer's mean per-token log-probability after the prompt (teacher forced),
// a smooth signal that guides a search better than accuracy at small budgets.
#pragma once

#include <string>
#include <vector>

#include "eval/runner.h"
#include "eval/task.h"
#include "evolve/config.h"
#include "infer/model.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::evolve {

struct TaskScore {
  std::string task;
  std::string metric;
  double value = 0;
};

class Evaluator {
 public:
  // Loads and tokenizes the tasks once.
  Evaluator(const std::vector<TaskSpec>& specs, const tokenizer::Tokenizer& tokenizer);

  std::vector<TaskScore> score(const infer::Model& model) const;
  // Weighted mean of the scores.
  double fitness(const std::vector<TaskScore>& scores) const;
  // Exact-match accuracy on the same items whatever the configured metric (summary tables).
  std::vector<TaskScore> accuracy(const infer::Model& model) const;
  size_t items() const;

 private:
  struct Prepared {
    TaskSpec spec;
    std::string name;
    std::vector<std::string> answers;
    std::vector<eval::GreedyRequest> generation;
    std::vector<eval::ScoreRequest> scoring;
  };
  double exact_match(const infer::Model& model, const Prepared& p) const;
  double likelihood(const infer::Model& model, const Prepared& p) const;

  const tokenizer::Tokenizer& tokenizer_;
  std::vector<Prepared> tasks_;
  mutable std::vector<int32_t> stop_ids_;
};

}  // namespace amalgam::evolve
