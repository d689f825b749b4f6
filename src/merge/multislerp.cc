// multislerp: barycentric interpolation on the hypersphere of N models (or of their task vectors
// from an optional base): unit vectors u_i = x_i / (|x_i| + eps), their weighted mean m projected
// to the sphere, one tangent step at m, scaled by the weighted mean norm. Everything is a
// combination of the x_i, so it runs on their Gram matrix (one fp64 scan), then streams.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "merge/registry.h"
#include "merge/sphere.h"

namespace amalgam::merge {

namespace {

class Multislerp : public MergeMethod {
 public:
  Multislerp()
      : MergeMethod(
            {.name = "multislerp",
             .title = "Multi-SLERP",
             .reference = "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
             .summary = "weighted spherical mean of several models or of their task vectors",
             .base = BaseRole::kOptional,
             .params = {weight_spec(),
                        flag_spec("normalize_weights", true, "divide the weights by their sum"),
                        real_spec("eps", 1e-8, 0, std::numeric_limits<double>::infinity(),
                                  "added to norms for numerical stability; must be > 0")}}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override {
    if (global_param(entry, "eps") <= 0) {
      fail("tensor '{}': multislerp parameter 'eps' must be > 0", entry.name);
    }
    const std::vector<size_t> others = inputs_without_base(entry);
    if (others.size() < 2) return;  // the one model (or the base alone) passes through
    double sum = 0, size = 0;
    for (size_t i : others) {
      const double w = tensor_param(entry, i, "weight");
      sum += w;
      size += std::fabs(w);
    }
    if (global_flag(entry, "normalize_weights") && std::fabs(sum) <= 1e-12 * size) {
      fail(
          "tensor '{}': multislerp weights sum to 0 and cannot be normalized (change the "
          "weights, or set normalize_weights: false)",
          entry.name);
    }
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    const std::vector<size_t> others = inputs_without_base(e);
    if (others.empty()) return copy_merger(*e.base);
    if (others.size() == 1) return copy_merger(others[0]);
    const size_t count = others.size();
    const double eps = global_param(e, "eps");
    std::vector<double> w(count);
    double sum = 0;
    for (size_t k = 0; k < count; ++k) sum += (w[k] = tensor_param(e, others[k], "weight"));
    if (global_flag(e, "normalize_weights")) {
      for (double& v : w) v /= sum;
    }
    const GramSpace g = gram_matrix(in.reader, others, e.base);

    // Vectors are coefficients over x_1..x_N. u_k = x_k / (n_k + eps); m = sum_k w_k u_k.
    std::vector<double> norms(count), m(count);
    bool all_zero = true;
    for (size_t k = 0; k < count; ++k) {
      norms[k] = std::sqrt(std::max(0.0, g.at(k, k)));
      all_zero = all_zero && norms[k] == 0;
      m[k] = w[k] / (norms[k] + eps);
    }
    double m_norm = g.norm(m);
    // Near cancellation the Gram matrix cannot tell |m| < eps apart from rounding: scan exactly.
    double terms = 0;
    for (size_t k = 0; k < count; ++k) terms += std::fabs(m[k]) * norms[k];
    if (m_norm < 1e-4 * terms) m_norm = combination_norm(in.reader, others, m, e.base);
    if (m_norm < eps) {
      // mergekit: with two inputs, lerp. With more, it fails; but when every input is zero
      // (a tensor no fine-tune changed), the evident result is that zero, which lerp gives too.
      if (count == 2 || all_zero) return combination_merger(others, w, e.base);
      fail(
          "tensor '{}': multislerp inputs cancel out: the weighted mean of their directions is "
          "zero (antipodal inputs, or sets of inputs whose weights exactly balance); the "
          "spherical mean is undefined: change the weights",
          e.name);
    }
    std::vector<double> mhat(count);
    for (size_t k = 0; k < count; ++k) mhat[k] = m[k] / m_norm;
    // Tangent vectors tau_k = u_k - (u_k . mhat) mhat, T = sum_k w_k tau_k.
    std::vector<double> tangent(count);
    double along = 0;  // sum_k w_k (u_k . mhat)
    for (size_t k = 0; k < count; ++k) {
      double u_dot_m = 0;
      for (size_t l = 0; l < count; ++l) u_dot_m += g.at(k, l) * mhat[l];
      u_dot_m /= norms[k] + eps;
      along += w[k] * u_dot_m;
      tangent[k] = w[k] / (norms[k] + eps);
    }
    for (size_t k = 0; k < count; ++k) tangent[k] -= along * mhat[k];
    // Exponential map: y = mhat cos r + T sin r / r with r = |T| + eps; scaled by sum_k w_k n_k.
    const double r = g.norm(tangent) + eps;
    double scale = 0;
    for (size_t k = 0; k < count; ++k) scale += w[k] * norms[k];
    std::vector<double> coefs(count);
    for (size_t k = 0; k < count; ++k) {
      coefs[k] = scale * (mhat[k] * std::cos(r) + tangent[k] * std::sin(r) / r);
    }
    return combination_merger(others, coefs, e.base);
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_multislerp() { return std::make_unique<Multislerp>(); }

}  // namespace amalgam::merge
