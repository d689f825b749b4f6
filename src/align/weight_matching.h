// Git Re-Basin weight matching (spec 5.4): coordinate descent over the permutation groups of
// permutation.h. Each step fixes every group but one and solves one linear assignment on
// C[a, b] = sum over the tensors touching the group of <A's unit a, B's unit b>, with B's other
// axes already permuted; groups are visited in a seeded random order; the descent stops after a
// round in which no assignment improved its objective (or after max_rounds).
#pragma once

#include <cstdint>

#include "align/params.h"
#include "align/permutation.h"

namespace amalgam::align {

struct WeightMatchingOptions {
  int64_t max_rounds = 100;
  uint64_t seed = 0;
  bool progress = true;
};

struct MatchingStats {
  int64_t rounds = 0;
  double objective_before = 0;  // sum over groups of <A, B> at the identity
  double objective_after = 0;
};

ModelPermutation weight_matching(const LlamaParams& a, const LlamaParams& b,
                                 const WeightMatchingOptions& options,
                                 MatchingStats* stats = nullptr);

// Every group's <A, P(B)> summed: the objective weight matching increases.
double weight_objective(const LlamaParams& a, const LlamaParams& b, const ModelPermutation& p);

}  // namespace amalgam::align
