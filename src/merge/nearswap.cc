// nearswap (spec/mergekit-compat.md 1.12): takes the other model's value where it lies within t
// of the base, and moves only part of the way towards it elsewhere:
//   w = clamp(t / max(|B - X|, 1e-6), 0, 1),  out = w X + (1 - w) B.
// Purely elementwise, so it streams without a statistics pass.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "merge/registry.h"

namespace amalgam::merge {

namespace {

constexpr float kMinDistance = 1e-6f;  // mergekit's clamp of |B - X|

class NearSwapMerger : public ChunkMerger {
 public:
  NearSwapMerger(size_t base, float t) : base_(base), t_(t) {}

  // B, X chunks (n) -> out (n) = w X + (1 - w) B, in this form (as mergekit) for its rounding.
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    const float* b = inputs[base_];
    const float* x = inputs[1 - base_];
    const float t = t_;
    for (size_t j = 0; j < n; ++j) {
      const float w = std::clamp(t / std::max(std::fabs(b[j] - x[j]), kMinDistance), 0.0f, 1.0f);
      out[j] = w * x[j] + (1.0f - w) * b[j];
    }
  }

 private:
  size_t base_;
  float t_;
};


ParamSpec t_spec() {
  ParamSpec s = real_spec("t", std::nullopt, 0, std::numeric_limits<double>::infinity(),
                          "distance within which the other model's value is taken whole");
  s.searchable = true;
  // Weight differences of fine-tunes are mostly below 1e-2; t = 1e-4 is the published setting.
  s.search_min = 0;
  s.search_max = 1e-3;
  return s;
}

class NearSwap : public MergeMethod {
 public:
  NearSwap()
      : MergeMethod(
            {.name = "nearswap",
             .title = "NearSwap",
             .reference = "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
             .summary = "takes the other model's values where they lie within t of the base",
             .base = BaseRole::kRequired,
             .embed = EmbedRule::kCommonSubMatrix,
             .inputs = 2,
             .params = {t_spec()}}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override {
    global_param(entry, "t");  // required even where a tensor is only copied, as in mergekit
    if (entry.sources.size() == 1) return;  // a tensor only the base has is copied
    if (entry.sources.size() != 2) {
      fail("tensor '{}': nearswap merges exactly two models (the base and one other), got {}",
           entry.name, entry.sources.size());
    }
    require_base(entry, name());
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    check(in.entry);
    if (in.entry.sources.size() == 1) return copy_input(0);
    return std::make_unique<NearSwapMerger>(*in.entry.base,
                                            static_cast<float>(global_param(in.entry, "t")));
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_nearswap() { return std::make_unique<NearSwap>(); }

}  // namespace amalgam::merge
