// The tensor-role and architecture rows. GGUF names and row permutations follow llama.cpp's
// converter (gguf-py's tensor map and LlamaModel.permute); spec/inference.md B.0.
#include "arch/roles.h"

#include <cmath>

#include "arch/architecture.h"
#include "core/error.h"

namespace amalgam::arch {

namespace {

#define L "model.layers.${layer_index}."
#define B "blk.${layer_index}."

// Function-local statics: the merge tables read these rows during static initialisation.
const std::vector<TensorRole>& roles() {
  static const std::vector<TensorRole> kRoles = {
      {Role::kTokenEmbd, "model.embed_tokens.weight", "token_embd.weight", RowPermute::kNone,
       false},
      {Role::kOutputNorm, "model.norm.weight", "output_norm.weight", RowPermute::kNone, false},
      {Role::kOutput, "lm_head.weight", "output.weight", RowPermute::kNone, false},
      {Role::kAttnNorm, L "input_layernorm.weight", B "attn_norm.weight"},
      {Role::kAttnQ, L "self_attn.q_proj.weight", B "attn_q.weight", RowPermute::kQueryHeads},
      {Role::kAttnK, L "self_attn.k_proj.weight", B "attn_k.weight", RowPermute::kKeyHeads},
      {Role::kAttnV, L "self_attn.v_proj.weight", B "attn_v.weight"},
      {Role::kAttnOut, L "self_attn.o_proj.weight", B "attn_output.weight"},
      {Role::kAttnQBias, L "self_attn.q_proj.bias", B "attn_q.bias", RowPermute::kQueryHeads},
      {Role::kAttnKBias, L "self_attn.k_proj.bias", B "attn_k.bias", RowPermute::kKeyHeads},
      {Role::kAttnVBias, L "self_attn.v_proj.bias", B "attn_v.bias"},
      {Role::kAttnOutBias, L "self_attn.o_proj.bias", B "attn_output.bias"},
      {Role::kFfnNorm, L "post_attention_layernorm.weight", B "ffn_norm.weight"},
      {Role::kFfnGate, L "mlp.gate_proj.weight", B "ffn_gate.weight"},
      {Role::kFfnUp, L "mlp.up_proj.weight", B "ffn_up.weight"},
      {Role::kFfnDown, L "mlp.down_proj.weight", B "ffn_down.weight"},
      {Role::kFfnGateBias, L "mlp.gate_proj.bias", B "ffn_gate.bias"},
      {Role::kFfnUpBias, L "mlp.up_proj.bias", B "ffn_up.bias"},
      {Role::kFfnDownBias, L "mlp.down_proj.bias", B "ffn_down.bias"},
      {Role::kRouter, L "block_sparse_moe.gate.weight", B "ffn_gate_inp.weight"},
      {Role::kExpertGate, L "block_sparse_moe.experts.${expert_index}.w1.weight",
       B "ffn_gate_exps.weight"},
      {Role::kExpertUp, L "block_sparse_moe.experts.${expert_index}.w3.weight",
       B "ffn_up_exps.weight"},
      {Role::kExpertDown, L "block_sparse_moe.experts.${expert_index}.w2.weight",
       B "ffn_down_exps.weight"},
      {Role::kFusedRouter, L "mlp.gate.weight", B "ffn_gate_inp.weight"},
      {Role::kFusedExpertsGateUp, L "mlp.experts.gate_up_proj", ""},
      {Role::kFusedExpertsDown, L "mlp.experts.down_proj", B "ffn_down_exps.weight"},
      // llama.cpp stacks these into ffn_{gate,up,down}_exps, the names GGUF import maps back to
      // Mixtral's roles; left empty here until Qwen2-MoE is converted.
      {Role::kMlpExpertGate, L "mlp.experts.${expert_index}.gate_proj.weight", ""},
      {Role::kMlpExpertUp, L "mlp.experts.${expert_index}.up_proj.weight", ""},
      {Role::kMlpExpertDown, L "mlp.experts.${expert_index}.down_proj.weight", ""},
      {Role::kSharedExpertGate, L "mlp.shared_expert.gate_proj.weight", B "ffn_gate_shexp.weight"},
      {Role::kSharedExpertUp, L "mlp.shared_expert.up_proj.weight", B "ffn_up_shexp.weight"},
      {Role::kSharedExpertDown, L "mlp.shared_expert.down_proj.weight", B "ffn_down_shexp.weight"},
      {Role::kSharedExpertRouter, L "mlp.shared_expert_gate.weight", B "ffn_gate_inp_shexp.weight"},
  };
  return kRoles;
}

#undef L
#undef B

const std::vector<ArchSpec>& specs() {
  static const std::vector<ArchSpec> kArchSpecs = {
      {"LlamaForCausalLM", "llama", "llama", false, false, true},
      {"MistralForCausalLM", "mistral", "llama", false, false, true},
      {"Qwen2ForCausalLM", "qwen2", "qwen2", true, false, false},
      {"MixtralForCausalLM", "mixtral", "llama", false, true, true},
      // GGUF (llama.cpp's qwen2moe) needs expert_feed_forward_length keys: not written yet.
      {"Qwen2MoeForCausalLM", "qwen2_moe", "qwen2moe", true, true, false, true, false},
  };
  return kArchSpecs;
}

std::optional<ConfigValue> u32(int64_t v) {
  if (v <= 0) return std::nullopt;
  return static_cast<uint32_t>(v);
}

}  // namespace

const std::vector<TensorRole>& tensor_roles() { return roles(); }

const TensorRole& tensor_role(Role role) {
  for (const auto& r : roles()) {
    if (r.role == role) return r;
  }
  fail("internal: tensor role {} has no row", static_cast<int>(role));
}

std::string hf_name(Role role, int64_t layer, int64_t expert) {
  return expand(tensor_role(role).hf, layer, expert);
}

std::string gguf_name(Role role, int64_t layer) {
  const TensorRole& r = tensor_role(role);
  AMALGAM_CHECK(!r.gguf.empty(), "internal: '{}' has no single GGUF name", r.hf);
  return expand(r.gguf, layer);
}

namespace {

// Matches `name` against a template whose ${layer_index} / ${expert_index} stand for digits.
bool match_template(std::string_view t, std::string_view name, RoleMatch& m) {
  constexpr std::string_view kLayer = "${layer_index}", kExpert = "${expert_index}";
  size_t i = 0, j = 0;
  while (i < t.size()) {
    const bool layer = t.substr(i, kLayer.size()) == kLayer;
    const bool expert = t.substr(i, kExpert.size()) == kExpert;
    if (layer || expert) {
      size_t k = j;
      while (k < name.size() && k - j < 9 && name[k] >= '0' && name[k] <= '9') ++k;
      if (k == j) return false;
      const int64_t v = std::stoll(std::string(name.substr(j, k - j)));
      (layer ? m.layer : m.expert) = v;
      i += layer ? kLayer.size() : kExpert.size();
      j = k;
      continue;
    }
    if (j >= name.size() || t[i] != name[j]) return false;
    ++i, ++j;
  }
  return j == name.size();
}

}  // namespace

std::optional<RoleMatch> match_hf_name(std::string_view name) {
  for (const auto& r : roles()) {
    RoleMatch m{r.role};
    if (match_template(r.hf, name, m)) return m;
  }
  return std::nullopt;
}

const std::vector<ArchSpec>& arch_specs() { return specs(); }

const ArchSpec* find_arch_spec(std::string_view architecture, std::string_view model_type) {
  for (const auto& a : specs()) {
    if (!architecture.empty() && a.architecture == architecture) return &a;
  }
  for (const auto& a : specs()) {
    if (architecture.empty() && a.model_type == model_type) return &a;
  }
  return nullptr;
}

const ArchSpec* find_arch_spec_gguf(std::string_view gguf_arch, bool moe) {
  for (const auto& a : specs()) {
    if (a.gguf && a.gguf_arch == gguf_arch && a.moe == moe) return &a;
  }
  return nullptr;
}

const std::vector<ConfigKey>& config_keys() {
  using C = io::ModelConfig;
  static const std::vector<ConfigKey> keys = {
      {"vocab_size", [](const C& c) { return u32(c.vocab_size); }},
      {"context_length", [](const C& c) { return u32(c.max_position_embeddings); }},
      {"embedding_length", [](const C& c) { return u32(c.hidden_size); }},
      {"block_count", [](const C& c) { return u32(c.num_layers); }},
      {"feed_forward_length", [](const C& c) { return u32(c.intermediate_size); }},
      {"attention.head_count", [](const C& c) { return u32(c.num_heads); }},
      {"attention.head_count_kv", [](const C& c) { return u32(c.num_kv_heads); }},
      {"attention.key_length", [](const C& c) { return u32(c.head_dim); }},
      {"attention.value_length", [](const C& c) { return u32(c.head_dim); }},
      {"rope.dimension_count",
       [](const C& c) {
         return u32(static_cast<int64_t>(std::lround(c.head_dim * c.rope.partial_rotary_factor)));
       }},
      {"attention.layer_norm_rms_epsilon",
       [](const C& c) -> std::optional<ConfigValue> { return static_cast<float>(c.rms_norm_eps); }},
      {"rope.freq_base",
       [](const C& c) -> std::optional<ConfigValue> { return static_cast<float>(c.rope.theta); }},
      {"expert_count", [](const C& c) { return u32(c.num_experts); }},
      {"expert_used_count", [](const C& c) { return u32(c.experts_per_token); }},
  };
  return keys;
}

}  // namespace amalgam::arch
