// Router rows of a MoE built from dense experts, as mergekit-moe computes them
// (spec mergekit-compat.md section 5, mergekit/moe/router.py):
//  * hidden: each prompt is BOS + its tokens, run through the base model alone; the input hidden
//    state of every layer at the last token, averaged over the expert's prompts; minus the same
//    for its negative prompts; each layer's vector L2-normalised (norm clamped at 1e-8).
//    (mergekit batches prompts with left padding; RoPE is relative and padding is masked, so a
//    prompt evaluated alone gives the same states.)
//  * cheap_embed: the sum of the embedding rows of every token of every prompt (BOS included),
//    L2-normalised; minus the same for negative prompts; normalised again; the same for every
//    layer.
//  * random: N(0, 1); uniform_random: U(-1/sqrt(D), 1/sqrt(D)) (seeded std::mt19937_64; the
//    values differ from torch's generator).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "infer/model.h"
#include "moe/config.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::moe {

// (layers, experts, hidden) router rows.
struct GateVectors {
  int64_t layers = 0;
  int64_t experts = 0;
  int64_t hidden = 0;
  std::vector<float> data;

  GateVectors(int64_t l, int64_t e, int64_t d)
      : layers(l), experts(e), hidden(d), data(static_cast<size_t>(l * e * d), 0.0f) {}
  float* row(int64_t layer, int64_t expert) { return &data[(layer * experts + expert) * hidden]; }
  const float* row(int64_t layer, int64_t expert) const {
    return &data[(layer * experts + expert) * hidden];
  }
};

// BOS + the prompt's tokens (no BOS when the tokenizer has none).
std::vector<int32_t> prompt_tokens(const tokenizer::Tokenizer& tokenizer, const std::string& text);

GateVectors hidden_gates(const infer::Model& base, const tokenizer::Tokenizer& tokenizer,
                         const std::vector<ExpertConfig>& experts);
GateVectors cheap_embed_gates(const infer::Model& base, const tokenizer::Tokenizer& tokenizer,
                              const std::vector<ExpertConfig>& experts);
GateVectors random_gates(int64_t layers, int64_t experts, int64_t hidden, bool uniform,
                         uint64_t seed);

// 2-norm condition number of each layer's (experts, hidden) router matrix.
std::vector<double> condition_numbers(const GateVectors& gates);

}  // namespace amalgam::moe
