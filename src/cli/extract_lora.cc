// amalgam extract-lora --model FT --base BASE -o OUT [--rank R | --rank-by-energy F]: a PEFT LoRA
// adapter from the difference between a fine-tune and its base (mergekit-extract-lora; its
// option names are accepted too). BASE+OUT in a recipe applies it back.
#include "merge/extract_lora.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "cli/commands.h"
#include "cli/options.h"
#include "core/log.h"
#include "core/progress.h"

namespace amalgam::cli {

namespace {

struct ExtractArgs {
  std::string model;
  std::string base;
  std::string out;
  std::optional<int64_t> rank;
  std::optional<double> energy;
  double sv_epsilon = 0;
  bool no_distribute_scale = false;
  bool embed_lora = false;
  bool skip_undecomposable = false;
  std::vector<std::string> include, exclude;
  std::string dtype;
  unsigned threads = 0;
  bool force = false;
  bool quiet = false;
};

void run_extract(const ExtractArgs& args) {
  if (args.quiet) core::set_verbosity(core::Verbosity::kQuiet);
  merge::ExtractLoraOptions options;
  options.max_rank = args.rank;
  options.energy = args.energy;
  options.sv_epsilon = args.sv_epsilon;
  options.distribute_scale = !args.no_distribute_scale;
  options.embed_lora = args.embed_lora;
  options.skip_undecomposable = args.skip_undecomposable;
  options.include_regex = args.include;
  options.exclude_regex = args.exclude;
  if (!args.dtype.empty()) options.dtype = parse_out_dtype(args.dtype);
  options.threads = args.threads;
  options.force = args.force;
  options.progress = core::verbosity() != core::Verbosity::kQuiet;
  const merge::ExtractLoraStats stats =
      merge::extract_lora(args.model, args.base, args.out, options);

  double min_energy = 1, mean_energy = 0;
  int64_t rank_sum = 0;
  for (const auto& m : stats.modules) {
    min_energy = std::min(min_energy, m.kept_energy);
    mean_energy += m.kept_energy;
    rank_sum += m.rank;
    core::debug("{}: rank {} of {}, energy kept {:.6f}", m.module, m.rank, m.full_rank,
                m.kept_energy);
  }
  if (!stats.modules.empty()) mean_energy /= static_cast<double>(stats.modules.size());
  core::info(
      "{}: {} modules factored (rank {} max, {:.1f} mean; energy kept {:.4f} mean, {:.4f} min), "
      "{} tensors saved whole, {} bias updates, {} unchanged; {} in {:.1f} s",
      args.out, stats.modules.size(), stats.max_rank,
      stats.modules.empty() ? 0.0 : static_cast<double>(rank_sum) / stats.modules.size(),
      mean_energy, min_energy, stats.saved_whole, stats.bias_updates, stats.unchanged,
      core::human_bytes(static_cast<double>(stats.bytes_written)), stats.seconds);
}

}  // namespace

void register_extract_lora(CLI::App& app) {
  auto args = std::make_shared<ExtractArgs>();
  auto* cmd = app.add_subcommand(
      "extract-lora", "Extract a PEFT LoRA adapter from a fine-tune and its base (truncated SVD)");
  cmd->add_option("--model", args->model, "Fine-tuned model directory")->required();
  cmd->add_option("--base,--base-model", args->base, "Base model directory")->required();
  cmd->add_option("-o,--out,--out-path", args->out, "Output adapter directory")->required();
  cmd->add_option("--rank,--max-rank", args->rank,
                  "Rank per module, at most (default 128; no cap with --rank-by-energy)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--rank-by-energy", args->energy,
                  "Per module, the smallest rank keeping this fraction of sum(S^2), e.g. 0.9");
  cmd->add_option("--sv-epsilon", args->sv_epsilon, "Also drop singular values <= this");
  cmd->add_flag("--no-distribute-scale", args->no_distribute_scale,
                "A = S V^T, B = U (default: sqrt(S) on both sides)");
  cmd->add_flag("--embed-lora", args->embed_lora,
                "Factor embeddings and the output head too (default: saved whole)");
  cmd->add_flag("--skip-undecomposable", args->skip_undecomposable,
                "Leave out norms and other non-linear tensors (default: saved whole)");
  cmd->add_option("-i,--include-regex", args->include,
                  "Factor only modules whose name matches (repeatable)");
  cmd->add_option("-e,--exclude-regex", args->exclude,
                  "Leave out modules whose name matches (repeatable)");
  cmd->add_option("--dtype", args->dtype,
                  "Adapter dtype: float32 | bfloat16 | float16 (default: the fine-tune's)");
  cmd->add_option("--threads", args->threads, "Worker threads (default: one per core)");
  cmd->add_flag("--force", args->force, "Replace an existing output directory");
  cmd->add_flag("-q,--quiet", args->quiet, "No progress bar or summary");
  cmd->callback([args] { run_extract(*args); });
}

}  // namespace amalgam::cli
