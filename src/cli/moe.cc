// amalgam moe CONFIG.yaml -o OUT: a Mixtral MoE (or a Qwen2-MoE, with a shared expert) from dense
// experts with mergekit-moe's config (gate_mode hidden / cheap_embed / random / uniform_random,
// and calibrated).
#include <cmath>

#include "cli/commands.h"
#include "cli/model_args.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/progress.h"
#include "io/safetensors_writer.h"
#include "moe/build.h"

namespace amalgam::cli {

namespace {

struct MoeArgs {
  std::string config;
  std::string out_positional;
  std::string out;
  bool fused = false;
  bool force = false;
  bool allow_same_model = false;
  uint64_t seed = 0;
  std::string shard_size = "5B";
  int threads = 0;
};

void run_moe(MoeArgs args) {
  if (!args.out_positional.empty()) {
    if (!args.out.empty() && args.out != args.out_positional) {
      fail("two output directories given ('{}' and -o '{}'); give one", args.out_positional,
           args.out);
    }
    args.out = args.out_positional;
  }
  if (args.out.empty()) fail("no output directory: add -o OUT");
  apply_threads(args.threads);
  moe::BuildOptions options;
  options.fused = args.fused;
  options.force = args.force;
  options.allow_same_model = args.allow_same_model;
  options.seed = args.seed;
  options.max_shard_bytes = io::parse_size(args.shard_size);
  options.config_text = core::read_text_file(args.config);
  const moe::MoeConfig config = moe::parse_moe_config(options.config_text, args.config);
  const moe::BuildReport report = moe::build_moe(config, args.out, options);
  if (!report.calibration.empty()) {
    core::info("calibrated routers (top-1 token accuracy):");
    core::info("  layer  train tokens  train acc  held-out tokens  held-out acc  iterations");
    for (const auto& r : report.calibration) {
      core::info("  {:5}  {:12}  {:9.3f}  {:15}  {:>12}  {:10}", r.layer, r.train_tokens,
                 r.train_accuracy, r.heldout_tokens,
                 std::isnan(r.heldout_accuracy) ? std::string("-")
                                                : fmt::format("{:.3f}", r.heldout_accuracy),
                 r.iterations);
    }
  }
  const bool qwen = moe::output_arch(config) == moe::OutputArch::kQwen2Moe;
  core::info("{}: {} MoE, {} experts{}{}, {} per token, gate_mode {}{}, {} of weights", args.out,
             qwen ? "Qwen2" : "Mixtral", config.experts.size(),
             config.calibration.bos_expert.empty() ? "" : " + 1 BOS mix", qwen ? " + 1 shared" : "",
             config.experts_per_token, moe::gate_mode_name(config.gate_mode),
             args.fused ? ", fused layout" : "",
             core::human_bytes(static_cast<double>(report.weight_bytes)));
}

}  // namespace

void register_moe(CLI::App& app) {
  auto args = std::make_shared<MoeArgs>();
  auto* cmd = app.add_subcommand(
      "moe",
      "Build a Mixtral (or, with a shared expert, Qwen2-MoE) mixture of experts from dense models "
      "(mergekit-moe config)");
  cmd->add_option("config", args->config, "MoE config (mergekit-moe YAML)")->required();
  cmd->add_option("out_dir", args->out_positional, "Output model directory (or -o)");
  cmd->add_option("-o,--out", args->out, "Output model directory");
  cmd->add_flag("--fused", args->fused,
                "Experts in the transformers-5 fused layout (default: one tensor per expert, "
                "as transformers 4 and llama.cpp read)");
  cmd->add_flag("--force", args->force, "Replace an existing output directory");
  cmd->add_flag("--i-understand-this-is-not-useful-without-training", args->allow_same_model,
                "Allow every expert to be the same model");
  cmd->add_option("--random-seed", args->seed, "Seed for random gates and noise_scale");
  cmd->add_option("--out-shard-size", args->shard_size, "Shard size (e.g. 5B, 500M)");
  add_threads_option(cmd, args->threads);
  cmd->callback([args] { run_moe(*args); });
}

}  // namespace amalgam::cli
