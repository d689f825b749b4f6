// The checkpoints a recipe references, opened once: safetensors headers (mmap, no weight read)
// and config.json, with the architecture table that describes them all.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arch/architecture.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "recipe/recipe.h"
#include "recipe/schema.h"

namespace amalgam::recipe {

struct InputModel {
  std::filesystem::path path;  // absolute, normalised
  std::filesystem::path lora;  // LoRA adapter applied to it ("path+lora"), or empty
  std::string name;            // as the recipe spells it, for messages
  Location at;                 // its first mention in the recipe
  std::shared_ptr<const io::Checkpoint> checkpoint;
  io::ModelConfig config;
  std::string architecture;  // config architectures[0], or override_architecture
  int64_t num_layers = 0;
  int64_t num_experts = 0;  // MoE only
  size_t layout = 0;        // index into Architecture::layouts
};

class ModelSet {
 public:
  // Opens every model the recipe references (its inputs and base models), in order of first
  // mention; fails naming the recipe line when one is missing or unreadable.
  ModelSet(const Recipe& recipe, const PlanOptions& options);

  size_t size() const { return models_.size(); }
  const InputModel& operator[](size_t i) const { return models_[i]; }
  // Index of a referenced model; nullopt for a path the recipe's inputs do not include.
  std::optional<size_t> find(const ModelRef& ref) const;
  size_t index(const ModelRef& ref) const;  // the model must be one of the inputs

  // Resolves the architecture of every model against the donor's and checks they agree
  // (unless allow_crimes); picks each model's layer layout and layer count.
  void resolve_architecture(size_t donor, bool allow_crimes);
  const arch::Architecture& architecture() const { return arch_; }

 private:
  // The checkpoint and LoRA adapter (empty if none) a reference names, absolute.
  std::pair<std::filesystem::path, std::filesystem::path> resolve(const ModelRef& ref) const;
  void open(const ModelRef& ref);

  const Recipe& recipe_;
  PlanOptions options_;
  std::vector<InputModel> models_;
  arch::Architecture arch_;
};

}  // namespace amalgam::recipe
