// A decoder-only transformer (Llama, Mistral, Qwen2, Mixtral) evaluated on the CPU.
// Built from a config and weight views; the views' memory (an mmapped checkpoint, or tensors
// merged in RAM) must outlive the model, which can hold it alive through `keepalive`.
// Weights are read in their stored dtype; every activation is fp32.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "infer/arch.h"
#include "infer/batch.h"
#include "infer/dump.h"
#include "infer/kv_cache.h"
#include "infer/rope.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

namespace amalgam::infer {

// Wall time per stage of the forward pass, accumulated over calls (for benchmarks and -v).
struct StageTimes {
  std::map<std::string, double> seconds;
  void add(const std::string& stage, double s) { seconds[stage] += s; }
};

struct ForwardOptions {
  // Record, for the last batch token of each sequence, the input hidden state of every layer and
  // the final normed state (num_layers + 1 rows of hidden_size, as transformers'
  // output_hidden_states).
  bool hidden_states = false;
  Dumper* dump = nullptr;
  StageTimes* profile = nullptr;
  // Tokens per micro-batch; long batches are evaluated in slices of this many tokens.
  int64_t micro_batch = 512;
  // MoE models, for tests and debugging: >= 0 sends every token to this expert with weight 1,
  // whatever the router says (a MoE built from dense experts then computes that expert).
  int64_t force_expert = -1;
  // Bidirectional attention (LS-unLLaMA): every token attends to every cache entry of its
  // sequence, later positions included. The whole batch must fit in one micro-batch (a later
  // token is visible only once it is in the cache).
  bool unmasked = false;
};

struct ForwardResult {
  int64_t vocab = 0;
  std::vector<int32_t> rows;  // batch indices whose logits were computed, in batch order
  std::vector<float> logits;  // (rows.size(), vocab)
  std::map<int32_t, std::vector<float>> hidden;  // seq -> (num_layers + 1, hidden_size)

  std::span<const float> row(size_t i) const {
    return {logits.data() + i * static_cast<size_t>(vocab), static_cast<size_t>(vocab)};
  }
  // Logits of batch token `batch_index` (which must have asked for them).
  std::span<const float> logits_of(int32_t batch_index) const;
};

class Model {
 public:
  // `quantized`: matrices kept in a GGUF block type, beside `weights` (a GGUF file run as stored).
  Model(io::ModelConfig config, WeightMap weights, std::shared_ptr<const void> keepalive = {},
        QuantizedMap quantized = {});

  const io::ModelConfig& config() const { return config_; }
  const ArchInfo& arch() const { return *arch_; }
  const ModelWeights& weights() const { return weights_; }
  // The tensors the model was built from, by checkpoint name.
  const WeightMap& tensor_views() const { return views_; }
  const Rope& rope() const { return rope_; }
  int64_t vocab_size() const { return weights_.lm_head.rows; }
  int64_t hidden_size() const { return config_.hidden_size; }
  int64_t num_layers() const { return config_.num_layers; }
  // Positions the model was trained for (config.json max_position_embeddings, which rope scaling
  // in config.json already extends); 0 when unbounded (dynamic NTK rope, or no such key).
  int64_t context_length() const;
  // "256 positions (config.json max_position_embeddings, rope default)", for messages.
  std::string context_description() const;
  // Bytes of weights read per decoded token (all matrices except the embedding table; for MoE,
  // every expert).
  uint64_t weight_bytes_per_token() const;

  // A cache in the process default type (--kv-cache), evicting what the window no longer sees
  // when every layer slides (Mistral).
  KVCache new_cache() const { return new_cache(default_kv_type()); }
  // `evict` false keeps every entry whatever the window (to compare against, or to rewind far).
  KVCache new_cache(KVType type, bool evict = true) const;
  // The window every layer attends within (the largest if they differ), 0 if some layer sees
  // the whole sequence: what a cache may evict by.
  int64_t eviction_window() const;
  ForwardResult forward(const Batch& batch, KVCache& cache,
                        const ForwardOptions& options = {}) const;

 private:
  void forward_micro_batch(const BatchToken* tokens, int64_t n, int64_t first_index, KVCache& cache,
                           const std::map<int32_t, int64_t>& last_of_seq,
                           const ForwardOptions& options, ForwardResult& result) const;
  void feed_forward_dense(const LayerWeights& lw, const float* h, int64_t n, int64_t layer,
                          const ForwardOptions& options, std::vector<float>& scratch,
                          float* out) const;
  void feed_forward_moe(const LayerWeights& lw, const float* h, int64_t n, int64_t layer,
                        const ForwardOptions& options, float* out) const;

  io::ModelConfig config_;
  const ArchInfo* arch_;
  WeightMap views_;
  QuantizedMap quantized_;
  std::shared_ptr<const void> keepalive_;
  ModelWeights weights_;
  Rope rope_;
};

// Weight views of every tensor of a checkpoint (zero-copy into its mmapped files).
WeightMap checkpoint_weights(const io::Checkpoint& checkpoint);
// Copies of `views` and of `quantized`'s matrices (rewritten in place to point at their copies),
// in their stored types, in anonymous memory on transparent huge pages where the kernel allows
// it, each on a 64-byte boundary; *storage is set to the memory that holds them.
WeightMap copy_weights_into_memory(const WeightMap& views, QuantizedMap* quantized,
                                   std::shared_ptr<const void>* storage);

struct LoadOptions {
  // false: weights are read from the memory-mapped files (zero copy, pages shared with the page
  // cache). true: weights are copied once into memory of the process's own
  // (copy_weights_into_memory), at the cost of a private copy and a slower load, as llama.cpp's
  // --no-mmap; decoding streams them faster and more steadily (docs/performance.md).
  bool in_memory = false;
};

// Opens a model directory (config.json + safetensors) or a GGUF file; the model keeps the
// checkpoint mapped (or its in-memory copy) alive.
std::unique_ptr<Model> load_model(const std::filesystem::path& path,
                                  const LoadOptions& options = {});

}  // namespace amalgam::infer
