// linear (model soups): out = sum_i w_i X_i, divided by sum_i w_i when `normalize` (default).
#include "core/error.h"
#include "merge/registry.h"

namespace amalgam::merge {

namespace {

class LinearMerger : public ChunkMerger {
 public:
  explicit LinearMerger(std::vector<float> weights) : weights_(std::move(weights)) {}

  // inputs: N chunks (n) -> out (n) = sum_i weights_i * inputs_i
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    const float w0 = weights_[0];
    const float* x0 = inputs[0];
    for (size_t j = 0; j < n; ++j) out[j] = w0 * x0[j];
    for (size_t i = 1; i < inputs.size(); ++i) {
      const float w = weights_[i];
      const float* x = inputs[i];
      for (size_t j = 0; j < n; ++j) out[j] += w * x[j];
    }
  }

 private:
  std::vector<float> weights_;  // already divided by their sum when normalising
};

class Linear : public MergeMethod {
 public:
  Linear()
      : MergeMethod({.name = "linear",
                     .title = "Linear",
                     .reference = "https://arxiv.org/abs/2203.05482",
                     .summary = "weighted average of the models (model soups)",
                     .params = {weight_spec(),
                                flag_spec("normalize", true, "divide by the sum of the weights")}}) {}

  void check_entry(const PlanEntry& entry) const override {
    require_inputs(entry, name(), 1);
    double sum = 0;
    for (size_t i = 0; i < entry.sources.size(); ++i) sum += tensor_param(entry, i, "weight");
    if (global_param(entry, "normalize") != 0 && sum == 0) {
      fail("tensor '{}': linear weights sum to 0, cannot normalize (set normalize: false)",
           entry.name);
    }
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    std::vector<double> w(e.sources.size());
    double sum = 0;
    for (size_t i = 0; i < w.size(); ++i) sum += (w[i] = tensor_param(e, i, "weight"));
    const bool normalize = global_param(e, "normalize") != 0;
    // Normalising the weights up front (in fp64) costs one rounding per weight instead of a
    // division per element.
    std::vector<float> weights(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      weights[i] = static_cast<float>(normalize ? w[i] / sum : w[i]);
    }
    return std::make_unique<LinearMerger>(std::move(weights));
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_linear() { return std::make_unique<Linear>(); }

}  // namespace amalgam::merge
