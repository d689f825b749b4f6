// Per-candidate merge cost of the recipe search (src/evolve/resident.h): how long the resident
// in-memory model takes to become a new candidate, for
//   ps       a DARE-TIES candidate (every tensor merged again: parameters change everywhere),
//   repeat   the same candidate again (every tensor reused),
//   path     a layer path without scales (every tensor aliases an input mapping),
//   scaled   a layer path with stream scales (only o_proj / down_proj merged).
// Models: a base and two fine-tunes, e.g. the zoo's (data/zoo or ../shared/zoo/mid) or the
// TinyLlama-shaped checkpoints of bench_merge (bench/.cache/merge/{base,a,b}).
//
//   bench_candidate BASE MODEL_A MODEL_B [--threads N] [--repeat N]
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <functional>

#include "core/error.h"
#include "evolve/config.h"
#include "evolve/genome.h"
#include "evolve/resident.h"
#include "merge/executor.h"
#include "recipe/recipe.h"

namespace {

namespace fs = std::filesystem;
using namespace amalgam;

std::string dare_recipe(const fs::path& base, const fs::path& a, const fs::path& b, double w) {
  return fmt::format(
      "merge_method: dare_ties\nbase_model: \"{}\"\nparameters: {{normalize: true}}\nmodels:\n"
      "  - {{model: \"{}\", parameters: {{weight: {}, density: 0.5}}}}\n"
      "  - {{model: \"{}\", parameters: {{weight: {}, density: 0.7}}}}\n",
      base.string(), a.string(), w, b.string(), 1 - w);
}

int run(fs::path base, fs::path a, fs::path b, unsigned threads, int repeat) {
  base = fs::absolute(base);
  a = fs::absolute(a);
  b = fs::absolute(b);
  merge::InputSet inputs;
  recipe::PlanOptions po;
  po.inputs = &inputs;
  evolve::ResidentModel resident(inputs, threads, 1);
  const int64_t layers = inputs.config(a).num_layers;
  evolve::EvolveConfig c;
  c.dfs.scales = true;
  evolve::DfsGenome genome(c, {{a, layers, "a"}, {b, layers, "b"}});
  std::vector<evolve::Hop> path, scaled;
  for (int64_t l = 0; l < layers; ++l) {
    path.push_back({static_cast<size_t>(l % 2), l, 1.0});
    scaled.push_back({static_cast<size_t>(l % 2), l, l == layers / 2 ? 0.8 : 1.0});
  }
  struct Case {
    std::string name;
    std::function<std::string(int)> recipe;
  };
  const std::vector<Case> cases = {
      {"ps (dare_ties, all tensors merged)",
       [&](int i) { return dare_recipe(base, a, b, 0.3 + 0.1 * i); }},
      {"repeat (same candidate: all reused)", [&](int) { return dare_recipe(base, a, b, 0.3); }},
      {"path (layer path: all aliased)", [&](int) { return genome.recipe_of(path); }},
      {"scaled path (o_proj/down_proj merged)",
       [&](int i) {
         auto p = scaled;
         p[static_cast<size_t>(layers / 2)].scale = 0.8 + 0.01 * i;
         return genome.recipe_of(p);
       }},
  };
  fmt::print(
      "| candidate | seconds (best of {}) | merged | reused | aliased |\n|---|---|---|---|---|\n",
      repeat);
  for (const auto& cs : cases) {
    double best = 1e300;
    evolve::UpdateStats stats;
    for (int i = 0; i < repeat; ++i) {
      if (cs.name.rfind("repeat", 0) == 0)
        resident.update(recipe::plan_from_yaml(cs.recipe(0), "c", po));
      const merge::Plan plan = recipe::plan_from_yaml(cs.recipe(i), "candidate", po);
      const auto t = std::chrono::steady_clock::now();
      resident.update(plan);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
      if (s < best) {
        best = s;
        stats = resident.last();
      }
    }
    fmt::print("| {} | {:.4f} | {} | {} | {} |\n", cs.name, best, stats.computed, stats.reused,
               stats.aliased);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Per-candidate merge cost of the recipe search"};
  fs::path base, a, b;
  unsigned threads = 0;
  int repeat = 3;
  app.add_option("BASE", base, "Base checkpoint")->required();
  app.add_option("MODEL_A", a, "First fine-tune")->required();
  app.add_option("MODEL_B", b, "Second fine-tune")->required();
  app.add_option("--threads", threads, "Merge threads (default: all cores)");
  app.add_option("--repeat", repeat, "Runs of each case (the best is kept)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    return run(base, a, b, threads, repeat);
  } catch (const amalgam::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
