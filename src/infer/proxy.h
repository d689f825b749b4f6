// Proxy tuning (Liu et al., COLM 2024, arXiv:2401.08565): a large untuned model steered by the
// difference between a small tuned expert and its small untuned anti-expert, at decoding time:
//   logits = large(x) + alpha * (expert(x) - anti(x))        (alpha = 1 by default)
// The three models read the same batch, each with its own KV cache, so a chosen token is
// appended to all three contexts. They must share the tokenizer: equal vocabulary sizes are
// required (checked), identical token ids are assumed.
#pragma once

#include <cstdint>

#include "infer/logit_source.h"
#include "infer/model.h"

namespace amalgam::infer {

class ProxyLogits final : public LogitSource {
 public:
  // The models must outlive the source. Fails when the vocabulary sizes differ.
  ProxyLogits(const Model& large, const Model& expert, const Model& anti, float alpha = 1.0f);

  int64_t vocab_size() const override { return large_.vocab_size(); }
  // The shortest of the three models' contexts.
  int64_t context_length() const override;
  float alpha() const { return alpha_; }
  // Three forward passes over `batch`; options.hidden_states is not supported (fails).
  ForwardResult forward(const Batch& batch, const ForwardOptions& options = {}) override;
  void clear(int32_t seq) override;
  void clear() override;

 private:
  ModelLogits large_, expert_, anti_;
  float alpha_;
};

}  // namespace amalgam::infer
