// A Plan is a recipe resolved against the input checkpoints: one entry per output tensor with
// its input tensors and every parameter already resolved to a number. Building a plan reads only
// headers and config.json; executing it reads weights. Evolutionary search builds thousands of
// plans over the same inputs, so a plan is plain data and cheap to build.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace amalgam::merge {

// Resolved parameters by name. Booleans are 0/1.
using Params = std::map<std::string, double>;

// An embedding source mapped into the output vocabulary (tokenizer merging), applied as rows are
// read so that no permuted matrix is ever built. Output row r is the mean of the input rows
// picks[offsets[r] .. offsets[r + 1]) (one pick: a copy; none: zeros); a pick may name another
// source of the same entry (the row a model lacks comes from a model that has the token). Rows
// from `real_rows` on are padding: the mean of this source's output rows [0, real_rows).
struct RowPick {
  uint32_t source = 0;  // index into PlanEntry::sources
  int64_t row = 0;      // row of that source's input tensor
};
struct RowMap {
  int64_t real_rows = 0;
  std::vector<uint32_t> offsets;  // real_rows + 1 values
  std::vector<RowPick> picks;
};

struct SourceTensor {
  size_t model = 0;    // index into Plan::models
  std::string tensor;  // input tensor name in that model
  Params params;       // tensor (per-model) parameters: weight, density, scale, ...
  // Embedding rows mapped to the output vocabulary; null: read as stored.
  std::shared_ptr<const RowMap> rows = nullptr;
};

// Tokenizer files written for a vocabulary the merge built (tokenizer / tokenizer_source).
struct BuiltTokenizer {
  std::string tokenizer_json;
  std::optional<std::string> tokenizer_config_json;  // nullopt: the source's copied unchanged
  int64_t vocab_size = 0;                            // config.json vocab_size (padded)
};

struct PlanEntry {
  std::string name;                // output tensor name
  tensor::DType out_dtype;         // dtype written
  tensor::Shape shape;             // output shape
  std::vector<SourceTensor> sources;
  std::optional<size_t> base;      // index into `sources` of the base model's tensor
  Params global;                   // method-level parameters resolved for this tensor
  bool is_embed = false;           // embed_tokens / lm_head: vocab rows may differ
  // Tensors that are not floats (e.g. int64 position ids) are copied from sources[0] unchanged.
  bool passthrough_bytes = false;
};

struct Plan {
  std::string method;                           // registry name, e.g. "ties"
  std::vector<std::filesystem::path> models;    // distinct input checkpoints
  // LoRA adapters (PEFT directories) applied to input models as their tensors are read: model
  // index -> adapter. mergekit's "BASE+LORA" is models[i] = BASE with adapters[i] = LORA.
  std::map<size_t, std::filesystem::path> adapters;
  std::optional<size_t> base_model;             // index into models
  size_t donor = 0;                             // model whose config/tokenizer is copied
  std::vector<PlanEntry> entries;               // in output order
  int64_t num_layers = 0;                       // layer count written to config.json
  std::optional<tensor::DType> compute_dtype;   // recipe `dtype` (inputs rounded to it first)
  tensor::DType out_dtype = tensor::DType::kBF16;
  std::string recipe_text;                      // the recipe as given, for the model card
  // Tokenizer donor: index into models (copied as-is), or nullopt for the config donor.
  std::optional<size_t> tokenizer_source;
  // Set when the recipe built a vocabulary that differs from the tokenizer source's: written
  // instead of its tokenizer.json (its other tokenizer files are still copied).
  std::shared_ptr<const BuiltTokenizer> built_tokenizer;
};

// Model i as a recipe names it: its path, or "BASE+LORA" when an adapter applies to it.
inline std::string model_name(const Plan& plan, size_t i) {
  std::string name = plan.models.at(i).string();
  if (auto it = plan.adapters.find(i); it != plan.adapters.end()) {
    name += '+';
    name += it->second.string();
  }
  return name;
}

}  // namespace amalgam::merge
