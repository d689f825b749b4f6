// The tensors and config.json of a Mixtral MoE assembled from dense Llama/Mistral experts
// (mergekit/moe/mixtral.py): attention, norms, embeddings and lm_head from the base model; in
// every layer, expert e's gate_proj / up_proj / down_proj become w1 / w3 / w2 of expert e
// (down_proj times residual_scale; N(0, noise_scale^2) noise added to all three when asked); the
// router rows from GateVectors.
// Layouts: per expert (transformers 4, llama.cpp):
//   model.layers.L.block_sparse_moe.gate.weight (E, D)
//   model.layers.L.block_sparse_moe.experts.e.{w1,w3}.weight (I, D), .w2.weight (D, I)
// fused (transformers 5): model.layers.L.mlp.gate.weight (E, D),
//   model.layers.L.mlp.experts.gate_up_proj (E, 2I, D) (gate rows, then up rows),
//   model.layers.L.mlp.experts.down_proj (E, D, I).
// Qwen2-MoE (mergekit/moe/qwen.py), when a shared expert is given: the same from the base, q/k/v
// biases of zeros where the base has none (Qwen2 attention always has them); per layer
//   model.layers.L.mlp.gate.weight (E, D), model.layers.L.mlp.shared_expert_gate.weight (1, D),
//   model.layers.L.mlp.experts.e.{gate,up,down}_proj.weight (or the fused pair above),
//   model.layers.L.mlp.shared_expert.{gate,up,down}_proj.weight.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "merge/sink.h"
#include "moe/config.h"
#include "moe/router.h"
#include "tensor/dtype.h"

namespace amalgam::moe {

struct AssembleOptions {
  bool fused = false;
  uint64_t seed = 0;  // noise_scale
};

class MoeAssembler {
 public:
  // Opens the base and every expert and checks, before any weight is read, that they are
  // Llama/Mistral models of the base's shape and vocabulary with the MLP tensors expected.
  MoeAssembler(const MoeConfig& config, const AssembleOptions& options);

  const io::ModelConfig& base_config() const { return base_config_; }
  OutputArch output_arch() const { return arch_; }
  const io::Checkpoint& base() const { return *base_; }
  tensor::DType dtype() const { return dtype_; }
  // Routed experts: the listed ones, then calibration.bos_expert's mix when given.
  int64_t experts() const { return routed_experts(config_); }
  // Router rows per layer: the routed experts, then the shared expert's gate (Qwen2-MoE).
  int64_t gate_rows() const { return experts() + (shared_ ? 1 : 0); }
  const std::vector<io::OutputTensorSpec>& specs() const { return specs_; }
  // Index in specs() of layer l's router.
  size_t router_index(int64_t layer) const { return router_index_.at(static_cast<size_t>(layer)); }

  // The base's config.json made a Mixtral or Qwen2-MoE config (keys in the base's order, MoE
  // keys set).
  nlohmann::ordered_json output_config() const;
  io::ModelConfig output_model_config() const;

  // Writes every tensor of specs() into the sink (begin .. finish). `gates` has gate_rows() rows.
  void write(const GateVectors& gates, merge::TensorSink& sink) const;

 private:
  void write_routers(const GateVectors& gates, merge::TensorSink& sink) const;
  // Expert `expert`'s (experts() for the shared expert) MLP tensor, noised and scaled; the
  // bos_expert's is the weighted sum of the listed experts' tensors.
  std::vector<float> expert_tensor(int64_t expert, int64_t layer, const std::string& proj) const;
  std::unique_ptr<io::Checkpoint> open_expert(const ExpertConfig& e, const std::string& what) const;
  void add_layer_specs(int64_t layer);

  const MoeConfig& config_;
  AssembleOptions options_;
  OutputArch arch_ = OutputArch::kMixtral;
  std::unique_ptr<io::Checkpoint> base_;
  std::vector<std::unique_ptr<io::Checkpoint>> experts_;
  std::unique_ptr<io::Checkpoint> shared_;  // Qwen2-MoE only
  io::ModelConfig base_config_;
  tensor::DType dtype_ = tensor::DType::kBF16;
  std::vector<io::OutputTensorSpec> specs_;
  std::vector<std::string> base_names_;  // copied from the base, in specs_ order
  std::vector<size_t> zero_index_;       // q/k/v biases of zeros (Qwen2-MoE from Llama)
  std::vector<size_t> router_index_;
};

}  // namespace amalgam::moe
