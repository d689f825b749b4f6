#include "cli/eval_options.h"

#include "cli/model_args.h"
#include "infer/matmul.h"

namespace amalgam::cli {

void add_eval_options(CLI::App& cmd, EvalArgs& args) {
  cmd.add_option("-t,--task", args.tasks,
                 "Task file (JSON: generation, choice or perplexity; a text file: perplexity); "
                 "repeatable")
      ->required();
  cmd.add_option("--limit", args.limit, "Evaluate only the first N items of each task (N >= 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd.add_option("-j,--threads", args.threads, "Engine threads (default: every core)")
      ->check(CLI::Range(0, 1024));
  cmd.add_option("--token-budget", args.token_budget,
                 "Tokens per packed forward pass (default 1024)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  cmd.add_flag("--one-by-one", args.one_by_one,
               "Evaluate one prompt per forward pass (no packing; for comparison)");
  add_check_finite_option(&cmd);
}

std::vector<eval::Task> load_tasks(const EvalArgs& args) {
  std::vector<eval::Task> tasks;
  for (const auto& path : args.tasks) {
    tasks.push_back(eval::load_task(path));
    if (args.limit > 0) eval::limit_items(tasks.back(), args.limit);
  }
  return tasks;
}

eval::RunOptions run_options(const EvalArgs& args) {
  eval::RunOptions o;
  o.packed = !args.one_by_one;
  o.token_budget = args.token_budget;
  return o;
}

void apply_threads(const EvalArgs& args) {
  if (args.threads > 0) infer::set_num_threads(args.threads);
}

}  // namespace amalgam::cli
