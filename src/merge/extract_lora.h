// LoRA extraction (mergekit-extract-lora): the difference between a fine-tune and its base,
// D = W_ft - W_base, factored per linear module by a truncated SVD D ~ U_r S_r V_r^T into PEFT's
// lora_B = U_r sqrt(S_r) (out, r) and lora_A = sqrt(S_r) V_r^T (r, in), written as a PEFT adapter
// directory with lora_alpha = r per module (scale 1), so that BASE+OUT rebuilds the fine-tune up
// to the discarded singular values. Tensors that are not linear weights (norms; embeddings and
// the output head unless embed_lora) are saved whole in modules_to_save, as mergekit does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace amalgam::merge {

struct ExtractLoraOptions {
  // Rank cap per module (mergekit's --max-rank); default 128, or none with `energy`.
  std::optional<int64_t> max_rank;
  // Per module, the smallest rank whose singular values keep this fraction of sum(S^2).
  std::optional<double> energy;
  double sv_epsilon = 0;                   // also drop singular values <= this
  bool distribute_scale = true;            // A = sqrt(S) V^T, B = U sqrt(S); else A = S V^T, B = U
  bool embed_lora = false;                 // factor embeddings and the output head too
  bool skip_undecomposable = false;        // drop norms etc. instead of saving them whole
  std::vector<std::string> include_regex;  // modules to factor (searched in the module name)
  std::vector<std::string> exclude_regex;  // modules to leave out entirely
  std::optional<tensor::DType> dtype;      // adapter dtype; default: the fine-tune's
  std::string base_name;  // base_model_name_or_path written; default: the base path
  unsigned threads = 0;   // 0: one per core
  bool progress = true;
  bool force = false;  // replace an existing output directory
};

struct ExtractedModule {
  std::string module;      // e.g. model.layers.0.self_attn.q_proj
  int64_t rank = 0;        // kept
  int64_t full_rank = 0;   // min(rows, cols)
  double kept_energy = 1;  // sum of kept S^2 / sum of S^2 (relative error = sqrt(1 - this))
};

struct ExtractLoraStats {
  std::vector<ExtractedModule> modules;  // factored, in name order
  size_t unchanged = 0;                  // linear weights equal in both models: nothing written
  size_t saved_whole = 0;                // tensors in modules_to_save
  size_t bias_updates = 0;               // lora_B.bias
  int64_t max_rank = 0;                  // adapter_config.json r
  uint64_t bytes_written = 0;
  double seconds = 0;
};

// Writes the adapter directory `out` (staged, renamed into place when complete). Reads the two
// checkpoints one tensor per worker at a time; the adapter is held in memory until written.
ExtractLoraStats extract_lora(const std::filesystem::path& model, const std::filesystem::path& base,
                              const std::filesystem::path& out, const ExtractLoraOptions& options);

}  // namespace amalgam::merge
