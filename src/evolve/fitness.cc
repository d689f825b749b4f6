#include "evolve/fitness.h"

#include <fmt/format.h>

#include "core/error.h"
#include "eval/evaluate.h"

namespace amalgam::evolve {

Evaluator::Evaluator(const std::vector<TaskSpec>& specs, const tokenizer::Tokenizer& tokenizer)
    : tokenizer_(tokenizer) {
  for (const auto& spec : specs) {
    eval::Task task = eval::load_task(spec.file);
    if (task.kind != eval::TaskKind::kGeneration) {
      fail(
          "{}: recipe search scores generation tasks ({{prompt, answer}} items); this is a {} "
          "task",
          spec.file.string(), eval::task_kind_name(task.kind));
    }
    if (spec.offset + spec.limit > task.generation.size()) {
      fail("{}: items [{}, {}) asked for, but the task has {} items", spec.file.string(),
           spec.offset, spec.offset + spec.limit, task.generation.size());
    }
    Prepared p;
    p.spec = spec;
    p.name = task.name;
    for (size_t i = spec.offset; i < spec.offset + spec.limit; ++i) {
      const eval::GenerationItem& item = task.generation[i];
      const std::string where = fmt::format("{}: item {}", spec.file.string(), i);
      eval::GreedyRequest g;
      g.prompt = tokenizer.encode(item.prompt, true);
      const std::vector<int32_t> answer = tokenizer.encode(item.answer, false);
      AMALGAM_CHECK(!g.prompt.empty() && !answer.empty(), "{}: empty prompt or answer", where);
      g.max_new_tokens = static_cast<int64_t>(answer.size()) + 2;
      p.generation.push_back(std::move(g));
      // The answer's tokens as they follow the prompt in the whole text.
      eval::ScoreRequest s;
      s.context = tokenizer.encode(item.prompt, true);
      const std::vector<int32_t> whole = tokenizer.encode(item.prompt + item.answer, true);
      const bool prefix = whole.size() > s.context.size() &&
                          std::equal(s.context.begin(), s.context.end(), whole.begin());
      s.continuation =
          prefix ? std::vector<int32_t>(whole.begin() + s.context.size(), whole.end()) : answer;
      p.scoring.push_back(std::move(s));
      p.answers.push_back(item.answer);
    }
    tasks_.push_back(std::move(p));
  }
}

size_t Evaluator::items() const {
  size_t n = 0;
  for (const auto& t : tasks_) n += t.spec.limit;
  return n;
}

double Evaluator::exact_match(const infer::Model& model, const Prepared& p) const {
  if (stop_ids_.empty()) stop_ids_ = eval::stop_ids(model, tokenizer_);
  const auto outputs = eval::greedy_decode(model, p.generation, stop_ids_);
  size_t correct = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    correct += tokenizer_.decode(outputs[i].ids) == p.answers[i];
  }
  return static_cast<double>(correct) / static_cast<double>(outputs.size());
}

double Evaluator::likelihood(const infer::Model& model, const Prepared& p) const {
  const auto scores = eval::score_continuations(model, p.scoring);
  double sum = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    sum += scores[i].logprob / static_cast<double>(p.scoring[i].continuation.size());
  }
  return sum / static_cast<double>(scores.size());
}

std::vector<TaskScore> Evaluator::score(const infer::Model& model) const {
  std::vector<TaskScore> out;
  for (const auto& t : tasks_) {
    const bool em = t.spec.metric == Metric::kExactMatch;
    out.push_back({t.name, std::string(metric_name(t.spec.metric)),
                   em ? exact_match(model, t) : likelihood(model, t)});
  }
  return out;
}

std::vector<TaskScore> Evaluator::accuracy(const infer::Model& model) const {
  std::vector<TaskScore> out;
  for (const auto& t : tasks_) out.push_back({t.name, "exact_match", exact_match(model, t)});
  return out;
}

double Evaluator::fitness(const std::vector<TaskScore>& scores) const {
  double sum = 0, weights = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    sum += tasks_[i].spec.weight * scores[i].value;
    weights += tasks_[i].spec.weight;
  }
  return weights != 0 ? sum / weights : 0;
}

}  // namespace amalgam::evolve
