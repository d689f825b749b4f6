// The one architecture table of the decoders amalgam runs and exports (Llama, Mistral, Qwen2,
// Mixtral; Qwen2-MoE is run, not yet exported): every tensor role with its Hugging Face name, its
// GGUF name and whether llama.cpp permutes its rows, plus per architecture its GGUF name and the
// config.json -> GGUF key map. The merge tables (tables.cc), the inference engine (infer/arch.cc)
// and the GGUF writer (gguf/export.cc) all read names from here; adding an architecture is one row
// of kArchSpecs (and, when its tensors differ, rows of kRoles).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "io/hf_config.h"

namespace amalgam::arch {

enum class Role {
  kTokenEmbd,
  kOutputNorm,
  kOutput,
  kAttnNorm,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnOut,
  kAttnQBias,
  kAttnKBias,
  kAttnVBias,
  kAttnOutBias,
  kFfnNorm,
  kFfnGate,
  kFfnUp,
  kFfnDown,
  kFfnGateBias,
  kFfnUpBias,
  kFfnDownBias,
  // Mixtral, transformers-4 layout: one tensor per expert, stacked into one GGUF tensor.
  kRouter,
  kExpertGate,  // w1
  kExpertUp,    // w3
  kExpertDown,  // w2
  // Mixtral, transformers-5 layout: experts already stacked; gate and up fused along rows.
  kFusedRouter,
  kFusedExpertsGateUp,  // [E, 2I, D] -> ffn_gate_exps (rows [0, I)) and ffn_up_exps ([I, 2I))
  kFusedExpertsDown,    // [E, D, I]
  // Qwen2-MoE: the router is mlp.gate.weight (kFusedRouter's name); per-expert tensors keep the
  // dense MLP's names under mlp.experts.N (transformers 5 stacks them as the kFused* roles);
  // one shared expert, always active, scaled by sigmoid(shared_expert_gate . x).
  kMlpExpertGate,
  kMlpExpertUp,
  kMlpExpertDown,
  kSharedExpertGate,
  kSharedExpertUp,
  kSharedExpertDown,
  kSharedExpertRouter,  // (1, D)
};

// How llama.cpp's converter reorders the rows of a tensor for its "llama" architecture: within
// each head, HF's half-split RoPE layout (row h*d/2 + r) becomes interleaved (row 2r + h).
enum class RowPermute { kNone, kQueryHeads, kKeyHeads };

struct TensorRole {
  Role role;
  std::string_view hf;    // with ${layer_index} and ${expert_index}
  std::string_view gguf;  // with ${layer_index}; empty for fused roles (split by the writer)
  RowPermute permute = RowPermute::kNone;
  bool per_layer = true;
};

const std::vector<TensorRole>& tensor_roles();
const TensorRole& tensor_role(Role role);
// Names with the layer (and expert) substituted.
std::string hf_name(Role role, int64_t layer = -1, int64_t expert = -1);
std::string gguf_name(Role role, int64_t layer = -1);

// Which role a Hugging Face tensor name plays, with its layer and expert (-1 when none).
struct RoleMatch {
  Role role;
  int64_t layer = -1;
  int64_t expert = -1;
};
std::optional<RoleMatch> match_hf_name(std::string_view name);

// One config value written under "<gguf_arch>.<key>" (e.g. llama.context_length). A getter
// returns nullopt when the config has no such value (the key is then not written).
using ConfigValue = std::variant<uint32_t, float>;
struct ConfigKey {
  std::string_view key;
  std::function<std::optional<ConfigValue>(const io::ModelConfig&)> get;
};

struct ArchSpec {
  std::string_view architecture;  // config.json architectures[0]
  std::string_view model_type;    // config.json model_type
  std::string_view gguf_arch;     // general.architecture in GGUF
  bool qkv_bias_required;         // Qwen2: q/k/v projections always have biases
  bool moe;                       // Mixtral: sparse mixture-of-experts feed-forward
  bool permute_qk;                // llama.cpp's llama arch: q/k rows interleaved (RowPermute)
  bool shared_expert = false;     // Qwen2-MoE: a shared expert behind a sigmoid gate
  bool gguf = true;               // amalgam converts it to and from GGUF
};

const std::vector<ArchSpec>& arch_specs();
// By architecture name, then (when the config names none) by model_type; nullptr if unknown.
const ArchSpec* find_arch_spec(std::string_view architecture, std::string_view model_type);
// By GGUF general.architecture (and whether it has experts); nullptr if unknown.
const ArchSpec* find_arch_spec_gguf(std::string_view gguf_arch, bool moe);
// The hyperparameter keys every architecture writes (llama.cpp's LLM_KV_* names).
const std::vector<ConfigKey>& config_keys();

}  // namespace amalgam::arch
