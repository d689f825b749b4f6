// slerp: spherical interpolation of the whole flattened tensor from the base (t=0) to the other
// model (t=1); falls back to lerp when the two are nearly colinear (|cos| > 0.9995), as mergekit.
// The norms and the dot product are whole-tensor statistics: prepare() scans the inputs once.
#include <cmath>
#include <limits>

#include "core/error.h"
#include "merge/registry.h"

namespace amalgam::merge {

namespace {

constexpr double kDotThreshold = 0.9995;

class SlerpMerger : public ChunkMerger {
 public:
  SlerpMerger(size_t base, float s0, float s1) : base_(base), s0_(s0), s1_(s1) {}
  // v0 = base chunk (n), v1 = other chunk (n) -> out (n) = s0 v0 + s1 v1
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    const float* v0 = inputs[base_];
    const float* v1 = inputs[1 - base_];
    for (size_t j = 0; j < n; ++j) out[j] = s0_ * v0[j] + s1_ * v1[j];
  }

 private:
  size_t base_;
  float s0_, s1_;
};


ParamSpec t_spec() {
  ParamSpec s = real_spec("t", std::nullopt, -std::numeric_limits<double>::infinity(),
                          std::numeric_limits<double>::infinity(),
                          "interpolation position: 0 = the base, 1 = the other model");
  s.searchable = true;
  return s;
}

class Slerp : public MergeMethod {
 public:
  Slerp()
      : MergeMethod({.name = "slerp",
                     .title = "SLERP",
                     .reference = "https://en.wikipedia.org/wiki/Slerp",
                     .summary = "spherical interpolation between the base and one other model",
                     .base = BaseRole::kRequired,
                     .inputs = 2,
                     .card_names_base = false,
                     .params = {t_spec()}}) {}

  void check_entry(const PlanEntry& entry) const override {
    if (entry.sources.size() == 1) return;  // a tensor only one model has passes through
    if (entry.sources.size() != 2) {
      fail("tensor '{}': slerp merges exactly two models (the base and one other), got {}",
           entry.name, entry.sources.size());
    }
    require_base(entry, name());
    global_param(entry, "t");
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    check(in.entry);
    if (in.entry.sources.size() == 1) return copy_input(0);
    const size_t base = *in.entry.base;
    const double t = global_param(in.entry, "t");
    // Whole-tensor norms and dot product in fp64.
    const TensorReader& r = in.reader;
    const size_t n = r.numel(), chunk = r.chunk_elements();
    std::vector<float> a(std::min(chunk, n)), b(std::min(chunk, n));
    double n0 = 0, n1 = 0, dot = 0;
    for (size_t begin = 0; begin < n; begin += chunk) {
      const size_t len = std::min(chunk, n - begin);
      r.read(base, begin, len, a.data());
      r.read(1 - base, begin, len, b.data());
      for (size_t j = 0; j < len; ++j) {
        n0 += static_cast<double>(a[j]) * a[j];
        n1 += static_cast<double>(b[j]) * b[j];
        dot += static_cast<double>(a[j]) * b[j];
      }
    }
    n0 = std::sqrt(n0);
    n1 = std::sqrt(n1);
    // Each vector is normalised only when its norm exceeds 1e-8.
    const double cos = dot / (n0 > 1e-8 ? n0 : 1.0) / (n1 > 1e-8 ? n1 : 1.0);
    double s0, s1;
    if (std::fabs(cos) > kDotThreshold) {
      s0 = 1.0 - t;
      s1 = t;
    } else {
      const double theta = std::acos(cos);
      const double sin_theta = std::sin(theta);
      s0 = std::sin((1.0 - t) * theta) / sin_theta;
      s1 = std::sin(t * theta) / sin_theta;
    }
    return std::make_unique<SlerpMerger>(base, static_cast<float>(s0), static_cast<float>(s1));
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_slerp() { return std::make_unique<Slerp>(); }

}  // namespace amalgam::merge
