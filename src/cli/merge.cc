// amalgam merge RECIPE.yaml -o OUT (or mergekit's positional form: amalgam merge RECIPE OUT):
// a mergekit recipe, validated against headers before any weight is read, streamed into a new
// model directory.
#include <cstdio>

#include "cli/commands.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/fs.h"
#include "merge/executor.h"
#include "recipe/layer_swap.h"
#include "recipe/recipe.h"
#include "recipe/stages.h"

namespace amalgam::cli {

namespace {

struct MergeArgs {
  std::string recipe;
  std::string out_positional;
  std::string out;
  bool allow_crimes = false;
  uint64_t seed = 0;
  OutputArgs output;
  // Multi-stage recipes (several YAML documents).
  std::string final_stage;
  std::string intermediate_dir;
  bool keep_intermediates = false;
  bool print_expanded = false;
};

// Each stage is written like a single recipe's output; intermediates are ours to replace.
void run_stages(const MergeArgs& args, const std::string& text) {
  recipe::StageOptions options;
  options.plan.allow_crimes = args.allow_crimes;
  options.final_stage = args.final_stage;
  options.intermediate_dir = args.intermediate_dir;
  options.keep_intermediates = args.keep_intermediates;
  options.force = args.output.force;
  options.seed = args.seed;
  recipe::run_stages(
      text, args.recipe, args.out, options,
      [&](const merge::Plan& plan, const std::filesystem::path& out, bool intermediate) {
        OutputArgs output = args.output;
        output.force = output.force || intermediate;
        if (intermediate) {  // only the final stage goes to GGUF
          output.gguf.clear();
          output.gguf_only = false;
        }
        merge::InputSet inputs;
        run_write(plan, inputs, out.string(), output, args.seed);
      });
}

void run_merge(MergeArgs args) {
  if (args.print_expanded) {
    const std::string text = core::read_text_file(args.recipe);
    if (!recipe::is_layer_swap(text)) {
      fail(
          "{}: --print-expanded shows what a layer_swap recipe expands to; this recipe has no "
          "layer_swap key",
          args.recipe);
    }
    std::fputs(recipe::expand_layer_swap(text, args.recipe).c_str(), stdout);
    return;
  }
  if (!args.out_positional.empty()) {
    if (!args.out.empty() && args.out != args.out_positional) {
      fail("two output directories given ('{}' and -o '{}'); give one", args.out_positional,
           args.out);
    }
    args.out = args.out_positional;
  }
  if (args.out.empty() && args.output.gguf_only) args.out = args.output.gguf;  // unused
  if (args.out.empty()) fail("no output directory: add -o OUT (or OUT after the recipe)");
  const std::string text = core::read_text_file(args.recipe);
  if (recipe::is_multi_stage(text)) return run_stages(args, text);
  recipe::PlanOptions plan_options;
  plan_options.allow_crimes = args.allow_crimes;
  const merge::Plan plan = recipe::plan_from_file(args.recipe, plan_options);
  merge::InputSet inputs;
  run_write(plan, inputs, args.out, args.output, args.seed);
}

}  // namespace

void register_merge(CLI::App& app) {
  auto args = std::make_shared<MergeArgs>();
  auto* cmd = app.add_subcommand("merge", "Merge models with a mergekit YAML recipe");
  cmd->add_option("recipe", args->recipe, "Recipe (mergekit YAML)")->required();
  cmd->add_option("out_dir", args->out_positional, "Output model directory (or -o)");
  cmd->add_option("-o,--out", args->out, "Output model directory");
  cmd->add_flag("--allow-crimes", args->allow_crimes, "Allow mixing model architectures");
  cmd->add_option("--random-seed", args->seed, "Seed for random methods (DARE, ...)");
  cmd->add_option("--final", args->final_stage,
                  "Multi-stage recipe: the stage to write to the output (default: the unnamed "
                  "document, else the last)");
  cmd->add_option("-I,--intermediate-dir", args->intermediate_dir,
                  "Multi-stage recipe: directory for intermediate stages (default: OUT.stages)");
  cmd->add_flag("--keep-intermediates", args->keep_intermediates,
                "Multi-stage recipe: keep the intermediate stages (re-runs skip unchanged ones)");
  cmd->add_flag("--print-expanded", args->print_expanded,
                "layer_swap recipe: print the slices recipe it expands to, and stop");
  add_output_options(*cmd, args->output);
  add_gguf_options(*cmd, args->output);
  cmd->callback([args] { run_merge(*args); });
}

}  // namespace amalgam::cli
