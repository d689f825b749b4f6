// mergekit YAML recipes: parsing, validation against checkpoint headers and config.json (before
// any weight is read), and resolution into a merge::Plan.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "merge/executor.h"
#include "merge/plan.h"
#include "recipe/schema.h"

namespace amalgam::recipe {

struct PlanOptions {
  // Relative model paths in a recipe resolve against this directory (default: the current one).
  std::filesystem::path base_dir = ".";
  bool allow_crimes = false;  // allow mixing architectures
  // Checkpoints and configs already opened (recipe search builds many plans over the same
  // models); nullptr: each plan opens its own.
  merge::InputSet* inputs = nullptr;
};

// Parses YAML text (`where` names it in errors), validates and resolves it into a Plan.
merge::Plan plan_from_yaml(const std::string& yaml_text, const std::string& where,
                           const PlanOptions& options);
merge::Plan plan_from_file(const std::filesystem::path& recipe_path, const PlanOptions& options);
// The same from a Recipe built in code (evolutionary search writes recipes, not YAML).
merge::Plan plan_from_recipe(const Recipe& recipe, const PlanOptions& options);

}  // namespace amalgam::recipe
