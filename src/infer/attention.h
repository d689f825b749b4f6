// Causal (optionally sliding-window) grouped-query attention of batch tokens over the KV cache.
#pragma once

#include <cstdint>

#include "infer/batch.h"
#include "infer/kv_cache.h"

namespace amalgam::infer {

struct AttentionShape {
  int64_t heads = 0;     // H query heads
  int64_t kv_heads = 0;  // Hkv; query head h reads kv head h / (H / Hkv)
  int64_t head_dim = 0;  // d
  int64_t window = 0;    // sliding window in tokens, 0 = none
  bool causal = true;    // false: no causal mask (later positions visible too)
};

// out (n, H*d): for each token and head, softmax(q.K^T / sqrt(d) + mask) . V over the cache
// entries of the token's sequence (layer `layer`), where an entry at position pj is visible from
// position p iff pj <= p (unless !causal) and (no window or |p - pj| < window). Tokens of a
// sequence with many queries in the batch go through sgemm (S = Q.K^T, O = P.V); others through a
// per-token loop that skips masked entries. Both compute the same values up to fp32 rounding.
void attention(const AttentionShape& shape, const BatchToken* tokens, int64_t n, const float* q,
               const KVCache& cache, int64_t layer, float* out);

// Queries of one sequence at or above which the sgemm path is used.
inline constexpr int64_t kAttentionGemmMinQueries = 8;

}  // namespace amalgam::infer
