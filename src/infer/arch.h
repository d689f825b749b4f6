// Architectures as data: which config and tensor names a decoder uses, and the resolution of a
// WeightMap (name -> view) into per-layer weights with every shape and dtype checked up front.
// Llama, Mistral, Qwen2, Mixtral and Qwen2-MoE share one block; they differ only in their rows
// of arch/roles.h (mandatory q/k/v biases, MoE feed-forward, shared expert) and in config values
// (sliding window, tied embeddings, rope, which layers are sparse).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "arch/roles.h"
#include "gguf/format.h"
#include "infer/matmul.h"
#include "io/hf_config.h"
#include "tensor/tensor.h"

namespace amalgam::infer {

using WeightMap = std::map<std::string, tensor::TensorView>;
// Matrices kept in a GGUF block type (a GGUF file run as stored), by checkpoint name.
using QuantizedMap = std::map<std::string, gguf::QuantizedMatrix>;

// A row of the architecture table (arch/roles.h).
using ArchInfo = arch::ArchSpec;

// Finds the row for a config by architecture, then by model_type; fails naming both otherwise.
const ArchInfo& find_arch(const io::ModelConfig& config);

struct Linear {
  WeightMatrix w;
  std::vector<float> bias;  // empty when the projection has none
};

struct Expert {
  WeightMatrix gate;  // (I, D)  w1
  WeightMatrix up;    // (I, D)  w3
  WeightMatrix down;  // (D, I)  w2
};

struct LayerWeights {
  std::vector<float> attn_norm;  // (D)
  std::vector<float> ffn_norm;   // (D)
  Linear q, k, v, o;
  Linear gate, up, down;        // dense feed-forward
  WeightMatrix router;          // (E, D), MoE only
  std::vector<Expert> experts;  // MoE only
  bool norm_topk = true;        // top-k weights renormalised (Mixtral; Qwen2-MoE's norm_topk_prob)
  bool has_shared = false;      // Qwen2-MoE: shared expert + its gate
  Expert shared;                // (Is, D), (Is, D), (D, Is)
  WeightMatrix shared_gate;     // (1, D): sigmoid(shared_gate . x) scales the shared expert
  int64_t window = 0;           // sliding-window size in tokens, 0 = full causal attention
};

struct ModelWeights {
  WeightMatrix embed;  // (V, D)
  std::vector<float> final_norm;
  WeightMatrix lm_head;  // (V, D); the embedding matrix when tied
  std::vector<LayerWeights> layers;
};

// Resolves and validates all weights. Fails on the first missing tensor or wrong shape, naming it.
// A matrix may come from either map.
ModelWeights resolve_weights(const io::ModelConfig& config, const ArchInfo& arch,
                             const WeightMap& weights, const QuantizedMap& quantized = {});

// Per-layer sliding window (0 = none) from sliding_window, layer_types or Qwen2's
// max_window_layers.
std::vector<int64_t> layer_windows(const io::ModelConfig& config);

}  // namespace amalgam::infer
