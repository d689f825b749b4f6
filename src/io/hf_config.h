// config.json of a Hugging Face causal LM, read in both transformers-4 style (torch_dtype,
// top-level rope_theta, rope_scaling) and transformers-5 style (dtype, rope_parameters).
// The raw JSON is kept so that a merge can write the donor's config back with few edits.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace amalgam::io {

struct RopeConfig {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn
  double theta = 10000.0;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn
  std::optional<double> attention_factor;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;          // yarn (DeepSeek style): attention factor ratio
  std::optional<double> mscale_all_dim;
  bool truncate = true;                  // yarn: round the correction range to whole dims
  double partial_rotary_factor = 1.0;
};

struct ModelConfig {
  nlohmann::ordered_json raw;
  std::string architecture;  // architectures[0]
  std::string model_type;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 has them regardless of this key)
  std::optional<int64_t> sliding_window;
  int64_t num_experts = 0;  // Mixtral num_local_experts, Qwen2-MoE num_experts; 0 for dense
  int64_t experts_per_token = 0;
  // Qwen2-MoE (qwen2_moe): routed experts of moe_intermediate_size, one shared expert of
  // shared_expert_intermediate_size behind a sigmoid gate; layer l is sparse when it is not in
  // mlp_only_layers and (l + 1) % decoder_sparse_step == 0 (else a dense MLP of
  // intermediate_size). norm_topk_prob: top-k weights renormalised to sum 1 (Mixtral always).
  int64_t moe_intermediate_size = 0;  // 0: intermediate_size
  int64_t shared_expert_intermediate_size = 0;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool norm_topk_prob = true;
  std::string dtype;  // torch name as written in the file ("bfloat16"), empty if absent
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
};

// Whether layer l has a sparse (mixture-of-experts) feed-forward: every layer of a Mixtral, the
// layers Qwen2-MoE's decoder_sparse_step and mlp_only_layers select, none of a dense model.
bool is_sparse_layer(const ModelConfig& config, int64_t layer);

ModelConfig parse_model_config(const nlohmann::ordered_json& j, const std::string& where);
// Reads model_dir/config.json and adds generation_config.json's eos_token_id(s) to
// eos_token_ids, so that every command stops generating on the same tokens.
ModelConfig read_model_config(const std::filesystem::path& model_dir);
// The generation_config.json part of read_model_config (for configs built in memory).
void add_generation_config_eos(ModelConfig& config, const std::filesystem::path& model_dir);

}  // namespace amalgam::io
