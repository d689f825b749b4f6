// `amalgam evolve`: the recipe search loop. For each stage (PS, DFS, or PS then DFS over the PS
// result and the models) CMA-ES proposes genomes, each is decoded to a recipe, merged into the
// resident in-memory model and scored on the fitness tasks; the best recipe so far is also scored
// on the validation items, which never enter the fitness. The run directory is written as the
// search goes, each file by write-then-rename: log.jsonl (one line per candidate), best.yaml,
// fitness.svg, state.json (everything --resume needs), and at the end best/ and summary.json.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "evolve/comm.h"
#include "evolve/config.h"

namespace amalgam::evolve {

struct SearchOptions {
  std::filesystem::path run_dir;
  bool resume = false;
  unsigned merge_threads = 0;  // 0: every core
  bool write_best = true;      // merge the best recipe into run_dir/best at the end
  // Pause (state saved, resumable) after this many generations in this process; 0: no limit.
  int64_t pause_after_generations = 0;
};

struct SummaryRow {
  std::string name;
  std::string kind;  // "model", "baseline", "evolved"
  double fitness = 0;
  std::vector<double> accuracy;    // per fitness task, exact match on the fitness items
  std::vector<double> validation;  // per validation task
};

struct SearchResult {
  bool paused = false;  // stopped by pause_after_generations; continue with --resume
  double best_fitness = 0;
  std::string best_recipe;
  int64_t evaluations = 0;
  int64_t generations = 0;
  double seconds = 0;
  double merge_seconds = 0;  // of which merging candidates
  std::vector<SummaryRow> summary;
  std::vector<std::string> task_names, validation_names;
};

SearchResult run_search(const EvolveConfig& config, const SearchOptions& options, Comm& comm);

// The summary as a table (one row per model, baseline and the evolved recipe).
std::string summary_table(const SearchResult& result);

}  // namespace amalgam::evolve
