// A dense Llama-family checkpoint held in RAM as fp32 tensors, the working form of alignment and
// PLeaS (both rewrite every tensor, and the models they target fit in memory twice over).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "infer/model.h"
#include "io/hf_config.h"
#include "tensor/tensor.h"

namespace amalgam::align {

struct LlamaParams {
  std::filesystem::path dir;  // where config.json and tokenizer files came from
  io::ModelConfig config;
  tensor::DType dtype = tensor::DType::kF32;  // stored dtype of the weights (written back as such)
  std::map<std::string, tensor::Tensor> tensors;

  int64_t hidden() const { return config.hidden_size; }
  int64_t intermediate() const { return config.intermediate_size; }
  int64_t heads() const { return config.num_heads; }
  int64_t kv_heads() const { return config.num_kv_heads; }
  int64_t head_dim() const { return config.head_dim; }
  int64_t layers() const { return config.num_layers; }
  int64_t vocab() const { return config.vocab_size; }
  bool tied() const { return tensors.count("lm_head.weight") == 0; }

  tensor::Tensor& at(const std::string& name);
  const tensor::Tensor& at(const std::string& name) const;
};

// Tensor names of layer l: "model.layers.<l>.<suffix>".
std::string layer_tensor(int64_t layer, const std::string& suffix);

// Loads a checkpoint directory. Fails (naming the path) unless it is a dense Llama-layout decoder
// without biases: MoE, q/k/v biases and partial rotary embeddings have no alignment rule here.
LlamaParams load_llama(const std::filesystem::path& path);

// Fails naming both paths and the first difference unless A and B have the same architecture,
// sizes, vocabulary and tensor names.
void check_same_shape(const LlamaParams& a, const LlamaParams& b);

// Writes the checkpoint into `out` atomically (staged, renamed at the end): tensors in `dtype`,
// config.json from params.config.raw, tokenizer and generation files copied from params.dir.
void save_llama(const LlamaParams& params, const std::filesystem::path& out, bool force);

// An inference-engine model over the fp32 tensors (no copy: params must outlive it).
std::unique_ptr<infer::Model> make_model(const LlamaParams& params);

}  // namespace amalgam::align
