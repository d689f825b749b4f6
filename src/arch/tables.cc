// Architecture tables, as data. Names come from the role table (roles.cc) and follow the Hugging
// Face checkpoints (and mergekit's
// _data/architectures JSON files). Biases that some checkpoints of an architecture carry are
// listed as optional: they are merged when present and skipped when no model has them.
#include <algorithm>
#include <map>

#include "arch/architecture.h"
#include "arch/roles.h"

namespace amalgam::arch {

namespace {

// The Hugging Face name template of a role, from the one table in roles.cc.
std::string hf(Role role) { return std::string(tensor_role(role).hf); }

WeightSpec w(std::string name) {
  WeightSpec spec;
  spec.name = std::move(name);
  return spec;
}

WeightSpec optional(std::string name) {
  WeightSpec spec = w(std::move(name));
  spec.optional = true;
  return spec;
}

WeightSpec embedding(std::string name) {
  WeightSpec spec = w(std::move(name));
  spec.is_embed = true;
  return spec;
}

// Checkpoints with tie_word_embeddings have no lm_head; reading embed_tokens instead is exact.
WeightSpec tied_head(std::string name, std::string alias, std::string embeddings) {
  WeightSpec spec = embedding(std::move(name));
  spec.optional = true;
  spec.aliases = {std::move(alias)};
  spec.tied_names = {std::move(embeddings)};
  return spec;
}

const WeightSpec kEmbedTokens = embedding(hf(Role::kTokenEmbd));
const WeightSpec kFinalNorm = w(hf(Role::kOutputNorm));
const WeightSpec kLmHead =
    tied_head(hf(Role::kOutput), "model.lm_head.weight", hf(Role::kTokenEmbd));

const std::vector<WeightSpec> kLlamaAttention = {
    w(hf(Role::kAttnNorm)),
    w(hf(Role::kAttnQ)),
    w(hf(Role::kAttnK)),
    w(hf(Role::kAttnV)),
    w(hf(Role::kAttnOut)),
    optional(hf(Role::kAttnQBias)),  // attention_bias: true
    optional(hf(Role::kAttnKBias)),
    optional(hf(Role::kAttnVBias)),
    optional(hf(Role::kAttnOutBias)),
    w(hf(Role::kFfnNorm)),
};

const std::vector<WeightSpec> kLlamaMlp = {
    w(hf(Role::kFfnGate)),          w(hf(Role::kFfnUp)),
    w(hf(Role::kFfnDown)),          optional(hf(Role::kFfnGateBias)),  // mlp_bias: true
    optional(hf(Role::kFfnUpBias)), optional(hf(Role::kFfnDownBias)),
};

// Qwen2 always has q/k/v biases (and never an o_proj bias).
const std::vector<WeightSpec> kQwen2Attention = {
    w(hf(Role::kAttnNorm)),  w(hf(Role::kAttnQ)),     w(hf(Role::kAttnQBias)),
    w(hf(Role::kAttnK)),     w(hf(Role::kAttnKBias)), w(hf(Role::kAttnV)),
    w(hf(Role::kAttnVBias)), w(hf(Role::kAttnOut)),   w(hf(Role::kFfnNorm)),
};

const std::vector<WeightSpec> kMixtralAttention = {
    w(hf(Role::kAttnNorm)), w(hf(Role::kAttnQ)),   w(hf(Role::kAttnK)),
    w(hf(Role::kAttnV)),    w(hf(Role::kAttnOut)), w(hf(Role::kFfnNorm)),
};

// transformers 5: experts stacked into [E, 2I, H] (gate rows then up rows) and [E, H, I].
const std::vector<WeightSpec> kMixtralFusedExperts = {
    w(hf(Role::kFusedRouter)),
    w(hf(Role::kFusedExpertsGateUp)),
    w(hf(Role::kFusedExpertsDown)),
};

// transformers 4 and most published checkpoints: one tensor per expert; w1 = gate, w3 = up,
// w2 = down.
const std::vector<WeightSpec> kMixtralClassicExperts = {
    w(hf(Role::kRouter)),
    w(hf(Role::kExpertGate)),
    w(hf(Role::kExpertDown)),
    w(hf(Role::kExpertUp)),
};

std::vector<WeightSpec> concat(std::vector<WeightSpec> a, const std::vector<WeightSpec>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Architecture dense(std::string name, const std::vector<WeightSpec>& attention) {
  return Architecture{std::move(name),
                      {kEmbedTokens},
                      {LayerLayout{"dense", concat(attention, kLlamaMlp)}},
                      {kFinalNorm, kLmHead}};
}

const std::map<std::string, Architecture, std::less<>>& tables() {
  static const auto* all = [] {
    auto* t = new std::map<std::string, Architecture, std::less<>>;
    for (Architecture a : {
             dense("LlamaForCausalLM", kLlamaAttention),
             dense("MistralForCausalLM", kLlamaAttention),
             dense("Qwen2ForCausalLM", kQwen2Attention),
             Architecture{"MixtralForCausalLM",
                          {kEmbedTokens},
                          {LayerLayout{"fused experts (transformers 5)",
                                       concat(kMixtralAttention, kMixtralFusedExperts)},
                           LayerLayout{"per-expert tensors (block_sparse_moe)",
                                       concat(kMixtralAttention, kMixtralClassicExperts)}},
                          {kFinalNorm, kLmHead}},
         }) {
      std::string name = a.name;
      t->emplace(std::move(name), std::move(a));
    }
    return t;
  }();
  return *all;
}

}  // namespace

const Architecture* find_architecture(std::string_view name) {
  auto it = tables().find(name);
  return it == tables().end() ? nullptr : &it->second;
}

std::vector<std::string> architecture_names() {
  std::vector<std::string> names;
  for (const auto& [name, a] : tables()) names.push_back(name);
  return names;
}

}  // namespace amalgam::arch
