// amalgam average CKPT... -o OUT --method uniform|ema|lawa: checkpoint averaging along one run
// (SWA, EMA, LaWA), streamed like a linear merge.
#include "merge/average.h"

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/log.h"
#include "merge/finalize.h"

namespace amalgam::cli {

namespace {

struct AverageArgs {
  std::vector<std::string> checkpoints;
  std::string out;
  std::string method = "uniform";
  std::optional<double> decay;
  size_t last = 5;
  bool last_given = false;
  std::string out_dtype;
  OutputArgs output;
};

void run_average(const AverageArgs& args) {
  merge::AverageOptions options;
  options.method = merge::parse_average_method(args.method);
  // Options of another method would be silently ignored: refuse them instead.
  if (args.decay && args.method != "ema") fail("average: --decay applies to --method ema only");
  if (args.last_given && args.method != "lawa") {
    fail("average: --last applies to --method lawa only");
  }
  options.decay = args.decay;
  options.last = args.last;
  if (!args.out_dtype.empty()) options.out_dtype = parse_out_dtype(args.out_dtype);
  std::vector<std::filesystem::path> paths(args.checkpoints.begin(), args.checkpoints.end());
  merge::InputSet inputs;
  merge::Plan plan = merge::average_plan(paths, inputs, options);
  run_write(plan, inputs, args.out, args.output);
}

}  // namespace

void register_average(CLI::App& app) {
  auto args = std::make_shared<AverageArgs>();
  auto* cmd = app.add_subcommand(
      "average", "Average checkpoints of one training run: uniform (SWA), ema, lawa (latest k)");
  cmd->add_option("checkpoints", args->checkpoints, "Checkpoint directories, oldest first")
      ->required();
  cmd->add_option("-o,--out", args->out, "Output model directory")->required();
  cmd->add_option("--method", args->method, "uniform | ema | lawa")
      ->check(CLI::IsMember({"uniform", "swa", "ema", "lawa"}));
  cmd->add_option("--decay", args->decay,
                  "EMA: e_t = decay * e_{t-1} + (1 - decay) * x_t, over the checkpoints in order");
  cmd->add_option("--last", args->last, "LaWA: average the latest K checkpoints (default 5)");
  cmd->add_option("--out-dtype", args->out_dtype,
                  "bfloat16 | float16 | float32 (default: the inputs' dtype)");
  add_output_options(*cmd, args->output);
  cmd->callback([args, cmd] {
    args->last_given = cmd->count("--last") > 0;
    run_average(*args);
  });
}

}  // namespace amalgam::cli
