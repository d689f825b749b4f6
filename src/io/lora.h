// PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors), applied to a base model's
// tensors as they are read: W' = W + scale * B A, in fp32, one tensor at a time, so a model
// "BASE+LORA" is never materialised. Also the writing side of mergekit-extract-lora's files.
//
// What an adapter may hold (names after PEFT's "base_model.model." prefix):
//   M.lora_A.weight (r, in), M.lora_B.weight (out, r)      update of M.weight (out, in)
//   M.lora_embedding_A (r, vocab), M.lora_embedding_B (dim, r)   update of M.weight (vocab, dim)
//   M.lora_B.bias (out)                                     update of M.bias (lora_bias)
//   any other tensor T (modules_to_save)                    replaces T, same shape
// scale = alpha / r, or alpha / sqrt(r) with use_rslora; r and alpha per module from
// rank_pattern / alpha_pattern. With fan_in_fan_out the base stores (in, out): the update is
// (B A)^T, as for embeddings.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "tensor/tensor.h"

namespace amalgam::io {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftPrefix = "base_model.model.";

// adapter_config.json, the fields that change the weights.
struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  // Module name suffixes, or one regex (target_modules given as a string) matched against the
  // whole module name; "all-linear" matches every linear module but the output head.
  std::vector<std::string> target_modules;
  std::optional<std::string> target_regex;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;  // regex -> r, in file order
  std::vector<std::pair<std::string, double>> alpha_pattern;  // regex -> alpha
  std::vector<std::string> modules_to_save;
  std::string base_model_name_or_path;
};

// Parses and checks a config; options whose effect cannot be applied as a weight update (DoRA,
// layer replication, trainable tokens, ...) are refused, naming the key.
LoraConfig parse_lora_config(const nlohmann::ordered_json& j, const std::string& where);

// The change an adapter makes to one base tensor.
struct LoraTensor {
  std::string name;                         // base tensor, e.g. model.layers.0.mlp.up_proj.weight
  std::string module;                       // PEFT module name, e.g. model.layers.0.mlp.up_proj
  const TensorInfo* replacement = nullptr;  // full tensor that replaces the base's
  const TensorInfo* a = nullptr;            // lora_A / lora_embedding_A
  const TensorInfo* b = nullptr;            // lora_B / lora_embedding_B, or lora_B.bias (no a)
  bool transposed = false;                  // update = (B A)^T: embeddings, fan_in_fan_out
  int64_t rank = 0;
  double scale = 1;

  bool has_update() const { return b != nullptr; }
};

class LoraAdapter {
 public:
  // Reads the directory's two files and checks them against each other (tensor names and pairs,
  // ranks, config options); every error names the file and tensor or key.
  explicit LoraAdapter(const std::filesystem::path& dir);

  const std::filesystem::path& directory() const { return dir_; }
  const SafetensorsFile& file() const { return *file_; }
  const LoraConfig& config() const { return config_; }
  const std::vector<LoraTensor>& tensors() const { return tensors_; }
  // What the adapter does to base tensor `name`, or nullptr when it leaves it alone.
  const LoraTensor* find(const std::string& name) const;

  // Checks every change against the base checkpoint's headers: the tensor exists, is a float
  // tensor, and its shape fits the update or replacement. Reads no weights.
  void check_base(const Checkpoint& base) const;

 private:
  std::filesystem::path dir_;
  LoraConfig config_;
  std::unique_ptr<SafetensorsFile> file_;
  std::vector<LoraTensor> tensors_;
  std::map<std::string, size_t> by_name_;
};

// One tensor's update decoded to fp32 (rank x (rows + cols) floats, scale folded in), added to
// the base tensor's elements as the merge reads them, row piece by row piece.
class LoraDelta {
 public:
  LoraDelta(const LoraAdapter& adapter, const LoraTensor& tensor);

  // dst holds elements [col, col + n) of row `row` of the base tensor (row-major; a 1-D tensor
  // is one row): adds the update to them.
  void add(size_t row, size_t col, size_t n, float* dst) const;

 private:
  size_t rows_ = 0, cols_ = 0, rank_ = 0;
  std::vector<float> left_;   // (rows, rank): scale * B, or scale * A^T when transposed
  std::vector<float> right_;  // (rank, cols): A, or B^T when transposed
  mutable std::vector<float> sum_;
};

// mergekit's "BASE+LORA" model reference. A path that exists as written is a plain model (a
// directory name may hold '+'); otherwise each '+' is tried as the separator and the split whose
// two sides both exist wins (relative paths resolve against base_dir). nullopt when no split
// fits; an error when several do.
std::optional<std::pair<std::string, std::string>> split_lora_reference(
    const std::string& ref, const std::filesystem::path& base_dir = ".");

// Why "BASE+LORA" does not resolve, for a reference split_lora_reference rejected (names the side
// that is missing), or "" when the reference has no '+'.
std::string explain_lora_reference(const std::string& ref,
                                   const std::filesystem::path& base_dir = ".");

}  // namespace amalgam::io
