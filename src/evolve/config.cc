#include "evolve/config.h"

#include <algorithm>

#include "core/fs.h"
#include "core/yaml.h"
#include "merge/method.h"
#include "recipe/diagnostics.h"
#include "recipe/yaml_reader.h"

namespace amalgam::evolve {

namespace fs = std::filesystem;
using recipe::did_you_mean;
using recipe::fail_at;
using recipe::Location;

std::string_view search_name(Search s) {
  switch (s) {
    case Search::kParameterSpace:
      return "ps";
    case Search::kDataFlow:
      return "dfs";
    case Search::kBoth:
      return "ps+dfs";
  }
  return "?";
}

std::string_view metric_name(Metric m) {
  return m == Metric::kExactMatch ? "exact_match" : "likelihood";
}

namespace {

class Reader {
 public:
  explicit Reader(std::string where) : where_(std::move(where)) {}

  Location at(const yaml::Node& n) const { return {n.line(), n.column()}; }

  void keys(const yaml::Node& map, const std::vector<std::string>& known,
            const std::string& what) const {
    // Mapping, plain keys, none twice: the recipe reader's checks.
    for (const auto& e : recipe::YamlReader(where_).entries(map, what)) {
      if (std::find(known.begin(), known.end(), e.key) == known.end()) {
        fail_at(where_, e.at, "unknown key '{}' in {}{} (known: {})", e.key, what,
                did_you_mean(e.key, known), recipe::join(known));
      }
    }
  }

  std::string text(const yaml::Node& n, const std::string& key) const {
    if (!n.is_scalar()) fail_at(where_, at(n), "'{}' must be a single value", key);
    return n.scalar();
  }

  double number(const yaml::Node& n, const std::string& key) const {
    const std::string s = text(n, key);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) {
      fail_at(where_, at(n), "'{}' must be a number, got '{}'", key, s);
    }
    return v;
  }

  int64_t count(const yaml::Node& n, const std::string& key, int64_t min) const {
    const double v = number(n, key);
    if (v != std::floor(v) || v < static_cast<double>(min)) {
      fail_at(where_, at(n), "'{}' must be a whole number >= {}, got {}", key, min, v);
    }
    return static_cast<int64_t>(v);
  }

  bool flag(const yaml::Node& n, const std::string& key) const {
    const std::string s = text(n, key);
    if (s == "true" || s == "True" || s == "yes" || s == "1" || s == "1.0") return true;
    if (s == "false" || s == "False" || s == "no" || s == "0" || s == "0.0") return false;
    fail_at(where_, at(n), "'{}' must be true or false, got '{}'", key, s);
  }

  fs::path path(const yaml::Node& n, const std::string& key, const fs::path& dir) const {
    fs::path p = text(n, key);
    return p.is_relative() ? (dir / p).lexically_normal() : p;
  }

  TaskSpec task(const yaml::Node& n, const std::string& what, const fs::path& dir) const {
    keys(n, {"file", "offset", "limit", "weight", "metric"}, what);
    if (!n["file"]) fail_at(where_, at(n), "{} needs a 'file' (a task JSON file)", what);
    TaskSpec t;
    t.file = path(n["file"], "file", dir);
    if (n["offset"]) t.offset = static_cast<size_t>(count(n["offset"], "offset", 0));
    if (n["limit"]) t.limit = static_cast<size_t>(count(n["limit"], "limit", 1));
    if (n["weight"]) t.weight = number(n["weight"], "weight");
    if (n["metric"]) {
      const std::string m = text(n["metric"], "metric");
      if (m == "exact_match") {
        t.metric = Metric::kExactMatch;
      } else if (m == "likelihood") {
        t.metric = Metric::kLikelihood;
      } else {
        fail_at(where_, at(n["metric"]), "metric '{}' is not exact_match or likelihood{}", m,
                did_you_mean(m, {"exact_match", "likelihood"}));
      }
    }
    return t;
  }

  std::vector<TaskSpec> tasks(const yaml::Node& n, const std::string& key,
                              const fs::path& dir) const {
    if (!n.is_sequence() || n.size() == 0) {
      fail_at(where_, at(n), "'{}' must be a non-empty list of {{file: ..., limit: ...}}", key);
    }
    std::vector<TaskSpec> out;
    for (size_t i = 0; i < n.size(); ++i) {
      out.push_back(task(n[i], fmt::format("{}[{}]", key, i), dir));
    }
    return out;
  }

  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

const std::vector<std::string> kKeys = {"base_model",   "models",     "search",     "method",
                                        "layer_groups", "filters",    "parameters", "ranges",
                                        "dfs",          "tasks",      "validation", "baselines",
                                        "budget",       "population", "sigma0",     "seed"};

}  // namespace

EvolveConfig parse_config(const std::string& yaml_text, const fs::path& source) {
  const std::string where = source.filename().string();
  const Reader r(where);
  const yaml::Node root = yaml::load(yaml_text, where);
  r.keys(root, kKeys, "the evolve config");
  const fs::path dir = source.has_parent_path() ? source.parent_path() : fs::path(".");
  EvolveConfig c;
  c.source = source;
  c.text = yaml_text;
  if (root["base_model"]) c.base_model = r.path(root["base_model"], "base_model", dir);
  const yaml::Node models = root["models"];
  if (!models || !models.is_sequence() || models.size() == 0) {
    fail_at(where, models ? r.at(models) : Location{},
            "'models' must list the models to merge (paths of checkpoints)");
  }
  for (const auto& m : models.items()) c.models.push_back(r.path(m, "models", dir));
  if (root["search"]) {
    const std::string s = r.text(root["search"], "search");
    if (s == "ps") {
      c.search = Search::kParameterSpace;
    } else if (s == "dfs") {
      c.search = Search::kDataFlow;
    } else if (s == "ps+dfs") {
      c.search = Search::kBoth;
    } else {
      fail_at(where, r.at(root["search"]), "search '{}' is not ps, dfs or ps+dfs{}", s,
              did_you_mean(s, {"ps", "dfs", "ps+dfs"}));
    }
  }
  if (root["method"]) c.method = r.text(root["method"], "method");
  const std::vector<std::string> kMethods = {"linear", "task_arithmetic", "ties", "dare_ties",
                                             "slerp"};
  if (std::find(kMethods.begin(), kMethods.end(), c.method) == kMethods.end()) {
    fail_at(where, r.at(root["method"]), "method '{}' cannot be searched (choose one of: {}){}",
            c.method, recipe::join(kMethods), did_you_mean(c.method, kMethods));
  }
  if (root["layer_groups"]) c.layer_groups = r.count(root["layer_groups"], "layer_groups", 1);
  if (root["filters"]) {
    if (!root["filters"].is_sequence()) {
      fail_at(where, r.at(root["filters"]), "'filters' must be a list of tensor name filters");
    }
    for (const auto& f : root["filters"].items()) c.filters.push_back(r.text(f, "filters"));
  }
  const merge::MergeMethod& method = merge::method_or_fail(c.method);
  if (root["parameters"]) {
    std::vector<std::string> known;
    for (const auto& p : method.info().params) known.push_back(p.name);
    r.keys(root["parameters"], known, fmt::format("parameters (of {})", c.method));
    for (const auto& kv : root["parameters"].pairs()) {
      const std::string key = kv.first.scalar();
      const merge::ParamSpec* spec = method.param(key);
      const double v = spec->kind == merge::ParamKind::kBool ? (r.flag(kv.second, key) ? 1.0 : 0.0)
                                                             : r.number(kv.second, key);
      if (auto problem = merge::param_problem(*spec, v)) {
        fail_at(where, r.at(kv.second), "parameters.{}: {}", key, *problem);
      }
      c.parameters[key] = v;
    }
  }
  if (root["ranges"]) {
    const yaml::Node ranges = root["ranges"];
    r.keys(ranges, {"weight", "density", "t", "scale"}, "ranges");
    for (const auto& kv : ranges.pairs()) {
      const std::string key = kv.first.scalar();
      if (!kv.second.is_sequence() || kv.second.size() != 2) {
        fail_at(where, r.at(kv.second), "ranges.{} must be [low, high]", key);
      }
      const double lo = r.number(kv.second[0], key), hi = r.number(kv.second[1], key);
      if (!(lo < hi)) fail_at(where, r.at(kv.second), "ranges.{}: low must be below high", key);
      c.ranges[key] = {lo, hi};
    }
  }
  if (root["dfs"]) {
    r.keys(root["dfs"], {"repeats", "scales"}, "dfs");
    if (root["dfs"]["repeats"]) c.dfs.repeats = r.count(root["dfs"]["repeats"], "repeats", 1);
    if (root["dfs"]["scales"]) c.dfs.scales = r.flag(root["dfs"]["scales"], "scales");
  }
  if (!root["tasks"]) fail_at(where, {}, "'tasks' is required: the fitness tasks");
  c.tasks = r.tasks(root["tasks"], "tasks", dir);
  if (root["validation"]) c.validation = r.tasks(root["validation"], "validation", dir);
  if (root["baselines"]) {
    if (!root["baselines"].is_sequence()) {
      fail_at(where, r.at(root["baselines"]), "'baselines' must be a list of checkpoints");
    }
    for (const auto& b : root["baselines"].items())
      c.baselines.push_back(r.path(b, "baselines", dir));
  }
  if (root["budget"]) {
    r.keys(root["budget"], {"evaluations", "minutes"}, "budget");
    if (root["budget"]["evaluations"]) {
      c.max_evaluations = r.count(root["budget"]["evaluations"], "evaluations", 1);
    }
    if (root["budget"]["minutes"]) c.max_minutes = r.number(root["budget"]["minutes"], "minutes");
  }
  if (root["population"] && !root["population"].is_null()) {
    c.population = r.count(root["population"], "population", 2);
  }
  if (root["sigma0"]) c.sigma0 = r.number(root["sigma0"], "sigma0");
  if (root["seed"]) c.seed = static_cast<uint64_t>(r.count(root["seed"], "seed", 0));

  const bool ps = c.search != Search::kDataFlow;
  if (ps && c.method != "linear" && c.method != "slerp" && !c.base_model) {
    fail_at(where, {}, "{} needs base_model: the models' common base (task vectors start there)",
            c.method);
  }
  if (ps && c.method == "slerp" && c.models.size() != 2) {
    fail_at(where, r.at(models), "slerp merges exactly two models; 'models' lists {}",
            c.models.size());
  }
  return c;
}

EvolveConfig load_config(const fs::path& path) {
  EvolveConfig c = parse_config(core::read_text_file(path), path);
  // Name the config, not a generated candidate recipe, when a path is wrong.
  std::vector<fs::path> paths = c.models;
  if (c.base_model) paths.push_back(*c.base_model);
  for (const auto& t : c.tasks) paths.push_back(t.file);
  for (const auto& t : c.validation) paths.push_back(t.file);
  for (const auto& b : c.baselines) paths.push_back(b);
  for (const auto& p : paths) {
    if (!fs::exists(p)) fail("{}: '{}' does not exist", path.string(), p.string());
  }
  return c;
}

}  // namespace amalgam::evolve
