// karcher: the Riemannian (Karcher, Frechet) mean on the unit sphere of the inputs' directions,
// with equal weights, by fixed-point iteration of the log/exp maps, scaled by the mean norm. The
// base model is an ordinary point. The iterate stays in the span of the inputs, so the iteration
// runs on their Gram matrix (one fp64 scan) and the output is streamed as a combination.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "core/error.h"
#include "merge/registry.h"
#include "merge/sphere.h"

namespace amalgam::merge {

namespace {

using Vec = GramSpace::Vec;

// Coefficients c (over the x_k) of the Karcher mean direction u, or nullopt when no input is
// longer than tol (the output is then zero).
std::optional<Vec> karcher_direction(const GramSpace& g, const std::vector<double>& norms,
                                     int max_iter, double tol, const PlanEntry& entry) {
  const size_t count = g.size();
  std::vector<size_t> valid;
  for (size_t k = 0; k < count; ++k) {
    if (norms[k] > tol) valid.push_back(k);
  }
  if (valid.empty()) return std::nullopt;
  const double alpha = 1.0 / static_cast<double>(valid.size());  // equal weights, renormalised
  auto unit = [&](size_t k) {
    Vec e(count, 0.0);
    e[k] = 1.0 / norms[k];
    return e;
  };
  // Start: the normalised mean of the unit vectors, or the first of them when that cancels.
  Vec u(count, 0.0);
  for (size_t k : valid) u[k] = alpha / norms[k];
  const double start = g.norm(u);
  if (start < tol) {
    u = unit(valid[0]);
  } else {
    for (double& c : u) c /= start;
  }
  for (int iter = 0; iter < max_iter; ++iter) {
    // T = sum_k alpha (theta_k / sin theta_k) (u_k - cos theta_k u), the mean of the log maps.
    Vec step(count, 0.0);
    for (size_t k : valid) {
      const double cos = std::clamp(g.dot(u, unit(k)), -1.0, 1.0);
      const double theta = std::acos(cos);
      if (theta < tol || theta == 0) continue;
      if (std::numbers::pi - theta < 1e-7) {
        fail(
            "tensor '{}': karcher input '{}' of model {} is antipodal to the mean of the others "
            "(cos = {}); the spherical mean of opposite points is undefined",
            entry.name, entry.sources[k].tensor, entry.sources[k].model, cos);
      }
      const double f = alpha * theta / std::sin(theta);
      step[k] += f / norms[k];
      for (size_t l = 0; l < count; ++l) step[l] -= f * cos * u[l];
    }
    const double step_norm = g.norm(step);
    if (step_norm < tol) break;
    // Exponential map, then back onto the sphere.
    for (size_t l = 0; l < count; ++l) {
      u[l] = std::cos(step_norm) * u[l] + std::sin(step_norm) * step[l] / step_norm;
    }
    const double u_norm = g.norm(u);
    if (u_norm > tol) {
      for (double& c : u) c /= u_norm;
    }
  }
  return u;
}

class Karcher : public MergeMethod {
 public:
  Karcher()
      : MergeMethod({.name = "karcher",
                     .title = "Karcher Mean",
                     .reference = "https://arxiv.org/abs/2603.04972",
                     .summary = "Riemannian (Karcher) mean of the models' directions on the "
                                "sphere, equal weights",
                     .base = BaseRole::kInput,
                     .params = {max_iter_spec(),
                                real_spec("tol", 1e-5, 0, std::numeric_limits<double>::infinity(),
                                          "convergence tolerance; also the smallest norm and "
                                          "angle that count")}}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override {
    require_inputs(entry, name(), 1);
    global_param(entry, "max_iter");
    global_param(entry, "tol");
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    if (e.sources.size() == 1) return copy_merger(0);
    const size_t count = e.sources.size();
    std::vector<size_t> all(count);
    for (size_t k = 0; k < count; ++k) all[k] = k;
    const GramSpace g = gram_matrix(in.reader, all, std::nullopt);
    std::vector<double> norms(count);
    for (size_t k = 0; k < count; ++k) norms[k] = std::sqrt(std::max(0.0, g.at(k, k)));
    const auto u = karcher_direction(g, norms, static_cast<int>(global_param(e, "max_iter")),
                                     global_param(e, "tol"), e);
    // Scale: the mean norm over every input, zero ones included (mergekit).
    double scale = 0;
    for (double n : norms) scale += n / static_cast<double>(count);
    std::vector<double> coefs(count, 0.0);
    if (u) {
      for (size_t k = 0; k < count; ++k) coefs[k] = scale * (*u)[k];
    }
    return combination_merger(all, coefs, std::nullopt);
  }

 private:
  static ParamSpec max_iter_spec() {
    ParamSpec s = real_spec("max_iter", 10, 0, 100000, "most iterations of the mean");
    s.kind = ParamKind::kInt;
    return s;
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_karcher() { return std::make_unique<Karcher>(); }

}  // namespace amalgam::merge
