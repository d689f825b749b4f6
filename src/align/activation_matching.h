// Activation matching (spec 5.1, Git Re-Basin's activation method): both models run on the same
// calibration rows; for every group, S[a, b] = -||z_A[a] - z_B[b]||_2 over all tokens (PLeaS's
// default cdist similarity), and one linear assignment maximises sum_a S[a, P(a)].
// Features: residual stream = the embedding output and the residual after every attention and
// every MLP block; MLP units = silu(gate) * up; a KV head = its k and v outputs with the q
// outputs and attention outputs of its query group (q before RoPE, so dimensions line up). Inside
// a pair of KV heads the query heads are matched first (on q), then the value dimensions (on v and
// the attention outputs); the pair's similarity then uses both, and the KV heads are matched last.
#pragma once

#include <cstdint>
#include <vector>

#include "align/params.h"
#include "align/permutation.h"

namespace amalgam::align {

struct ActivationMatch {
  ModelPermutation permutation;
  // S of every unit of A with its matched unit of B (PLeaS merges the most similar pairs).
  std::vector<double> residual_score;          // (D)
  std::vector<std::vector<double>> mlp_score;  // [layer] (I)
  std::vector<std::vector<double>> kv_score;   // [layer] (KV)
  // Mean square of the residual-stream features of A and B over all tokens and residual points.
  double residual_ms_a = 0, residual_ms_b = 0;
};

struct ActivationMatchingOptions {
  int64_t batch_rows = 8;
  bool progress = true;
};

ActivationMatch activation_matching(const LlamaParams& a, const LlamaParams& b,
                                    const std::vector<std::vector<int32_t>>& rows,
                                    const ActivationMatchingOptions& options);

}  // namespace amalgam::align
