// What decoding and evaluation need from a model: logits for the batch tokens that ask for them,
// with per-sequence state (KV caches) kept between calls. A plain model is one source; proxy
// tuning (proxy.h) combines three models into another, so greedy/sampled generation and the
// packed evaluation runner work unchanged on either.
#pragma once

#include <cstdint>

#include "infer/batch.h"
#include "infer/kv_cache.h"
#include "infer/model.h"

namespace amalgam::infer {

class LogitSource {
 public:
  virtual ~LogitSource() = default;
  virtual int64_t vocab_size() const = 0;
  // Positions a sequence may use; 0: unbounded.
  virtual int64_t context_length() const = 0;
  // Appends the batch tokens to their sequences' state; logits as Model::forward returns them.
  virtual ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) = 0;
  // Forgets one sequence / every sequence (their ids may then be reused from position 0).
  virtual void clear(int32_t seq) = 0;
  virtual void clear() = 0;
};

// One model with its own KV cache. `model` must outlive the source.
class ModelLogits final : public LogitSource {
 public:
  explicit ModelLogits(const Model& model) : model_(model), cache_(model.new_cache()) {}
  int64_t vocab_size() const override { return model_.vocab_size(); }
  int64_t context_length() const override { return model_.context_length(); }
  ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) override {
    return model_.forward(batch, cache_, options);
  }
  void clear(int32_t seq) override { cache_.clear(seq); }
  void clear() override { cache_.clear(); }

 private:
  const Model& model_;
  KVCache cache_;
};

}  // namespace amalgam::infer
