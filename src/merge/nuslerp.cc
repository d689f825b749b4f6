// nuslerp: spherical interpolation of two models with t = w_2 / (w_1 + w_2), or of their task
// vectors from a third, base model (out = B + nuslerp(t, X_1 - B, X_2 - B)). The vectors are the
// whole flattened tensor (nuslerp_flatten, the default), its rows (last dimension), or its
// columns (dimension 0, nuslerp_row_wise: mergekit's name for it). Norms and dot products are fp64
// statistics: a scan for the whole tensor or per column, computed chunk by chunk for rows.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "merge/registry.h"
#include "merge/sphere.h"

namespace amalgam::merge {

namespace {

struct Coefs {
  double a, b;  // nuslerp(t, a, b) = coefs.a * a + coefs.b * b
};

// From |a|^2, |b|^2 and a.b: unit vectors divide by max(|v|, 1e-7); cos clamped to [-1, 1];
// (sin((1-t) theta) a + sin(t theta) b) / sin theta, or lerp where |sin theta| < 1e-8.
Coefs nuslerp_coefs(double t, double aa, double bb, double ab) {
  constexpr double kMinNorm = 1e-7, kColinear = 1e-8;
  const double na = std::sqrt(aa), nb = std::sqrt(bb);
  // sqrt(aa bb) equals na nb, but is exactly |a.b| for exactly (anti)parallel inputs (b = -a,
  // b = 2a), so that those take the lerp fallback instead of dividing by a rounding residue.
  const double denom = na > kMinNorm && nb > kMinNorm
                           ? std::sqrt(aa * bb)
                           : std::max(na, kMinNorm) * std::max(nb, kMinNorm);
  const double cos = std::clamp(ab / denom, -1.0, 1.0);
  const double theta = std::acos(cos);
  const double sin = std::sin(theta);
  if (std::fabs(sin) < kColinear) return {1.0 - t, t};
  return {std::sin((1.0 - t) * theta) / sin, std::sin(t * theta) / sin};
}

// The two interpolated vectors of one chunk: a = X_1 (- B), b = X_2 (- B), in fp32.
struct Operands {
  size_t x1, x2;
  std::optional<size_t> base;
  void load(std::span<const float* const> inputs, size_t n, float* a, float* b) const {
    const float* p = inputs[x1];
    const float* q = inputs[x2];
    if (base) {
      const float* z = inputs[*base];
      for (size_t j = 0; j < n; ++j) {
        a[j] = p[j] - z[j];
        b[j] = q[j] - z[j];
      }
    } else {
      std::copy(p, p + n, a);
      std::copy(q, q + n, b);
    }
  }
  // out (n) = [B +] ca a + cb b
  void store(std::span<const float* const> inputs, size_t n, const float* a, const float* b,
             const float* ca, const float* cb, float* out) const {
    for (size_t j = 0; j < n; ++j) out[j] = ca[j] * a[j] + cb[j] * b[j];
    if (base) {
      const float* z = inputs[*base];
      for (size_t j = 0; j < n; ++j) out[j] += z[j];
    }
  }
};

// Vectors along the last dimension: every chunk holds whole rows, so each row's statistics are
// computed where it is merged.
class RowMerger : public ChunkMerger {
 public:
  RowMerger(Operands ops, double t, size_t cols) : ops_(ops), t_(t), cols_(cols) {}

  // per row r: a_r, b_r (cols) -> out_r = [B_r +] nuslerp(t, a_r, b_r)
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    a_.resize(n);
    b_.resize(n);
    ca_.resize(n);
    cb_.resize(n);
    ops_.load(inputs, n, a_.data(), b_.data());
    for (size_t row = 0; row < n; row += cols_) {
      const float* a = a_.data() + row;
      const float* b = b_.data() + row;
      double aa = 0, bb = 0, ab = 0;
      for (size_t j = 0; j < cols_; ++j) {
        aa += static_cast<double>(a[j]) * a[j];
        bb += static_cast<double>(b[j]) * b[j];
        ab += static_cast<double>(a[j]) * b[j];
      }
      const Coefs c = nuslerp_coefs(t_, aa, bb, ab);
      std::fill_n(ca_.data() + row, cols_, static_cast<float>(c.a));
      std::fill_n(cb_.data() + row, cols_, static_cast<float>(c.b));
    }
    ops_.store(inputs, n, a_.data(), b_.data(), ca_.data(), cb_.data(), out);
  }

 private:
  Operands ops_;
  double t_;
  size_t cols_;
  std::vector<float> a_, b_, ca_, cb_;
};

// Vectors along dimension 0 (columns of the [d0, rest] view): coefficients per column from a scan.
class ColumnMerger : public ChunkMerger {
 public:
  ColumnMerger(Operands ops, std::vector<float> ca, std::vector<float> cb)
      : ops_(ops), col_a_(std::move(ca)), col_b_(std::move(cb)) {}

  void merge(size_t begin, size_t n, std::span<const float* const> inputs, float* out) override {
    a_.resize(n);
    b_.resize(n);
    ca_.resize(n);
    cb_.resize(n);
    ops_.load(inputs, n, a_.data(), b_.data());
    const size_t rest = col_a_.size();
    for (size_t j = 0, col = begin % rest; j < n; ++j, col = col + 1 == rest ? 0 : col + 1) {
      ca_[j] = col_a_[col];
      cb_[j] = col_b_[col];
    }
    ops_.store(inputs, n, a_.data(), b_.data(), ca_.data(), cb_.data(), out);
  }

 private:
  Operands ops_;
  std::vector<float> col_a_, col_b_;
  std::vector<float> a_, b_, ca_, cb_;
};

class Nuslerp : public MergeMethod {
 public:
  Nuslerp()
      : MergeMethod(
            {.name = "nuslerp",
             .title = "NuSLERP",
             .reference = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md",
             .summary =
                 "spherical interpolation of two models, or of their task vectors from a base",
             .base = BaseRole::kOptional,
             .params = {
                 weight_spec(),
                 flag_spec("nuslerp_flatten", true, "interpolate the whole tensor as one vector"),
                 flag_spec("nuslerp_row_wise", false,
                           "without flatten: interpolate columns (vectors along dimension "
                           "0) instead of rows")}}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override {
    if (entry.sources.size() == 1) return;  // a tensor only one model has passes through
    const std::vector<size_t> others = inputs_without_base(entry);
    if (entry.base && others.size() == 1) {
      fail(
          "tensor '{}': nuslerp merges two models besides base_model, but this tensor has the "
          "base and only one other model (the base model can not be one of the two models to "
          "merge: give two other models, or drop base_model)",
          entry.name);
    }
    if (others.size() != 2) {
      fail("tensor '{}': nuslerp merges exactly two models (plus an optional base_model), got {}",
           entry.name, others.size());
    }
    for (size_t i : others) tensor_param(entry, i, "weight");
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    if (e.sources.size() == 1) return copy_merger(0);
    const std::vector<size_t> others = inputs_without_base(e);
    const double w1 = tensor_param(e, others[0], "weight");
    const double w2 = tensor_param(e, others[1], "weight");
    // mergekit's guard for weights that cancel; the result is symmetric in the two models.
    const double t = std::fabs(w1 + w2) < 1e-6 ? 0.5 : w2 / (w1 + w2);
    const Operands ops{others[0], others[1], e.base};
    if (global_flag(e, "nuslerp_flatten")) {
      const GramSpace g = gram_matrix(in.reader, others, e.base);
      const Coefs c = nuslerp_coefs(t, g.at(0, 0), g.at(1, 1), g.at(0, 1));
      return combination_merger(others, {c.a, c.b}, e.base);
    }
    if (!global_flag(e, "nuslerp_row_wise")) {
      return std::make_unique<RowMerger>(ops, t, row_length(e.shape));
    }
    return column_merger(in, ops, t);
  }

 private:
  // Scans the inputs once with three fp64 accumulators per column of the [d0, rest] view (a 1-D
  // tensor is one column).
  static std::unique_ptr<ChunkMerger> column_merger(const MethodInputs& in, const Operands& ops,
                                                    double t) {
    const TensorReader& r = in.reader;
    const size_t total = r.numel();
    const auto& shape = in.entry.shape;
    const size_t d0 = shape.empty() || shape[0] <= 0 ? 1 : static_cast<size_t>(shape[0]);
    const size_t rest = std::max<size_t>(1, total / d0);
    std::vector<double> aa(rest), bb(rest), ab(rest);
    const size_t chunk = std::min(r.chunk_elements(), total);
    std::vector<std::vector<float>> x(r.inputs(), std::vector<float>(chunk));
    std::vector<const float*> ptrs(r.inputs());
    std::vector<float> a(chunk), b(chunk);
    for (size_t begin = 0; begin < total; begin += chunk) {
      const size_t len = std::min(chunk, total - begin);
      for (size_t i = 0; i < r.inputs(); ++i) {
        r.read(i, begin, len, x[i].data());
        ptrs[i] = x[i].data();
      }
      ops.load(ptrs, len, a.data(), b.data());
      for (size_t j = 0, col = begin % rest; j < len; ++j, col = col + 1 == rest ? 0 : col + 1) {
        aa[col] += static_cast<double>(a[j]) * a[j];
        bb[col] += static_cast<double>(b[j]) * b[j];
        ab[col] += static_cast<double>(a[j]) * b[j];
      }
    }
    std::vector<float> ca(rest), cb(rest);
    for (size_t col = 0; col < rest; ++col) {
      const Coefs c = nuslerp_coefs(t, aa[col], bb[col], ab[col]);
      ca[col] = static_cast<float>(c.a);
      cb[col] = static_cast<float>(c.b);
    }
    return std::make_unique<ColumnMerger>(ops, std::move(ca), std::move(cb));
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_nuslerp() { return std::make_unique<Nuslerp>(); }

}  // namespace amalgam::merge
