// The one way every command opens a model: a checkpoint directory or .safetensors/.bin file
// (weights mapped, zero-copy), a GGUF file (dequantised once, tokenizer rebuilt from its
// metadata), BASE+LORA, or a merge recipe / plan executed into RAM tensors that the engine reads
// directly (nothing is written). One policy for all of them: counts checked against the tensors,
// NaN/Inf refused unless --no-check-finite, the tokenizer found the same way, and the same stop
// tokens (stop_ids below), so generate, eval and perplexity agree on one model.
// The loader keeps merge inputs open and tokenizers loaded, so evaluating many recipes over the
// same checkpoints (soups, recipe search) maps and parses each input once.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "infer/model.h"
#include "merge/executor.h"
#include "merge/plan.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::eval {

struct LoadedModel {
  std::string name;                     // as given: the path, recipe or BASE+LORA reference
  std::unique_ptr<infer::Model> model;  // keeps its weights alive (mapping or RAM copy)
  std::optional<tokenizer::Tokenizer> tokenizer;  // absent only for TokenizerNeed::kIfPresent

  // The tokenizer, or an error naming the model (commands that also take token ids).
  const tokenizer::Tokenizer& require_tokenizer() const;
  // The tokens that end a generation (eval::stop_ids of this model and its tokenizer).
  std::vector<int32_t> stop_ids() const;
};

enum class TokenizerNeed {
  kRequired,   // an error when the model has none
  kIfPresent,  // loaded when the model has one (commands that can take token ids instead)
};

class ModelLoader {
 public:
  // threads: merge worker threads (0: one per core). weights_in_memory: models read from files
  // run on copies of their weights in the process's own memory (infer::LoadOptions::in_memory)
  // instead of the files' mappings.
  explicit ModelLoader(unsigned threads = 0, bool weights_in_memory = false)
      : threads_(threads), weights_in_memory_(weights_in_memory) {}

  // A model directory, a .safetensors/.bin file, a .gguf file, BASE+LORA, or a recipe file
  // (.yaml / .yml) merged in memory.
  LoadedModel load(const std::filesystem::path& model_or_recipe,
                   TokenizerNeed need = TokenizerNeed::kRequired);
  // Executes `plan` into RAM; the model owns the merged tensors.
  LoadedModel from_plan(const merge::Plan& plan, const std::string& name);

  merge::InputSet& inputs() { return inputs_; }

 private:
  LoadedModel from_plan(const merge::Plan& plan, const std::string& name, TokenizerNeed need);
  LoadedModel load_gguf(const std::filesystem::path& path, TokenizerNeed need);
  const tokenizer::Tokenizer& tokenizer_of(const std::filesystem::path& model_dir);

  unsigned threads_;
  bool weights_in_memory_;
  merge::InputSet inputs_;
  std::map<std::filesystem::path, tokenizer::Tokenizer> tokenizers_;
};

bool is_recipe_path(const std::filesystem::path& path);

}  // namespace amalgam::eval
