// amalgam evolve CONFIG.yaml -o RUN_DIR [--resume] [--threads N]: evolutionary recipe search
// (parameter space, data-flow space, or both), candidates merged and scored in memory; under
// mpirun every rank evaluates a share of each generation.
#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/log.h"
#include "evolve/comm.h"
#include "evolve/config.h"
#include "evolve/search.h"
#include "infer/thread_pool.h"

namespace amalgam::cli {

namespace {

struct EvolveArgs {
  std::string config;
  std::string out;
  bool resume = false;
  int threads = 0;
  bool no_best = false;
  int64_t pause_after = 0;
};

void run_evolve(const EvolveArgs& args) {
  if (args.out.empty()) fail("no run directory: add -o RUN_DIR");
  const evolve::EvolveConfig config = evolve::load_config(args.config);
  apply_threads(args.threads);
  auto comm = evolve::make_comm(nullptr, nullptr);
  evolve::SearchOptions options;
  options.run_dir = args.out;
  options.resume = args.resume;
  options.merge_threads = static_cast<unsigned>(args.threads);
  options.write_best = !args.no_best;
  options.pause_after_generations = args.pause_after;
  const bool existed = std::filesystem::exists(args.out);
  evolve::SearchResult r;
  try {
    r = evolve::run_search(config, options, *comm);
  } catch (...) {
    // A search that failed before its first generation leaves no empty run directory behind.
    std::error_code ec;
    if (!existed && std::filesystem::is_empty(args.out, ec)) std::filesystem::remove(args.out, ec);
    throw;
  }
  if (comm->rank() != 0) return;
  if (r.paused) {
    core::info("paused after {} generation(s), {} evaluations; continue with --resume",
               r.generations, r.evaluations);
    return;
  }
  std::fputs(evolve::summary_table(r).c_str(), stdout);
  core::info(
      "{} evaluations in {:.1f} s ({:.1f}/min; merging {:.0f}% of the time); best recipe: {}",
      r.evaluations, r.seconds, r.seconds > 0 ? 60.0 * r.evaluations / r.seconds : 0.0,
      r.seconds > 0 ? 100.0 * r.merge_seconds / r.seconds : 0.0,
      (std::filesystem::path(args.out) / "best.yaml").string());
}

}  // namespace

void register_evolve(CLI::App& app) {
  auto args = std::make_shared<EvolveArgs>();
  auto* cmd = app.add_subcommand("evolve", "Evolutionary search for a merge recipe");
  cmd->add_option("config", args->config, "Search config (YAML, docs/evolve.md)")->required();
  cmd->add_option("-o,--out", args->out, "Run directory (log, best recipe, curves, state)");
  cmd->add_flag("--resume", args->resume, "Continue the search saved in the run directory");
  add_threads_option(cmd, args->threads);
  add_check_finite_option(cmd);
  cmd->add_flag("--no-best-model", args->no_best,
                "Do not merge the best recipe into RUN_DIR/best at the end");
  cmd->add_option("--pause-after", args->pause_after,
                  "Stop after N generations, resumable with --resume (0: run to the budget)");
  cmd->callback([args] { run_evolve(*args); });
}

}  // namespace amalgam::cli
