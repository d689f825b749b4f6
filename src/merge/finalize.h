// Writing a merged model directory: weights through the streaming executor, then config.json,
// tokenizer files, the model card and the recipe, all into a staging directory that is synced and
// renamed into place only when complete. A failure at any point leaves neither the output nor the
// staging directory behind.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "gguf/export.h"
#include "io/safetensors.h"
#include "merge/executor.h"
#include "merge/plan.h"

namespace amalgam::merge {

// The merge also (or only) written as a GGUF file.
struct GgufOutput {
  std::filesystem::path path;
  gguf::ExportOptions options;
  bool only = false;  // no safetensors checkpoint
};

struct OutputOptions {
  uint64_t max_shard_bytes = 5'000'000'000;  // mergekit's default --out-shard-size 5B
  bool force = false;                        // replace an existing non-empty output directory
  bool model_card = true;                    // README.md with provenance
  ExecuteOptions execute;
  std::optional<GgufOutput> gguf;
};

struct OutputSummary {
  ExecuteStats stats;
  size_t shards = 0;
  uint64_t weight_bytes = 0;
};

// Input shard files of a checkpoint with their sha256, for the provenance table.
struct ShardDigest {
  size_t model = 0;  // index into Plan::models
  std::filesystem::path file;
  uint64_t bytes = 0;
  std::string sha256;
};

// Refuses a plan whose written config.json would contradict its tensors (layer count, widths,
// vocabulary), naming `out`: amalgam never writes a checkpoint it cannot load itself.
void validate_output_config(const Plan& plan, const std::filesystem::path& out);

// Merges `plan` into a new model directory `out`. The plan is validated against the input headers
// before anything is created.
OutputSummary write_model(const Plan& plan, InputSet& inputs, const std::filesystem::path& out,
                          const OutputOptions& options);

// The files besides the weights, written into `dir`: config.json (the donor's, with the layer
// count and dtype updated), tokenizer and generation config files (copied), README.md (model
// card; when digests are given), amalgam_recipe.yaml and mergekit_config.yml (the recipe).
void write_model_files(const Plan& plan, const std::filesystem::path& dir,
                       const std::vector<ShardDigest>& digests, bool model_card);

// The donor's config.json with num_hidden_layers = plan.num_layers, vocab_size = the built
// vocabulary's rows (when the merge built one) and its dtype key (`dtype` in
// transformers 5, `torch_dtype` in 4) set to the output dtype; other keys keep their order.
std::string output_config_json(const Plan& plan, const std::string& donor_config_text,
                               const std::string& where);

}  // namespace amalgam::merge
