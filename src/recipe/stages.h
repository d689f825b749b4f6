// Multi-stage recipes (mergekit-multi): several YAML documents separated by ---, each a recipe
// with a `name:`; a model path equal to another stage's name reads that stage's output. Stages
// run in dependency order into an intermediate directory; a stage whose output exists and whose
// recipe (and inputs' recipes) are unchanged is skipped. The final stage goes to the output.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "merge/plan.h"
#include "recipe/recipe.h"

namespace amalgam::recipe {

struct StageOptions {
  PlanOptions plan;
  // The stage written to the output: empty means the unnamed document, else the last one.
  std::string final_stage;
  // Where intermediate stages go (DIR/<name>); empty: OUT.stages next to the output.
  std::filesystem::path intermediate_dir;
  bool keep_intermediates = false;  // else removed once the final output is written
  bool force = false;               // replace an existing output directory
  uint64_t seed = 0;                // random methods depend on it, so it is part of a stage's hash
};

struct Stage {
  std::string name;           // empty for the unnamed final document
  Recipe recipe;              // references to other stages rewritten to their output directories
  std::vector<size_t> needs;  // stages whose outputs it reads (indices into the stage list)
  std::filesystem::path out;  // its output directory
  std::string hash;           // sha256 of its text, the seed and the hashes of what it needs
};

// The stages the final one needs, in dependency order, the final stage last. Fails, naming the
// file, line and column, on duplicated or unusable names, references that are neither a stage
// nor an existing path, and cycles.
std::vector<Stage> plan_stages(const std::string& yaml_text, const std::string& where,
                               const std::filesystem::path& out, const StageOptions& options);

// True when the text holds more than one YAML document (false for malformed YAML, which the
// single-recipe path reports).
bool is_multi_stage(const std::string& yaml_text);

// Writes a stage's plan into a directory (the merge command's writer: shard size, threads, ...).
// `intermediate` is false for the final output.
using StageWriter = std::function<void(const merge::Plan& plan, const std::filesystem::path& out,
                                       bool intermediate)>;

struct StagesReport {
  std::vector<std::string> merged;   // stage names, in the order they ran
  std::vector<std::string> skipped;  // up to date from an earlier run
};

// Plans and runs every stage, then removes the intermediates unless asked to keep them.
StagesReport run_stages(const std::string& yaml_text, const std::string& where,
                        const std::filesystem::path& out, const StageOptions& options,
                        const StageWriter& write);

}  // namespace amalgam::recipe
