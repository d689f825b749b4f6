// amalgam soup CKPT... --task T.json [--greedy] [-o OUT]: uniform or greedy model soup of
// fine-tuned checkpoints, every candidate averaged in memory and scored on the tasks; prints each
// step; -o writes the final soup as a checkpoint.
#include "eval/soup.h"

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/eval_options.h"
#include "cli/options.h"
#include "core/log.h"
#include "eval/report.h"

namespace amalgam::cli {

namespace {

struct SoupArgs {
  std::vector<std::string> checkpoints;
  std::string out;
  bool greedy = false;
  bool strict = false;
  bool force = false;
  std::string out_dtype;
  EvalArgs eval;
};

std::string names(const std::vector<std::string>& checkpoints, const std::vector<size_t>& idx) {
  std::string s;
  for (size_t i : idx) s += (s.empty() ? "" : ", ") + checkpoints[i];
  return "{" + s + "}";
}

void run_soup(const SoupArgs& args) {
  apply_threads(args.eval);
  std::vector<eval::Task> tasks = load_tasks(args.eval);
  eval::ModelLoader loader(static_cast<unsigned>(args.eval.threads));
  std::vector<std::filesystem::path> paths(args.checkpoints.begin(), args.checkpoints.end());
  // The tasks are tokenized once, with the first ingredient's tokenizer.
  eval::LoadedModel first = loader.load(paths[0]);
  eval::Suite suite(std::move(tasks), first.require_tokenizer(), first.stop_ids());
  first.model.reset();

  eval::SoupOptions options;
  options.greedy = args.greedy;
  options.strict = args.strict;
  if (!args.out_dtype.empty()) options.out_dtype = parse_out_dtype(args.out_dtype);
  options.run = run_options(args.eval);
  double best = 0.0;
  auto print_step = [&](const eval::SoupStep& s) {
    const std::string& c = args.checkpoints[s.candidate];
    const std::string detail =
        s.results.empty() ? "" : fmt::format(" [{}]", eval::primary_summary(s.results));
    if (s.action == "uniform") {
      fmt::print("uniform soup of {}: score {:.4f}{}\n", names(args.checkpoints, s.ingredients),
                 s.score, detail);
    } else if (s.action == "ingredient") {
      fmt::print("ingredient {}: score {:.4f}{}\n", c, s.score, detail);
    } else if (s.action == "start") {
      fmt::print("start with {}: score {:.4f}\n", c, s.score);
      best = s.score;
    } else {
      fmt::print("{} {}: soup {} scores {:.4f} ({} {:.4f}){}\n", s.accepted ? "add " : "skip", c,
                 names(args.checkpoints, s.ingredients), s.score,
                 s.accepted ? (args.strict ? ">" : ">=") : (args.strict ? "<=" : "<"), best,
                 detail);
      if (s.accepted) best = s.score;
    }
    std::fflush(stdout);
  };
  eval::SoupResult soup = eval::make_soup(paths, suite, loader, options, print_step);
  fmt::print("soup: {} score {:.4f}\n", names(args.checkpoints, soup.ingredients), soup.score);
  std::fflush(stdout);
  if (!args.out.empty()) {
    OutputArgs output;
    output.threads = static_cast<unsigned>(args.eval.threads);
    output.force = args.force;
    run_write(soup.plan, loader.inputs(), args.out, output);
  }
}

}  // namespace

void register_soup(CLI::App& app) {
  auto args = std::make_shared<SoupArgs>();
  auto* cmd = app.add_subcommand(
      "soup", "Uniform or greedy model soup of fine-tuned checkpoints, scored on tasks in memory");
  cmd->add_option("checkpoints", args->checkpoints, "Checkpoint directories (ingredients)")
      ->required();
  cmd->add_option("-o,--out", args->out, "Write the final soup to this model directory");
  cmd->add_flag("--greedy", args->greedy,
                "Greedy soup: add ingredients in order of their own score while the score does "
                "not drop");
  cmd->add_flag("--strict", args->strict,
                "Greedy soup: add an ingredient only when the score strictly improves")
      ->needs("--greedy");
  cmd->add_option("--out-dtype", args->out_dtype,
                  "bfloat16 | float16 | float32 for the averaged tensors, evaluated and written "
                  "(default: the inputs' dtype)");
  cmd->add_flag("--force", args->force, "Replace an existing non-empty output directory");
  add_eval_options(*cmd, args->eval);
  cmd->callback([args] { run_soup(*args); });
}

}  // namespace amalgam::cli
