// Genomes of the recipe search and their decoding into mergekit recipes (YAML text that
// `amalgam merge` runs unchanged). The optimiser sees every genome in the unit box [0, 1]^n;
// each gene maps linearly onto its own range.
//  * Parameter space (PS, as mergekit-evolve): per layer group, per model, per filter set (the
//    configured filters plus a catch-all), the method's searchable parameters (weight, density;
//    slerp: t per group and filter set). One output slice per layer group.
//  * Data-flow space (DFS, Sakana's layer paths): slots are all layers of all models in order,
//    repeated r times; an indicator gene per slot (included when positive), and optionally a
//    scale per layer transition (W[i, j]). The path starts at the first model's first layer and
//    ends at its last. Scaling the residual stream by s > 0 before a block equals dividing the
//    o_proj and down_proj outputs of that block and every later block by the running product of
//    the scales (every block reads the stream through RMSNorm, and the final norm absorbs the
//    rest), so a path is written as a plain passthrough recipe with `scale` on those tensors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "evolve/config.h"

namespace amalgam::evolve {

struct Gene {
  std::string name;  // e.g. "g0.rev-expert.mlp.weight", "slot12", "scale3-7"
  double lo = 0, hi = 1;
  double initial = 0.5;  // in the gene's own range
};

class Genome {
 public:
  virtual ~Genome() = default;
  const std::vector<Gene>& genes() const { return genes_; }
  size_t size() const { return genes_.size(); }
  // The initial point in unit coordinates.
  std::vector<double> initial_unit() const;
  // Unit coordinates -> gene values.
  std::vector<double> values(const std::vector<double>& unit) const;
  // The recipe the unit-box point describes.
  virtual std::string recipe(const std::vector<double>& unit) const = 0;

 protected:
  std::vector<Gene> genes_;
};

// One searched model: its path and layer count.
struct SearchModel {
  std::filesystem::path path;
  int64_t num_layers = 0;
  std::string label;  // short name for gene names and tables
};

class PsGenome : public Genome {
 public:
  // models: the experts (the base, if any, is not among them).
  PsGenome(const EvolveConfig& config, std::vector<SearchModel> models);
  std::string recipe(const std::vector<double>& unit) const override;
  int64_t groups() const { return static_cast<int64_t>(group_starts_.size()); }

 private:
  size_t index(size_t group, size_t model, size_t filter_set, size_t param) const;

  const EvolveConfig& config_;
  std::vector<SearchModel> models_;
  std::vector<int64_t> group_starts_;  // first layer of each group (+ the layer count at the end)
  std::vector<std::string> params_;    // searched parameters per (group, model, filter set)
  bool per_model_ = true;              // false for slerp (t is global)
};

struct Hop {
  size_t model = 0;
  int64_t layer = 0;
  double scale = 1.0;  // applied to the residual stream entering this hop
};

class DfsGenome : public Genome {
 public:
  DfsGenome(const EvolveConfig& config, std::vector<SearchModel> models);
  std::vector<Hop> path(const std::vector<double>& unit) const;
  std::string recipe(const std::vector<double>& unit) const override;
  // A recipe for an explicit path (tests, and the path of the first model unchanged).
  std::string recipe_of(const std::vector<Hop>& path) const;

 private:
  std::vector<SearchModel> models_;
  std::vector<std::pair<size_t, int64_t>> slots_;  // one repetition: (model, layer)
  size_t repeats_ = 1;
  bool scales_ = false;
  size_t first_scale_ = 0;  // index of W[0][0] among the genes
};

// A short label for a model path ("rev-expert", or "mid/rev-expert" when names repeat).
std::string model_label(const std::filesystem::path& path);

// YAML for a path: a double-quoted JSON-style string (valid YAML).
std::string yaml_quote(const std::string& text);

}  // namespace amalgam::evolve
