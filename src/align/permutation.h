// Permutation groups of a dense Llama-family model, and their application to a checkpoint.
// Each group is a hidden dimension that several tensor axes share; permuting it consistently on
// all of them leaves the function unchanged:
//   residual stream: embedding and lm_head columns, every RMSNorm weight (RMSNorm is invariant
//     to a permutation of its input), q/k/v/gate/up columns, o/down rows;
//   MLP units of layer l: gate/up rows with down columns;
//   attention of layer l: KV heads, each moving with its GQA group of query heads (q rows, k/v
//     rows, o columns); the query heads inside a group (they share its K and V); the value
//     dimensions of a KV head (v rows with the matching o column of each query head of the group).
// Query/key dimensions stay in place: RoPE rotates pair (i, i + d/2) at frequency theta^(-2i/d),
// so moving a pair to another slot changes its frequency, and swapping a pair's two members
// reverses its rotation; neither preserves q.k.
#pragma once

#include <cstdint>
#include <vector>

#include "align/params.h"

namespace amalgam::align {

// Convention: for every group, perm[slot] = the unit of B that is placed at `slot` (the unit of A
// it is matched with). Within-head permutations are indexed by B's own KV head, so they travel
// with the head when the KV heads move.
struct LayerPermutation {
  std::vector<int64_t> mlp;                 // (I)
  std::vector<int64_t> kv;                  // (KV)
  std::vector<std::vector<int64_t>> query;  // [B kv head] -> (G), local query heads
  std::vector<std::vector<int64_t>> value;  // [B kv head] -> (head_dim)
};

struct ModelPermutation {
  std::vector<int64_t> residual;  // (D)
  std::vector<LayerPermutation> layers;
};

// Index maps along each kind of tensor axis for one layer: B_aligned[r] = B[map[r]].
struct AxisMaps {
  std::vector<int64_t> q_rows;  // (H * head_dim)
  std::vector<int64_t> k_rows;  // (KV * head_dim)
  std::vector<int64_t> v_rows;  // (KV * head_dim)
  std::vector<int64_t> o_cols;  // (H * head_dim)
};

ModelPermutation identity_permutation(const LlamaParams& model);
// A uniformly random element of every group (tests, benchmarks).
ModelPermutation random_permutation(const LlamaParams& model, uint64_t seed);
AxisMaps attention_maps(const LlamaParams& model, const LayerPermutation& p);

// B with every group permuted: the same function, its units reordered to line up with A's.
LlamaParams apply_permutation(const LlamaParams& b, const ModelPermutation& p);

// Rows and columns gathered: out[r, c] = w[rows[r], cols[c]] (an empty map = identity).
tensor::Tensor gather(const tensor::Tensor& w, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& cols);

}  // namespace amalgam::align
