// The configuration of `amalgam evolve` (docs/evolve.md): which models, which search space
// (parameter space, data-flow space or both), the fitness tasks, the validation items, the
// budget. Parsed from YAML with the recipe layer's error style (file:line:col, did-you-mean).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace amalgam::evolve {

enum class Search { kParameterSpace, kDataFlow, kBoth };
enum class Metric { kExactMatch, kLikelihood };

std::string_view search_name(Search s);
std::string_view metric_name(Metric m);

struct TaskSpec {
  std::filesystem::path file;
  size_t offset = 0;    // first item used
  size_t limit = 40;    // items used
  double weight = 1.0;  // in the weighted mean
  Metric metric = Metric::kExactMatch;
};

struct DfsSpec {
  int64_t repeats = 3;  // r: every layer of every model appears r times among the slots
  bool scales = true;   // evolve a scale per layer transition (W[i, j] of the paper)
};

struct EvolveConfig {
  std::filesystem::path source;  // the config file (relative paths resolve against its folder)
  std::optional<std::filesystem::path> base_model;
  std::vector<std::filesystem::path> models;
  Search search = Search::kParameterSpace;
  std::string method = "dare_ties";
  std::optional<int64_t> layer_groups;  // nullopt: one group per layer
  std::vector<std::string> filters;
  std::map<std::string, double> parameters;  // fixed method parameters (normalize, lambda, ...)
  std::map<std::string, std::pair<double, double>> ranges;  // search box per gene kind
  DfsSpec dfs;
  std::vector<TaskSpec> tasks;
  std::vector<TaskSpec> validation;
  std::vector<std::filesystem::path> baselines;  // hand-made recipes scored in the summary
  int64_t max_evaluations = 300;
  std::optional<double> max_minutes;
  std::optional<int64_t> population;
  std::optional<double> sigma0;
  uint64_t seed = 1;
  std::string text;  // the YAML as given
};

EvolveConfig parse_config(const std::string& yaml_text, const std::filesystem::path& source);
EvolveConfig load_config(const std::filesystem::path& path);

}  // namespace amalgam::evolve
