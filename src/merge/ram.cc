// ram and ramplus_tl, Reinforced Agent Merging (spec/mergekit-compat.md 1.10). With task vectors
// d_i = X_i - B, model i is active at an element where |d_i| > epsilon; c counts the active
// models. An element changed by one model only (unique) takes that change whole, one changed by
// several (shared) takes the mean of their changes, one changed by none keeps the base:
//   out = B + sum_i [a_i, c = 1] lambda_i d_i + sum_i [a_i, c > 1] d_i / c.
// ram has lambda_i = 1. ramplus_tl (RAM+, tensor-local) amplifies a model's unique changes by
// lambda_i = 1 + r clamp(S_i / max(U_i, epsilon), 0, alpha), from the counts of its shared (S_i)
// and unique (U_i) elements in this tensor: a statistics pass in prepare().
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "merge/registry.h"

namespace amalgam::merge {

namespace {

// Whether a model changes an element (one definition for the counts and the terms).
inline bool is_active(float d, float eps) { return std::fabs(d) > eps; }

// Active-model counts of a chunk: count[j] = #{i : |X_i[j] - B[j]| > eps}.
void count_active(std::span<const float* const> inputs, size_t base, float eps, size_t n,
                  uint32_t* count) {
  std::fill(count, count + n, 0u);
  const float* b = inputs[base];
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i == base) continue;
    const float* x = inputs[i];
    for (size_t j = 0; j < n; ++j) count[j] += is_active(x[j] - b[j], eps);
  }
}

class RamMerger : public ChunkMerger {
 public:
  // lambda: per input (ignored for the base).
  RamMerger(size_t base, float eps, std::vector<float> lambda, size_t chunk)
      : base_(base), eps_(eps), lambda_(std::move(lambda)), count_(chunk), sum_(chunk) {}

  // B and X_i chunks (n) -> out (n)
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    if (count_.size() < n) {
      count_.resize(n);
      sum_.resize(n);
    }
    uint32_t* count = count_.data();
    float* sum = sum_.data();
    count_active(inputs, base_, eps_, n, count);
    const float* b = inputs[base_];
    std::fill(sum, sum + n, 0.0f);
    // Terms are added model by model, as mergekit sums over its stack of models.
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (i == base_) continue;
      const float* x = inputs[i];
      const float lambda = lambda_[i];
      for (size_t j = 0; j < n; ++j) {
        const float d = x[j] - b[j];
        const bool active = is_active(d, eps_);
        const float term = count[j] == 1 ? d * lambda : d / static_cast<float>(count[j]);
        sum[j] += active ? term : 0.0f;
      }
    }
    for (size_t j = 0; j < n; ++j) out[j] = b[j] + sum[j];
  }

 private:
  size_t base_;
  float eps_;
  std::vector<float> lambda_;
  std::vector<uint32_t> count_;
  std::vector<float> sum_;
};


ParamSpec nonnegative_spec(std::string name, double default_value, std::string help) {
  return real_spec(std::move(name), default_value, 0, std::numeric_limits<double>::infinity(),
                   std::move(help));
}

std::vector<ParamSpec> ram_params(bool plus) {
  std::vector<ParamSpec> p = {nonnegative_spec(
      "epsilon", 1e-5, "a model changes an element when |X_i - B| exceeds epsilon")};
  if (plus) {
    ParamSpec r = nonnegative_spec("r", 0.1, "strength of the amplification of unique changes");
    r.searchable = true;
    ParamSpec alpha =
        nonnegative_spec("alpha", 0.2, "cap on the shared/unique ratio (lambda <= 1 + r alpha)");
    alpha.searchable = true;
    p.push_back(r);
    p.push_back(alpha);
  }
  return p;
}

class Ram : public MergeMethod {
 public:
  explicit Ram(bool plus)
      : MergeMethod(
            {.name = plus ? "ramplus_tl" : "ram",
             .title =
                 plus ? "Reinforced Agent Merging Plus (Tensor-Local)" : "Reinforced Agent Merging",
             .reference = "https://arxiv.org/abs/2601.13572",
             .summary = plus ? "RAM with each model's unique changes amplified by its "
                               "shared/unique ratio in the tensor"
                             : "keeps changes made by one model, averages changes made by several",
             .base = BaseRole::kRequired,
             .embed = EmbedRule::kCommonSubMatrix,
             .inputs = std::nullopt,
             .params = ram_params(plus)}),
        plus_(plus) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override { require_base(entry, name()); }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    const size_t base = *e.base;
    if (e.sources.size() == 1) return copy_input(base);
    const auto eps = static_cast<float>(global_param(e, "epsilon"));
    std::vector<float> lambda(e.sources.size(), 1.0f);
    if (plus_) lambda = plus_factors(in, base, eps);
    return std::make_unique<RamMerger>(base, eps, std::move(lambda), in.reader.chunk_elements());
  }

 private:
  // RAM+ factors lambda_i from the counts of each model's shared and unique elements.
  std::vector<float> plus_factors(const MethodInputs& in, size_t base, float eps) const {
    const TensorReader& r = in.reader;
    const size_t inputs = r.inputs(), n = r.numel(), chunk = std::min(r.chunk_elements(), n);
    std::vector<std::vector<float>> bufs(inputs, std::vector<float>(chunk));
    std::vector<const float*> ptrs(inputs);
    std::vector<uint32_t> count(chunk);
    std::vector<size_t> shared(inputs, 0), unique(inputs, 0);
    for (size_t begin = 0; begin < n; begin += chunk) {
      const size_t len = std::min(chunk, n - begin);
      for (size_t i = 0; i < inputs; ++i) {
        r.read(i, begin, len, bufs[i].data());
        ptrs[i] = bufs[i].data();
      }
      count_active(ptrs, base, eps, len, count.data());
      const float* b = ptrs[base];
      for (size_t i = 0; i < inputs; ++i) {
        if (i == base) continue;
        const float* x = ptrs[i];
        size_t s = 0, u = 0;
        for (size_t j = 0; j < len; ++j) {
          const bool active = is_active(x[j] - b[j], eps);
          s += active & (count[j] > 1);
          u += active & (count[j] == 1);
        }
        shared[i] += s;
        unique[i] += u;
      }
    }
    const double rr = global_param(in.entry, "r"), alpha = global_param(in.entry, "alpha");
    const double eps64 = global_param(in.entry, "epsilon");
    std::vector<float> lambda(inputs, 1.0f);
    for (size_t i = 0; i < inputs; ++i) {
      if (i == base) continue;
      // epsilon doubles as the guard of the ratio (mergekit: unique.clamp(min=epsilon)). A model
      // with no unique element never uses its factor; epsilon = 0 must not make it 0/0.
      const double u = std::max(static_cast<double>(unique[i]), eps64);
      const double rho = u > 0 ? static_cast<double>(shared[i]) / u : 0.0;
      lambda[i] = static_cast<float>(1.0 + rr * std::clamp(rho, 0.0, alpha));
    }
    return lambda;
  }

  bool plus_;
};

}  // namespace

std::unique_ptr<MergeMethod> make_ram() { return std::make_unique<Ram>(false); }
std::unique_ptr<MergeMethod> make_ramplus_tl() { return std::make_unique<Ram>(true); }

}  // namespace amalgam::merge
