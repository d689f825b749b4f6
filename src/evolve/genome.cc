#include "evolve/genome.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "merge/method.h"

namespace amalgam::evolve {

namespace fs = std::filesystem;

std::string model_label(const fs::path& path) {
  fs::path p = path.lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

std::string yaml_quote(const std::string& text) { return nlohmann::json(text).dump(); }

namespace {

std::string number(double v) { return fmt::format("{:.6g}", v); }

// The box of a gene kind: the config's `ranges`, else the parameter's search box.
std::pair<double, double> range_of(const EvolveConfig& c, const std::string& kind, double lo,
                                   double hi) {
  auto it = c.ranges.find(kind);
  return it == c.ranges.end() ? std::pair{lo, hi} : it->second;
}

}  // namespace

std::vector<double> Genome::initial_unit() const {
  std::vector<double> u;
  for (const auto& g : genes_) u.push_back((g.initial - g.lo) / (g.hi - g.lo));
  return u;
}

std::vector<double> Genome::values(const std::vector<double>& unit) const {
  AMALGAM_CHECK(unit.size() == genes_.size(), "genome of {} genes given {} values", genes_.size(),
                unit.size());
  std::vector<double> v(unit.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double u = std::clamp(unit[i], 0.0, 1.0);
    v[i] = genes_[i].lo + u * (genes_[i].hi - genes_[i].lo);
  }
  return v;
}

PsGenome::PsGenome(const EvolveConfig& config, std::vector<SearchModel> models)
    : config_(config), models_(std::move(models)) {
  AMALGAM_CHECK(!models_.empty(), "no models to search");
  const int64_t layers = models_[0].num_layers;
  for (const auto& m : models_) {
    if (m.num_layers != layers) {
      fail(
          "{}: '{}' has {} layers but '{}' has {}; parameter-space search merges models of one "
          "shape",
          config.source.string(), m.path.string(), m.num_layers, models_[0].path.string(), layers);
    }
  }
  const int64_t groups = std::min(config.layer_groups.value_or(layers), layers);
  for (int64_t g = 0; g <= groups; ++g) group_starts_.push_back(g * layers / groups);

  const merge::MergeMethod& method = merge::method_or_fail(config.method);
  per_model_ = config.method != "slerp";
  std::vector<const merge::ParamSpec*> specs;
  for (const auto& p : method.info().params) {
    if (!p.searchable || config.parameters.count(p.name)) continue;
    const bool global = p.scope == merge::ParamScope::kGlobal;
    if (global == per_model_) continue;
    specs.push_back(&p);
  }
  const size_t filter_sets = config.filters.size() + 1;
  const size_t model_count = per_model_ ? models_.size() : 1;
  for (const auto* s : specs) params_.push_back(s->name);
  for (size_t g = 0; g + 1 < group_starts_.size(); ++g) {
    for (size_t m = 0; m < model_count; ++m) {
      for (size_t f = 0; f < filter_sets; ++f) {
        for (const auto* s : specs) {
          Gene gene;
          const std::string filter = f < config.filters.size() ? config.filters[f] : "rest";
          gene.name = per_model_ ? fmt::format("g{}.{}.{}.{}", g, models_[m].label, filter, s->name)
                                 : fmt::format("g{}.{}.{}", g, filter, s->name);
          std::tie(gene.lo, gene.hi) = range_of(config, s->name, s->search_min, s->search_max);
          // mergekit-evolve's starting point: weights 1/n, densities 1, t 0.5.
          const double init = s->name == "weight"    ? 1.0 / static_cast<double>(models_.size())
                              : s->name == "density" ? 1.0
                                                     : 0.5;
          gene.initial = std::clamp(init, gene.lo, gene.hi);
          genes_.push_back(gene);
        }
      }
    }
  }
}

size_t PsGenome::index(size_t group, size_t model, size_t filter_set, size_t param) const {
  const size_t filter_sets = config_.filters.size() + 1;
  const size_t model_count = per_model_ ? models_.size() : 1;
  return ((group * model_count + model) * filter_sets + filter_set) * params_.size() + param;
}

std::string PsGenome::recipe(const std::vector<double>& unit) const {
  const std::vector<double> v = values(unit);
  const size_t filter_sets = config_.filters.size() + 1;
  // One parameter as a filtered list: [{filter: self_attn, value: x}, ..., {value: rest}].
  auto setting = [&](size_t g, size_t m, size_t p) {
    std::string out = "[";
    for (size_t f = 0; f < filter_sets; ++f) {
      if (f) out += ", ";
      const std::string value = number(v[index(g, m, f, p)]);
      out += f < config_.filters.size()
                 ? fmt::format("{{filter: {}, value: {}}}", yaml_quote(config_.filters[f]), value)
                 : fmt::format("{{value: {}}}", value);
    }
    return out + "]";
  };
  std::string y = fmt::format("merge_method: {}\n", config_.method);
  const std::string base = per_model_ ? (config_.base_model ? config_.base_model->string() : "")
                                      : models_[0].path.string();
  if (!base.empty()) y += fmt::format("base_model: {}\n", yaml_quote(base));
  std::map<std::string, double> fixed = config_.parameters;
  const bool normalizes =
      config_.method == "ties" || config_.method == "dare_ties" || config_.method == "linear";
  if (normalizes && !fixed.count("normalize")) fixed["normalize"] = 1;  // as mergekit-evolve
  if (!fixed.empty()) {
    y += "parameters:\n";
    for (const auto& [k, value] : fixed) y += fmt::format("  {}: {}\n", k, number(value));
  }
  y += "slices:\n";
  for (size_t g = 0; g + 1 < group_starts_.size(); ++g) {
    const std::string range = fmt::format("[{}, {}]", group_starts_[g], group_starts_[g + 1]);
    y += "- sources:\n";
    if (per_model_ && config_.base_model) {
      y += fmt::format("  - model: {}\n    layer_range: {}\n", yaml_quote(base), range);
    }
    for (size_t m = 0; m < models_.size(); ++m) {
      y += fmt::format("  - model: {}\n    layer_range: {}\n", yaml_quote(models_[m].path.string()),
                       range);
      if (!per_model_) continue;
      y += "    parameters:\n";
      for (size_t p = 0; p < params_.size(); ++p) {
        y += fmt::format("      {}: {}\n", params_[p], setting(g, m, p));
      }
    }
    if (!per_model_) {
      y += "  parameters:\n";
      for (size_t p = 0; p < params_.size(); ++p) {
        y += fmt::format("    {}: {}\n", params_[p], setting(g, 0, p));
      }
    }
  }
  return y;
}

DfsGenome::DfsGenome(const EvolveConfig& config, std::vector<SearchModel> models)
    : models_(std::move(models)),
      repeats_(static_cast<size_t>(config.dfs.repeats)),
      scales_(config.dfs.scales) {
  AMALGAM_CHECK(!models_.empty(), "no models to search");
  for (size_t m = 0; m < models_.size(); ++m) {
    for (int64_t l = 0; l < models_[m].num_layers; ++l) slots_.emplace_back(m, l);
  }
  const size_t per_repeat = slots_.size();
  // Slot 0 (the first model's first layer) is always on: no gene.
  for (size_t t = 1; t < per_repeat * repeats_; ++t) {
    const auto [m, l] = slots_[t % per_repeat];
    Gene g;
    g.name = fmt::format("slot{}.{}.{}", t, models_[m].label, l);
    std::tie(g.lo, g.hi) = std::pair{-1.0, 1.0};
    // Near "the first model unchanged": its layers on in the first repetition, the rest off.
    g.initial = (t < per_repeat && m == 0) ? 0.5 : -0.5;
    genes_.push_back(g);
  }
  first_scale_ = genes_.size();
  if (scales_) {
    const auto [lo, hi] = range_of(config, "scale", 0.5, 1.5);
    for (size_t i = 0; i < per_repeat; ++i) {
      for (size_t j = 0; j < per_repeat; ++j) {
        Gene g;
        g.name = fmt::format("scale{}-{}", i, j);
        g.lo = lo;
        g.hi = hi;
        g.initial = std::clamp(1.0, lo, hi);
        genes_.push_back(g);
      }
    }
  }
}

std::vector<Hop> DfsGenome::path(const std::vector<double>& unit) const {
  const std::vector<double> v = values(unit);
  const size_t per_repeat = slots_.size();
  std::vector<size_t> chosen = {0};  // slot layer indices within one repetition
  for (size_t t = 1; t < per_repeat * repeats_; ++t) {
    if (v[t - 1] > 0) chosen.push_back(t % per_repeat);
  }
  const size_t last = static_cast<size_t>(models_[0].num_layers - 1);
  if (chosen.back() != last) chosen.push_back(last);
  std::vector<Hop> hops;
  for (size_t k = 0; k < chosen.size(); ++k) {
    const auto [m, l] = slots_[chosen[k]];
    double s = 1.0;
    if (scales_ && k > 0) s = v[first_scale_ + chosen[k - 1] * per_repeat + chosen[k]];
    hops.push_back(Hop{m, l, s});
  }
  return hops;
}

std::string DfsGenome::recipe_of(const std::vector<Hop>& path) const {
  std::string y = "merge_method: passthrough\nslices:\n";
  double running = 1.0;  // product of the scales so far
  for (const auto& hop : path) {
    running *= hop.scale;
    y += fmt::format("- sources:\n  - model: {}\n    layer_range: [{}, {}]\n",
                     yaml_quote(models_[hop.model].path.string()), hop.layer, hop.layer + 1);
    if (running != 1.0) {
      const std::string inv = number(1.0 / running);
      y += fmt::format(
          "    parameters:\n      scale: [{{filter: o_proj, value: {}}}, {{filter: down_proj, "
          "value: {}}}, {{value: 1}}]\n",
          inv, inv);
    }
  }
  return y;
}

std::string DfsGenome::recipe(const std::vector<double>& unit) const {
  return recipe_of(path(unit));
}

}  // namespace amalgam::evolve
