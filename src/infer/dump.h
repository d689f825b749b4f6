// Named intermediates of the forward pass, recorded on request for layer-by-layer comparison
// with other engines (llama.cpp's eval-callback, llm.c's reference state). Names are
// "<tensor>.<layer>" for per-layer tensors and plain "<tensor>" for the others:
//   embd, attn_norm.L, q.L, k.L, v.L (projections incl. bias, before RoPE), q_rope.L, k_rope.L,
//   attn.L (heads concatenated, before o_proj), attn_out.L (after o_proj), ffn_inp.L (residual
//   after attention), ffn_norm.L, gate.L, up.L, ffn_act.L (silu(gate)*up; dense only),
//   router.L (router logits; MoE only), shared_gate.L (shared-expert gate logit, before the
//   sigmoid; Qwen2-MoE only), ffn_out.L, l_out.L (layer output), result_norm, logits.
// Every tensor has one row per batch token (result_norm and logits: per token with logits).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace amalgam::infer {

struct DumpTensor {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // (rows, cols)
};

class Dumper {
 public:
  // Selectors: "attn_out.3" (one layer), "attn_out" (every layer), "all".
  explicit Dumper(std::vector<std::string> selectors);

  bool wants(std::string_view tensor, int64_t layer) const;
  // Appends rows (successive micro-batches of one forward pass add up).
  void record(std::string_view tensor, int64_t layer, const float* data, int64_t rows,
              int64_t cols);
  const std::map<std::string, DumpTensor>& tensors() const { return tensors_; }
  void clear() { tensors_.clear(); }

  static std::string name(std::string_view tensor, int64_t layer);
  static const std::vector<std::string_view>& known_tensors();

 private:
  bool all_ = false;
  std::set<std::string, std::less<>> selectors_;
  std::map<std::string, DumpTensor> tensors_;
};

}  // namespace amalgam::infer
