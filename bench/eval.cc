// Evaluation throughput on the zoo tasks: items/s of one-by-one evaluation (one prompt per
// forward pass) against packed evaluation (first-fit-decreasing prepacking + lock-step decoding),
// with 1 and 2 engine threads; plus the held-out perplexity rows and the cost of merging a recipe
// in memory (what every candidate of a recipe search pays before it is evaluated); and packed
// evaluation with BF16 products (the default for BF16 weights) against fp32 products.
//
//   bench_eval [MODEL] [--repeats N] [--threads a,b,...]
// Prints a Markdown table; each figure is the best of N runs (the machine may be shared).
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "eval/model_source.h"
#include "eval/suite.h"
#include "infer/gemm.h"
#include "infer/matmul.h"
#include "recipe/recipe.h"

namespace {

using namespace amalgam;
namespace fs = std::filesystem;

double best_seconds(int repeats, const std::function<void()>& run) {
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = AMALGAM_SOURCE_DIR;
  fs::path model_dir = root / "data/zoo/add-expert";
  int repeats = 5;
  std::vector<int> thread_counts = {1, 2};
  CLI::App app{"Evaluation throughput on the zoo tasks"};
  app.add_option("MODEL", model_dir, "Checkpoint to evaluate (default: the zoo's add expert)");
  app.add_option("--repeats", repeats, "Runs of each case (the best is kept)")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", thread_counts, "Engine thread counts to run, e.g. 1,2")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  eval::ModelLoader loader(1);
  eval::LoadedModel m = loader.load(model_dir);
  std::vector<eval::Task> gen_tasks;
  for (const char* name : {"add", "rev", "sort"}) {
    gen_tasks.push_back(eval::load_task(root / "data/zoo/eval" / (std::string(name) + ".json")));
    eval::limit_items(gen_tasks.back(), 60);
  }
  const auto stops = m.stop_ids();
  const tokenizer::Tokenizer& tok = *m.tokenizer;
  const eval::Suite generation(gen_tasks, tok, stops);
  const eval::Suite heldout({eval::load_task(root / "data/eval/zoo-heldout.json")}, tok, stops);
  size_t gen_items = 0;
  for (const auto& t : gen_tasks) gen_items += t.size();

  fmt::print("model: {} ({} layers, hidden {}), best of {} runs\n\n", model_dir.string(),
             m.model->num_layers(), m.model->hidden_size(), repeats);
  fmt::print("| workload | threads | one-by-one items/s | packed items/s | speed-up |\n");
  fmt::print("|---|---|---|---|---|\n");
  double base_gen = 0.0;
  for (int threads : thread_counts) {
    infer::set_num_threads(threads);
    eval::RunOptions one, packed;
    one.packed = false;
    const double t_one = best_seconds(repeats, [&] { generation.run(*m.model, tok, one, false); });
    const double t_packed =
        best_seconds(repeats, [&] { generation.run(*m.model, tok, packed, false); });
    if (base_gen == 0.0) base_gen = static_cast<double>(gen_items) / t_one;
    fmt::print(
        "| add+rev+sort, {} items | {} | {:.0f} | {:.0f} | {:.2f}x ({:.2f}x vs one-by-one, 1 "
        "thread) |\n",
        gen_items, threads, gen_items / t_one, gen_items / t_packed, t_one / t_packed,
        (gen_items / t_packed) / base_gen);
    const size_t rows = heldout.tasks()[0].size();
    const double p_one = best_seconds(repeats, [&] { heldout.run(*m.model, tok, one, false); });
    const double p_packed =
        best_seconds(repeats, [&] { heldout.run(*m.model, tok, packed, false); });
    fmt::print("| heldout, {} rows x 128 tokens | {} | {:.0f} | {:.0f} | {:.2f}x |\n", rows,
               threads, rows / p_one, rows / p_packed, p_one / p_packed);
  }

  // Packed evaluation with BF16 products against fp32 products, alternating within each repeat
  // so that both see the same machine load.
  {
    infer::set_num_threads(thread_counts.back());
    eval::RunOptions packed;
    double best[2][2] = {{1e300, 1e300}, {1e300, 1e300}};  // [bf16][gen/heldout]
    for (int r = 0; r < repeats; ++r) {
      for (int bf16 : {1, 0}) {
        infer::set_reduced_precision_products(bf16 == 1);
        best[bf16][0] = std::min(
            best[bf16][0], best_seconds(1, [&] { generation.run(*m.model, tok, packed, false); }));
        best[bf16][1] = std::min(
            best[bf16][1], best_seconds(1, [&] { heldout.run(*m.model, tok, packed, false); }));
      }
    }
    infer::set_reduced_precision_products(true);
    const double rows = static_cast<double>(heldout.tasks()[0].size());
    fmt::print("\n| products ({} threads, packed) | add+rev+sort items/s | heldout rows/s |\n",
               thread_counts.back());
    fmt::print("|---|---|---|\n");
    fmt::print("| fp32 | {:.0f} | {:.1f} |\n", gen_items / best[0][0], rows / best[0][1]);
    fmt::print("| BF16{} | {:.0f} ({:.2f}x) | {:.1f} ({:.2f}x) |\n",
               infer::reduced_precision_products() ? "" : " (no native BF16: fp32)",
               gen_items / best[1][0], best[0][0] / best[1][0], rows / best[1][1],
               best[0][1] / best[1][1]);
  }

  // A recipe merged in memory, inputs already open (as in a search over the same models).
  recipe::PlanOptions po;
  po.base_dir = root;
  const merge::Plan plan =
      recipe::plan_from_file(root / "data/recipes/zoo/task-arithmetic-add-rev-sort.yaml", po);
  infer::set_num_threads(thread_counts.back());
  eval::ModelLoader merge_loader(static_cast<unsigned>(thread_counts.back()));
  merge_loader.from_plan(plan, "warm-up");
  const double t_merge = best_seconds(repeats, [&] { merge_loader.from_plan(plan, "recipe"); });
  eval::RunOptions packed;
  const double t_both = best_seconds(repeats, [&] {
    eval::LoadedModel merged = merge_loader.from_plan(plan, "recipe");
    generation.run(*merged.model, *merged.tokenizer, packed, false);
  });
  fmt::print(
      "\nrecipe (task arithmetic of 3 experts) merged in memory: {:.1f} ms; merge + "
      "add/rev/sort packed: {:.1f} ms ({:.1f} recipes/s), {} threads\n",
      t_merge * 1e3, t_both * 1e3, 1.0 / t_both, thread_counts.back());
  return 0;
}
