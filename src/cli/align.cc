// amalgam align A B -o B_ALIGNED: permutes B's hidden units to line up with A's without changing
// what B computes (Git Re-Basin; src/align). --method weight (data-free coordinate descent) or
// activation (the engine's activations on --data text).
#include <fmt/format.h>

#include <chrono>

#include "align/activation_matching.h"
#include "align/activations.h"
#include "align/params.h"
#include "align/permutation.h"
#include "align/weight_matching.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"

namespace amalgam::cli {

namespace {

struct AlignOptions {
  std::string a, b, out, method = "weight", data;
  int64_t rows = 32, row_tokens = 128, max_rounds = 100;
  uint64_t seed = 0;
  bool force = false;
};

void run_align(const AlignOptions& opt) {
  if (opt.method != "weight" && opt.method != "activation") {
    fail("align: --method must be weight or activation, got '{}'", opt.method);
  }
  if (opt.method == "activation" && opt.data.empty()) {
    fail("align: --method activation needs --data TEXT (calibration text)");
  }
  const auto start = std::chrono::steady_clock::now();
  const align::LlamaParams a = align::load_llama(opt.a);
  const align::LlamaParams b = align::load_llama(opt.b);
  align::check_same_shape(a, b);
  align::ModelPermutation p;
  if (opt.method == "weight") {
    align::WeightMatchingOptions wm;
    wm.max_rounds = opt.max_rounds;
    wm.seed = opt.seed;
    align::MatchingStats stats;
    p = align::weight_matching(a, b, wm, &stats);
    core::info("weight matching: {} rounds, <A, B> {:.4f} -> {:.4f}", stats.rounds,
               stats.objective_before, stats.objective_after);
  } else {
    const auto rows = align::calibration_rows(opt.data, a.dir, opt.rows, opt.row_tokens);
    p = align::activation_matching(a, b, rows, {}).permutation;
    core::info("activation matching: <A, B> {:.4f} -> {:.4f}",
               align::weight_objective(a, b, align::identity_permutation(a)),
               align::weight_objective(a, b, p));
  }
  align::save_llama(align::apply_permutation(b, p), opt.out, opt.force);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  core::info("wrote {} ({:.1f} s)", opt.out, seconds);
}

}  // namespace

void register_align(CLI::App& app) {
  auto opt = std::make_shared<AlignOptions>();
  auto* cmd = app.add_subcommand(
      "align", "Permute B's hidden units to line up with A's (same function, new unit order)");
  cmd->add_option("a", opt->a, "Reference model directory")->required();
  cmd->add_option("b", opt->b, "Model to permute")->required();
  cmd->add_option("-o,--out", opt->out, "Output model directory (B aligned)")->required();
  cmd->add_option("--method", opt->method, "weight (data-free, default) | activation");
  cmd->add_option("--data", opt->data, "Calibration text for --method activation");
  cmd->add_option("--rows", opt->rows, "Calibration rows (default 32)");
  cmd->add_option("--row-tokens", opt->row_tokens, "Tokens per calibration row (default 128)");
  cmd->add_option("--max-rounds", opt->max_rounds, "Weight matching: most rounds (default 100)");
  cmd->add_option("--seed", opt->seed, "Weight matching: seed of the group order (default 0)");
  cmd->add_flag("-f,--force", opt->force, "Replace an existing output directory");
  cmd->callback([opt] { run_align(*opt); });
}

}  // namespace amalgam::cli
