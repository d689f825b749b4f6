// PLeaS (spec 5.1-5.3): merges two models that need not share a base into one ordinary Llama
// checkpoint of width between 1x and 2x.
//   1. Activation matching aligns B to A (activation_matching.h); per group, the fraction r of
//      units whose matched pair is least similar is kept separate (once from A, once from B), the
//      rest merged: width (1 + r) n. Rule for r: every group gets r = width - 1, so every size in
//      config.json (hidden, intermediate, KV heads with their query heads) grows by `width`
//      (rounded to whole units); head_dim stays.
//   2. Layer-wise least squares: every linear layer of the merged model is fitted, in closed form
//      with ridge, to map the merged features of the original models' inputs,
//      X = [(X_A[m] + X_B[m]) / 2; X_A[sepA]; X_B[sepB]], to the same combination of their
//      outputs; rows of A-only outputs see only [merged, sepA] inputs and rows of B-only outputs
//      only [merged, sepB] (the cross blocks stay zero). Outputs are linear in the inputs
//      (Y_A = W_A X_A), so Y X^T = W_A (X_A X^T) and only X X^T, X_A X^T and X_B X^T are
//      accumulated: O(d^2) memory per input space, whatever the vocabulary or token count.
// RMSNorm weights are folded into the projections that read them first (exact), so the layers
// see the parameter-free normalised residual and the merged norms are all ones. The embedding
// is combined as a 1-axis tensor; lm_head is fitted to the average of both models' logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "align/activation_matching.h"
#include "align/params.h"

namespace amalgam::align {

struct PleasOptions {
  double width = 1.0;   // in [1, 2]
  double ridge = 1e-4;  // lambda = ridge x mean diagonal of the Gram matrix
  int64_t batch_rows = 8;
  bool progress = true;
  // Scale B's residual stream (embedding, o_proj, down_proj; exact up to RMSNorm's eps) so that
  // its mean square matches A's before merging: RMSNorm of the widened stream normalises A's and
  // B's separate coordinates together, which is only right when both have the same scale.
  // Off by default: on the zoo pair it raised rev at width 2 (0.45 -> 0.73) but also the held-out
  // nll (2.24 -> 2.39); see docs/pleas.md.
  bool match_scale = false;
  // After the independent fit, refit layer after layer on the merged model's own inputs.
  bool sequential = false;
};

struct PleasReport {
  int64_t hidden = 0, intermediate = 0, kv_heads = 0, heads = 0;
  int64_t tokens = 0;
  double residual_scale = 1.0;  // factor applied to B's residual stream
  double sequential_seconds = 0;
  double match_seconds = 0, accumulate_seconds = 0, solve_seconds = 0;
};

// Fails on a width outside [1, 2], tied embeddings, or fewer calibration tokens than the widest
// least-squares problem has inputs.
LlamaParams pleas_merge(const LlamaParams& a, const LlamaParams& b,
                        const std::vector<std::vector<int32_t>>& rows, const PleasOptions& options,
                        PleasReport* report = nullptr);

// Multiplies the residual stream of a model by c (embedding, o_proj and down_proj); RMSNorm
// removes the factor, so the function is unchanged except for eps.
void scale_residual(LlamaParams& m, double c);

// Units kept separate by the rule above: the `round((width - 1) n)` least similar ones.
int64_t separate_units(int64_t n, double width);

}  // namespace amalgam::align
