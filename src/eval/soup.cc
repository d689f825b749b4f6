#include "eval/soup.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "merge/average.h"

namespace amalgam::eval {

merge::Plan soup_plan(const std::vector<std::filesystem::path>& checkpoints,
                      merge::InputSet& inputs, std::optional<tensor::DType> out_dtype) {
  merge::AverageOptions options;
  options.method = merge::AverageMethod::kUniform;
  options.out_dtype = out_dtype;
  return merge::average_plan(checkpoints, inputs, options);
}

SoupResult make_soup(const std::vector<std::filesystem::path>& checkpoints, const Suite& suite,
                     ModelLoader& loader, const SoupOptions& options,
                     const std::function<void(const SoupStep&)>& on_step) {
  AMALGAM_CHECK(!checkpoints.empty(), "a soup needs at least one checkpoint");
  auto evaluate = [&](const std::vector<size_t>& members, SoupStep& step) {
    std::vector<std::filesystem::path> paths;
    for (size_t i : members) paths.push_back(checkpoints[i]);
    const merge::Plan plan = soup_plan(paths, loader.inputs(), options.out_dtype);
    LoadedModel m = loader.from_plan(plan, "soup");
    step.ingredients = members;
    step.results = suite.run(*m.model, m.require_tokenizer(), options.run, false);
    step.score = Suite::score(step.results);
    return plan;
  };
  auto record = [&](SoupResult& result, SoupStep step) {
    if (on_step) on_step(step);
    result.steps.push_back(std::move(step));
  };

  SoupResult result;
  if (!options.greedy) {
    std::vector<size_t> all(checkpoints.size());
    std::iota(all.begin(), all.end(), size_t{0});
    SoupStep step;
    step.action = "uniform";
    result.plan = evaluate(all, step);
    result.ingredients = all;
    result.score = step.score;
    record(result, std::move(step));
    return result;
  }

  // Every ingredient alone (a one-model average: its own weights, in the soup's dtype).
  std::vector<double> own(checkpoints.size());
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    SoupStep step;
    step.action = "ingredient";
    step.candidate = i;
    evaluate({i}, step);
    own[i] = step.score;
    record(result, std::move(step));
  }
  std::vector<size_t> order(checkpoints.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return own[a] > own[b]; });

  result.ingredients = {order[0]};
  result.score = own[order[0]];
  {
    SoupStep step;
    step.action = "start";
    step.ingredients = result.ingredients;
    step.candidate = order[0];
    step.score = result.score;
    record(result, std::move(step));
  }
  for (size_t k = 1; k < order.size(); ++k) {
    std::vector<size_t> members = result.ingredients;
    members.push_back(order[k]);
    SoupStep step;
    step.candidate = order[k];
    evaluate(members, step);
    step.accepted = options.strict ? step.score > result.score : step.score >= result.score;
    step.action = step.accepted ? "add" : "skip";
    if (step.accepted) {
      result.ingredients = members;
      result.score = step.score;
    }
    record(result, std::move(step));
  }
  std::vector<std::filesystem::path> paths;
  for (size_t i : result.ingredients) paths.push_back(checkpoints[i]);
  result.plan = soup_plan(paths, loader.inputs(), options.out_dtype);
  return result;
}

}  // namespace amalgam::eval
