// amalgam eval MODEL-or-RECIPE --task T.json [--task U.json ...] [--limit N] [--json FILE]:
// scores a model directory, or a recipe merged in memory (nothing written), on generation,
// choice and perplexity tasks; prints task, metric, value, stderr and items/s.
// --proxy-expert E --proxy-anti A [--proxy-alpha X]: evaluates proxy tuning instead, MODEL's
// logits plus X * (E's - A's) at every step (infer/proxy.h); E and A may be recipes too.
#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/eval_options.h"
#include "core/fs.h"
#include "core/log.h"
#include "eval/model_source.h"
#include "eval/report.h"
#include "eval/suite.h"
#include "infer/matmul.h"
#include "infer/proxy.h"

namespace amalgam::cli {

namespace {

struct EvalCommandArgs {
  std::string model;
  std::string json;
  EvalArgs eval;
  std::string proxy_expert;
  std::string proxy_anti;
  float proxy_alpha = 1.0f;
};

void run_eval(const EvalCommandArgs& args) {
  apply_threads(args.eval);
  std::vector<eval::Task> tasks = load_tasks(args.eval);  // bad task files fail before merging
  eval::ModelLoader loader(static_cast<unsigned>(args.eval.threads));
  eval::LoadedModel m = loader.load(args.model);
  const tokenizer::Tokenizer& tok = m.require_tokenizer();
  eval::Suite suite(std::move(tasks), tok, m.stop_ids());
  const bool progress = core::verbosity() >= core::Verbosity::kNormal;
  std::vector<eval::TaskResult> results;
  if (args.proxy_expert.empty()) {
    results = suite.run(*m.model, tok, run_options(args.eval), progress);
  } else {
    eval::LoadedModel expert = loader.load(args.proxy_expert);
    eval::LoadedModel anti = loader.load(args.proxy_anti);
    infer::ProxyLogits proxy(*m.model, *expert.model, *anti.model, args.proxy_alpha);
    results = suite.run(proxy, tok, run_options(args.eval), progress);
  }
  fmt::print("{}", eval::format_table(results));
  if (!args.json.empty()) {
    nlohmann::ordered_json settings{{"tasks", args.eval.tasks},
                                    {"limit", args.eval.limit},
                                    {"threads", infer::num_threads()},
                                    {"packed", !args.eval.one_by_one},
                                    {"token_budget", args.eval.token_budget}};
    if (!args.proxy_expert.empty()) {
      settings["proxy"] = {
          {"expert", args.proxy_expert}, {"anti", args.proxy_anti}, {"alpha", args.proxy_alpha}};
    }
    core::write_file_atomic(args.json,
                            eval::results_json(args.model, settings, results).dump(1) + "\n");
    core::info("wrote {}", args.json);
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto args = std::make_shared<EvalCommandArgs>();
  auto* cmd = app.add_subcommand(
      "eval",
      "Evaluate a model, or a recipe merged in memory, on generation/choice/perplexity tasks");
  cmd->add_option("model", args->model,
                  "Model directory, .safetensors/.gguf file, BASE+LORA, or a merge recipe (.yaml)")
      ->required();
  cmd->add_option("--json", args->json, "Also write the results with per-item outputs to FILE");
  auto* expert = cmd->add_option("--proxy-expert", args->proxy_expert,
                                 "Proxy tuning: small tuned model (or recipe) whose logits, minus "
                                 "the anti-expert's, are added to MODEL's");
  auto* anti = cmd->add_option("--proxy-anti", args->proxy_anti,
                               "Proxy tuning: small untuned model (the expert's base)");
  expert->needs(anti);
  anti->needs(expert);
  cmd->add_option("--proxy-alpha", args->proxy_alpha,
                  "Proxy tuning: scale of (expert - anti) logits (default 1)")
      ->needs(expert);
  add_eval_options(*cmd, args->eval);
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace amalgam::cli
