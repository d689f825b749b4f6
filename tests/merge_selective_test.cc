// The selective merge methods sce, ram, ramplus_tl, nearswap and arcee_fusion
// (spec/mergekit-compat.md 1.9, 1.10, 1.12, 1.13): each against an fp64 computation of the
// spec's formulas written here, on random bf16-valued tensors of several shapes (one of 600 x 1000,
// larger than a chunk and than the in-memory top-k limit), plus the spec's edge cases, chunk-size
// independence, and an end-to-end merge of zoo models through the CLI per method.
//
// Tolerance: |got - want| <= 1e-6 * (|B| + sum_i |X_i - B|), about 8 fp32 ulps of the scale of
// the terms (amalgam computes in fp32, the reference in fp64). arcee_fusion elements whose
// importance lies within 1e-6 relative of the threshold (where fp32 rounding of the importance
// may decide) are left out of the comparison and counted; they must stay rare. sce ranks its
// variances as fp32 values, as amalgam does (see sce_reference).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "io/safetensors.h"
#include "merge/method.h"
#include "test_util.h"

namespace amalgam {
namespace {

using merge::Params;
using merge::PlanEntry;
using tensor::Tensor;
using Inputs = std::vector<std::vector<double>>;  // [0] = base, then the models

constexpr double kTolerance = 1e-6;
constexpr double kEdgeBand = 1e-6;

float bf16(double v) { return core::bf16_to_f32(core::f32_to_bf16(static_cast<float>(v))); }

Tensor random_tensor(const tensor::Shape& shape, uint32_t seed, double scale) {
  Tensor t(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  for (float& v : t.data) v = bf16(dist(rng));
  return t;
}

// base + noise at a `fraction` of the elements (elsewhere equal to the base), bf16-valued.
Tensor perturbed(const Tensor& base, uint32_t seed, double scale, double fraction = 1.0) {
  Tensor t = base;
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (float& v : t.data) {
    const double noise = dist(rng);
    if (u(rng) < fraction) v = bf16(v + noise);
  }
  return t;
}

// Base first, then `models` others.
PlanEntry make_entry(const tensor::Shape& shape, size_t models, Params global = {}) {
  PlanEntry e;
  e.name = "model.layers.0.mlp.up_proj.weight";
  e.out_dtype = tensor::DType::kF32;
  e.shape = shape;
  for (size_t i = 0; i <= models; ++i) e.sources.push_back({i, e.name, {}});
  e.base = 0;
  e.global = std::move(global);
  return e;
}

Inputs as_doubles(const std::vector<Tensor>& in) {
  Inputs x;
  for (const auto& t : in) x.emplace_back(t.data.begin(), t.data.end());
  return x;
}

using testing::expect_error;
using testing::run_method;

// ---- fp64 references, from the spec's formulas -------------------------------------------

struct Reference {
  std::vector<double> out;
  std::vector<bool> edge;  // on the edge of a selection: not compared
  double detail = 0;       // method-specific (sce: sum_j mean(d_j^2))
};

double sign(double v) { return (v > 0) - (v < 0); }

// sce 1.9: select by variance, c_i from mean squares, TIES sum sign mask, normalised sum.
Reference sce_reference(const Inputs& x, double topk) {
  const size_t n = x[0].size(), models = x.size() - 1;
  Inputs tau(models, std::vector<double>(n));
  for (size_t i = 0; i < models; ++i) {
    for (size_t j = 0; j < n; ++j) tau[i][j] = x[i + 1][j] - x[0][j];
  }
  Reference ref{std::vector<double>(n), std::vector<bool>(n, false)};
  if (topk < 1) {
    std::vector<double> var(n);
    size_t nonzero = 0;
    for (size_t j = 0; j < n; ++j) {
      double mean = 0, ss = 0;
      for (size_t i = 0; i < models; ++i) mean += tau[i][j] / models;
      for (size_t i = 0; i < models; ++i) ss += (tau[i][j] - mean) * (tau[i][j] - mean);
      // Ranked as fp32 values, as amalgam holds them (mergekit: the load dtype): variances that
      // fp32 cannot tell apart are ties. A single element selected differently would shift every
      // c_i by about 1/k, which the tolerance could not absorb.
      var[j] = static_cast<float>(ss / models);
      nonzero += var[j] != 0;
    }
    const size_t k = topk <= 0 ? 0 : static_cast<size_t>(static_cast<double>(nonzero) * topk);
    // The k largest variances, ties to the lower index.
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return var[a] > var[b]; });
    std::vector<bool> selected(n, false);
    for (size_t r = 0; r < k; ++r) selected[order[r]] = true;
    for (size_t j = 0; j < n; ++j) {
      if (!selected[j]) {
        for (auto& t : tau) t[j] = 0;
      }
    }
  }
  std::vector<double> energy(models, 0.0);
  double total = 0;
  for (size_t i = 0; i < models; ++i) {
    for (double v : tau[i]) energy[i] += v * v / n;
    total += energy[i];
  }
  ref.detail = total;
  std::vector<double> c(models);
  for (size_t i = 0; i < models; ++i)
    c[i] = std::fabs(total) < 1e-6 ? 1.0 / models : energy[i] / total;
  for (size_t j = 0; j < n; ++j) {
    double sum = 0;
    for (size_t i = 0; i < models; ++i) sum += tau[i][j];
    const double elected = sum >= 0 ? 1 : -1;
    double numer = 0, denom = 0;
    for (size_t i = 0; i < models; ++i) {
      if (sign(tau[i][j]) == elected) {
        numer += c[i] * tau[i][j];
        denom += c[i];
      }
    }
    ref.out[j] = x[0][j] + numer / std::max(denom, 1e-6);
  }
  return ref;
}

// ram / ramplus_tl 1.10.
Reference ram_reference(const Inputs& x, double eps, bool plus, double r = 0.1,
                        double alpha = 0.2) {
  const size_t n = x[0].size(), models = x.size() - 1;
  auto active = [&](size_t i, size_t j) { return std::fabs(x[i + 1][j] - x[0][j]) > eps; };
  std::vector<int> count(n, 0);
  for (size_t j = 0; j < n; ++j) {
    for (size_t i = 0; i < models; ++i) count[j] += active(i, j);
  }
  std::vector<double> lambda(models, 1.0);
  if (plus) {
    for (size_t i = 0; i < models; ++i) {
      double shared = 0, unique = 0;
      for (size_t j = 0; j < n; ++j) {
        shared += active(i, j) && count[j] > 1;
        unique += active(i, j) && count[j] == 1;
      }
      const double rho = shared / std::max(unique, eps);
      lambda[i] = 1 + r * std::clamp(rho, 0.0, alpha);
    }
  }
  Reference ref{std::vector<double>(n), std::vector<bool>(n, false)};
  for (size_t j = 0; j < n; ++j) {
    double out = x[0][j];
    for (size_t i = 0; i < models; ++i) {
      if (!active(i, j)) continue;
      const double d = x[i + 1][j] - x[0][j];
      out += count[j] == 1 ? lambda[i] * d : d / count[j];
    }
    ref.out[j] = out;
  }
  return ref;
}

// nearswap 1.12.
Reference nearswap_reference(const Inputs& x, double t) {
  const size_t n = x[0].size();
  Reference ref{std::vector<double>(n), std::vector<bool>(n, false)};
  for (size_t j = 0; j < n; ++j) {
    const double b = x[0][j], o = x[1][j];
    const double w = std::clamp(t / std::max(std::fabs(b - o), 1e-6), 0.0, 1.0);
    ref.out[j] = w * o + (1 - w) * b;
  }
  return ref;
}

// arcee_fusion 1.13, with the exact quartiles of all elements.
Reference fusion_reference(const Inputs& x, size_t cols) {
  const std::vector<double>& b = x[0];
  const std::vector<double>& o = x[1];
  const size_t n = b.size(), rows = n / cols;
  std::vector<double> imp(n);
  for (size_t r = 0; r < rows; ++r) {
    auto softmax = [&](const std::vector<double>& v) {
      std::vector<double> p(cols);
      double mx = -INFINITY, z = 0;
      for (size_t c = 0; c < cols; ++c) mx = std::max(mx, v[r * cols + c]);
      for (size_t c = 0; c < cols; ++c) z += (p[c] = std::exp(v[r * cols + c] - mx));
      for (double& pc : p) pc = pc / z + 1e-8;
      return p;
    };
    const std::vector<double> p = softmax(o), q = softmax(b);
    double kl = 0;
    for (size_t c = 0; c < cols; ++c) kl += p[c] * std::log(p[c] / q[c]);
    for (size_t c = 0; c < cols; ++c) {
      imp[r * cols + c] = std::fabs(o[r * cols + c] - b[r * cols + c]) * kl;
    }
  }
  std::vector<double> sorted = imp;
  std::sort(sorted.begin(), sorted.end());
  auto quantile = [&](double q) {
    return sorted[static_cast<size_t>(std::floor(q * static_cast<double>(n - 1)))];
  };
  const double thr = quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25));
  Reference ref{std::vector<double>(n), std::vector<bool>(n, false)};
  for (size_t j = 0; j < n; ++j) {
    ref.out[j] = b[j] + (imp[j] >= thr ? o[j] - b[j] : 0.0);
    ref.edge[j] = std::fabs(imp[j] - thr) <= kEdgeBand * std::fabs(thr);
  }
  ref.detail = thr;
  return ref;
}

// Compares within the tolerance; returns the number of edge elements skipped.
size_t expect_matches(const Tensor& got, const Reference& ref, const Inputs& x,
                      const std::string& what) {
  const size_t n = ref.out.size();
  EXPECT_EQ(got.data.size(), n) << what;
  size_t bad = 0, edge = 0;
  for (size_t j = 0; j < n && j < got.data.size(); ++j) {
    if (ref.edge[j]) {
      ++edge;
      continue;
    }
    double scale = std::fabs(x[0][j]);
    for (size_t i = 1; i < x.size(); ++i) scale += std::fabs(x[i][j] - x[0][j]);
    if (std::fabs(got.data[j] - ref.out[j]) <= kTolerance * scale) continue;
    if (bad++ < 3) {
      ADD_FAILURE() << what << " [" << j << "]: got " << got.data[j] << " want " << ref.out[j];
    }
  }
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_LE(edge, n / 1000 + 2) << what << ": too many elements on the edge of the selection";
  return edge;
}

const std::vector<tensor::Shape>& shapes() {
  static const std::vector<tensor::Shape> s = {{7}, {64, 33}, {600, 1000}};
  return s;
}

std::string shape_name(const tensor::Shape& s) { return tensor::shape_string(s); }

// Base and `models` dense task vectors of scale `scale` around a N(0, 0.02) base.
std::vector<Tensor> dense_inputs(const tensor::Shape& shape, size_t models, double scale,
                                 uint32_t seed) {
  std::vector<Tensor> in = {random_tensor(shape, seed, 0.02)};
  for (size_t i = 0; i < models; ++i) in.push_back(perturbed(in[0], seed + 1 + i, scale));
  return in;
}

// ---- sce ---------------------------------------------------------------------------------

TEST(Sce, MatchesTheReference) {
  for (const auto& shape : shapes()) {
    for (double topk : {1.0, 0.5, 0.1}) {
      const auto in = dense_inputs(shape, 3, 0.01, 11);
      auto e = make_entry(shape, 3, {{"select_topk", topk}});
      const auto x = as_doubles(in);
      expect_matches(run_method("sce", e, in), sce_reference(x, topk), x,
                     fmt::format("sce {} select_topk {}", shape_name(shape), topk));
    }
  }
}

TEST(Sce, WeightsAreUniformWhenTheEnergiesSumBelow1e6) {
  // Task vectors of scale 1e-4 have mean squares ~1e-8: c_i = 1/N. Scale 1e-2 (above): c_i are
  // the energy shares. Models of different scale make the two differ.
  const tensor::Shape shape{200, 300};
  for (double scale : {1e-4, 1e-2}) {
    std::vector<Tensor> in = {random_tensor(shape, 21, 0.02)};
    in.push_back(perturbed(in[0], 22, scale));
    in.push_back(perturbed(in[0], 23, scale * 3));
    const auto x = as_doubles(in);
    const Reference ref = sce_reference(x, 1.0);
    EXPECT_EQ(ref.detail < 1e-6, scale < 1e-3) << "test setup: energy sum " << ref.detail;
    expect_matches(run_method("sce", make_entry(shape, 2), in), ref, x,
                   fmt::format("scale {}", scale));
  }
}

TEST(Sce, DivisorIsClampedAt1e6) {
  // Model A is large but unchanged at even elements; model B is tiny: c_B ~ 1e-8. Where A is 0
  // only B agrees, and B's change is divided by max(c_B, 1e-6), not by c_B: out = B + c_B/1e-6 d_B.
  const tensor::Shape shape{100, 100};
  std::vector<Tensor> in = {random_tensor(shape, 31, 0.02)};
  Tensor a = perturbed(in[0], 32, 1.0);
  for (size_t j = 0; j < a.data.size(); j += 2) a.data[j] = in[0].data[j];
  in.push_back(a);
  in.push_back(perturbed(in[0], 33, 1e-4));
  const auto x = as_doubles(in);
  const Tensor got = run_method("sce", make_entry(shape, 2), in);
  expect_matches(got, sce_reference(x, 1.0), x, "clamped divisor");
  double ea = 0, eb = 0;
  for (size_t j = 0; j < x[0].size(); ++j) {
    ea += (x[1][j] - x[0][j]) * (x[1][j] - x[0][j]);
    eb += (x[2][j] - x[0][j]) * (x[2][j] - x[0][j]);
  }
  const double cb = eb / (ea + eb);
  ASSERT_LT(cb, 1e-6);
  size_t checked = 0;
  for (size_t j = 0; j < x[0].size(); j += 2) {
    const double db = x[2][j] - x[0][j];
    if (db == 0) continue;
    EXPECT_NEAR(got.data[j], x[0][j] + cb / 1e-6 * db, 1e-6 * (std::fabs(x[0][j]) + std::fabs(db)))
        << j;
    ++checked;
  }
  EXPECT_GT(checked, 1000u);
}

TEST(Sce, SelectTopkZeroGivesTheBaseAndBelowZeroIsRefused) {
  const tensor::Shape shape{30, 40};
  const auto in = dense_inputs(shape, 2, 0.01, 41);
  EXPECT_EQ(run_method("sce", make_entry(shape, 2, {{"select_topk", 0.0}}), in).data, in[0].data);
  expect_error(
      [&] {
        run_method("sce", make_entry(shape, 2, {{"select_topk", -0.1}}), in);
      },
      "select_topk");
  expect_error(
      [&] {
        run_method("sce", make_entry(shape, 2, {{"select_topk", 1.5}}), in);
      },
      "select_topk");
}

TEST(Sce, OneModelHasNoVarianceSoSelectionKeepsNothing) {
  // With a single task vector the variance is 0 everywhere: k = int(0 * topk) = 0 and mergekit
  // returns the base. Without selection the model itself comes out (c = 1).
  const tensor::Shape shape{30, 40};
  const auto in = dense_inputs(shape, 1, 0.01, 51);
  EXPECT_EQ(run_method("sce", make_entry(shape, 1, {{"select_topk", 0.5}}), in).data, in[0].data);
  EXPECT_EQ(run_method("sce", make_entry(shape, 1), in).data, in[1].data);
}

TEST(Sce, SelectionKeepsExactlyKWithTiesInIndexOrder) {
  // Base 0, model 1's task vector is 2 at every third element and 1 elsewhere, model 2's is 0:
  // two variances (1 and 0.25). topk 0.5 keeps all the large ones and the first of the others.
  for (const tensor::Shape& shape : {tensor::Shape{60, 50}, tensor::Shape{600, 1000}}) {
    const size_t n = static_cast<size_t>(tensor::numel(shape));
    Tensor base(shape), one(shape), zero(shape);
    for (size_t j = 0; j < n; ++j) one.data[j] = j % 3 == 0 ? 2.0f : 1.0f;
    const Tensor got =
        run_method("sce", make_entry(shape, 2, {{"select_topk", 0.5}}), {base, one, zero});
    const size_t k = n / 2, large = (n + 2) / 3;
    size_t kept = 0, last_small_kept = 0, first_small_dropped = n;
    for (size_t j = 0; j < n; ++j) {
      if (got.data[j] != 0) {
        ++kept;
        if (j % 3 != 0) last_small_kept = j;
      } else {
        EXPECT_NE(j % 3, 0u) << "a largest-variance element was dropped at " << j;
        first_small_dropped = std::min(first_small_dropped, j);
      }
    }
    EXPECT_EQ(kept, k) << shape_name(shape);
    EXPECT_LT(last_small_kept, first_small_dropped) << "ties are kept in index order";
    EXPECT_GT(k, large);
  }
}

// ---- ram, ramplus_tl ---------------------------------------------------------------------

TEST(Ram, MatchesTheReference) {
  for (const auto& shape : shapes()) {
    std::vector<Tensor> in = {random_tensor(shape, 61, 0.02)};
    // Sparse task vectors (30% changed each): unique, shared and unchanged elements.
    for (uint32_t i = 0; i < 3; ++i) in.push_back(perturbed(in[0], 62 + i, 0.01, 0.3));
    const auto x = as_doubles(in);
    for (double eps : {1e-5, 2e-3}) {
      const std::string what = fmt::format("{} epsilon {}", shape_name(shape), eps);
      expect_matches(run_method("ram", make_entry(shape, 3, {{"epsilon", eps}}), in),
                     ram_reference(x, eps, false), x, "ram " + what);
      expect_matches(run_method("ramplus_tl", make_entry(shape, 3, {{"epsilon", eps}}), in),
                     ram_reference(x, eps, true), x, "ramplus_tl " + what);
      const Params p = {{"epsilon", eps}, {"r", 0.05}, {"alpha", 1.0}};
      expect_matches(run_method("ramplus_tl", make_entry(shape, 3, p), in),
                     ram_reference(x, eps, true, 0.05, 1.0), x,
                     "ramplus_tl r 0.05 alpha 1 " + what);
    }
  }
}

TEST(Ram, UniqueKeptSharedAveragedInactiveKeepsTheBase) {
  const tensor::Shape shape{9};
  Tensor base(shape), a(shape), b(shape);
  std::fill(base.data.begin(), base.data.end(), 1.0f);
  const float eps = (1.0f + 0.001f) - 1.0f;  // a change of exactly epsilon is inactive
  const float at_eps = 1.0f + eps;
  // 0: unique to a; 1: unique to b; 2: shared; 3: none; 4: a below epsilon, b active (unique);
  // 5: shared with opposite signs; 6: a exactly epsilon (inactive); 7: both below epsilon;
  // 8: a exactly epsilon, b active (unique to b, not shared).
  a.data = {1.5f, 1, 1.25f, 1, 1.0001f, 1.5f, at_eps, 1.0001f, at_eps};
  b.data = {1, 0.5f, 1.75f, 1, 1.5f, 0.5f, 1, 0.9999f, 1.5f};
  const Tensor got = run_method("ram", make_entry(shape, 2, {{"epsilon", eps}}), {base, a, b});
  const std::vector<float> want = {1.5f, 0.5f, 1.5f, 1, 1.5f, 1, 1, 1, 1.5f};
  EXPECT_EQ(got.data, want);
}

TEST(RamPlus, UniqueChangesAreAmplifiedByTheClampedSharedUniqueRatio) {
  // Model a: 40 unique, 20 shared elements (rho = 0.5); model b: 10 unique, 20 shared (rho = 2).
  const tensor::Shape shape{100};
  Tensor base(shape), a(shape), b(shape);
  for (size_t j = 0; j < 100; ++j) {
    const bool in_a = j < 60, in_b = j >= 40 && j < 70;
    a.data[j] = in_a ? 0.5f : 0.0f;
    b.data[j] = in_b ? -0.25f : 0.0f;
  }
  for (auto [r, alpha] : {std::pair{0.1, 0.2}, {0.5, 1.0}, {1.0, 3.0}}) {
    const Tensor got =
        run_method("ramplus_tl", make_entry(shape, 2, {{"r", r}, {"alpha", alpha}}), {base, a, b});
    const double la = 1 + r * std::min(0.5, alpha), lb = 1 + r * std::min(2.0, alpha);
    EXPECT_FLOAT_EQ(got.data[0], 0.5 * la) << r << " " << alpha;           // unique to a
    EXPECT_FLOAT_EQ(got.data[50], (0.5 - 0.25) / 2) << r << " " << alpha;  // shared: plain mean
    EXPECT_FLOAT_EQ(got.data[65], -0.25 * lb) << r << " " << alpha;        // unique to b
    EXPECT_EQ(got.data[90], 0.0f);                                         // unchanged
  }
  // With epsilon 0 a model with no unique element must not produce NaN.
  Tensor c = a;
  const Tensor got =
      run_method("ramplus_tl", make_entry(shape, 2, {{"epsilon", 0.0}}), {base, a, c});
  for (size_t j = 0; j < 100; ++j) ASSERT_FLOAT_EQ(got.data[j], a.data[j]) << j;
}

// ---- nearswap ----------------------------------------------------------------------------

TEST(NearSwap, MatchesTheReference) {
  for (const auto& shape : shapes()) {
    const auto in = dense_inputs(shape, 1, 1e-3, 71);
    const auto x = as_doubles(in);
    for (double t : {1e-4, 1e-3, 0.0, 1.0}) {
      expect_matches(run_method("nearswap", make_entry(shape, 1, {{"t", t}}), in),
                     nearswap_reference(x, t), x,
                     fmt::format("nearswap {} t {}", shape_name(shape), t));
    }
  }
}

TEST(NearSwap, DistanceIsClampedAt1e6) {
  const tensor::Shape shape{4};
  Tensor base(shape), other(shape);
  base.data = {1e-5f, 0.5f, 0.5f, 2.0f};
  // |d| = 2e-7 (below the clamp), 0, 1e-3, 1.
  other.data = {1e-5f + 2e-7f, 0.5f, 0.501f, 3.0f};
  const double t = 5e-7;
  const Tensor got = run_method("nearswap", make_entry(shape, 1, {{"t", t}}), {base, other});
  const double d0 = double(other.data[0]) - base.data[0];
  // w = t / max(2e-7, 1e-6) = 0.5, not min(t / 2e-7, 1) = 1.
  EXPECT_NEAR(got.data[0], base.data[0] + 0.5 * d0, 3e-12);
  EXPECT_NE(got.data[0], other.data[0]);
  EXPECT_EQ(got.data[1], 0.5f);
  const double w2 = t / (double(other.data[2]) - base.data[2]);
  EXPECT_NEAR(got.data[2], w2 * other.data[2] + (1 - w2) * base.data[2], 2e-7);
  EXPECT_NEAR(got.data[3], 2.0 + t, 1e-6);
  // t >= |d| everywhere: the other model whole.
  EXPECT_EQ(run_method("nearswap", make_entry(shape, 1, {{"t", 1.0}}), {base, other}).data,
            other.data);
}

TEST(NearSwap, NeedsTAndExactlyTwoModels) {
  const tensor::Shape shape{4, 4};
  const auto in = dense_inputs(shape, 2, 1e-3, 81);
  expect_error([&] { run_method("nearswap", make_entry(shape, 1), {in[0], in[1]}); }, "'t'");
  expect_error(
      [&] {
        run_method("nearswap", make_entry(shape, 2, {{"t", 0.1}}), in);
      },
      "exactly two");
  expect_error(
      [&] {
        run_method("nearswap", make_entry(shape, 1, {{"t", -1.0}}), {in[0], in[1]});
      },
      "out of range");
}

// ---- arcee_fusion ------------------------------------------------------------------------

TEST(ArceeFusion, MatchesTheReference) {
  for (const tensor::Shape& shape :
       {tensor::Shape{3}, tensor::Shape{7}, tensor::Shape{1000}, tensor::Shape{64, 33},
        tensor::Shape{600, 1000}, tensor::Shape{2, 3, 40}}) {
    // Scale 0.5: softmax rows differ visibly (row KLs spread over decades). Scale 8: peaked
    // rows, with probabilities far below the 1e-8 added to them.
    for (double scale : {0.5, 8.0}) {
      const auto in = dense_inputs(shape, 1, scale, 91);
      const auto x = as_doubles(in);
      const size_t cols = static_cast<size_t>(shape.back());
      const Reference ref = fusion_reference(x, cols);
      const Tensor got = run_method("arcee_fusion", make_entry(shape, 1), in);
      const std::string what = fmt::format("arcee_fusion {} scale {}", shape_name(shape), scale);
      expect_matches(got, ref, x, what);
      size_t fused = 0;
      for (size_t j = 0; j < x[0].size(); ++j) fused += got.data[j] != in[0].data[j];
      if (x[0].size() >= 1000) {
        EXPECT_GT(fused, 0u) << what;
        EXPECT_LT(fused, x[0].size() / 2) << what;
      }
    }
  }
}

TEST(ArceeFusion, SoftmaxUnderflowStaysFinite) {
  // A row with one huge value: exp underflows to 0 for the others (p = 1e-8 exactly there).
  const tensor::Shape shape{6, 50};
  auto in = dense_inputs(shape, 1, 0.5, 95);
  in[1].data[2 * 50 + 7] = 900.0f;
  in[0].data[4 * 50 + 1] = -900.0f;
  const auto x = as_doubles(in);
  const Tensor got = run_method("arcee_fusion", make_entry(shape, 1), in);
  for (float v : got.data) ASSERT_TRUE(std::isfinite(v));
  expect_matches(got, fusion_reference(x, 50), x, "underflow");
}

TEST(ArceeFusion, QuartilesAreTheElementsAtFloorQTimesNMinus1) {
  // One row, base 0: I = |X| KL with one KL, so the order of I is that of |X|. With n = 8 the
  // quartiles are the sorted |X| at 1, 3, 5 (floor(q (n - 1))): 2, 4, 6 (times 0.01 and KL), so
  // thr = 4 + 1.5 (6 - 2) = 10 and 10.01 is fused. At floor(q n) (2, 4, 6) thr would be 11.
  const tensor::Shape shape{8};
  Tensor base(shape), x(shape);
  x.data = {0.01f, -0.02f, 0.03f, -0.04f, 0.05f, -0.06f, 0.07f, -0.1001f};
  const Tensor got = run_method("arcee_fusion", make_entry(shape, 1), {base, x});
  for (size_t j = 0; j < 7; ++j) EXPECT_EQ(got.data[j], 0.0f) << j;
  EXPECT_EQ(got.data[7], x.data[7]);
  const auto ref = fusion_reference(as_doubles({base, x}), 8);
  EXPECT_EQ(ref.out[7], x.data[7]);
}

TEST(ArceeFusion, ImportanceEqualToTheThresholdIsFused) {
  // Every |X - B| equal: IQR 0, thr = the common importance, and I >= thr fuses all of it.
  const tensor::Shape shape{4, 10};
  Tensor base(shape), x(shape);
  for (size_t j = 0; j < x.data.size(); ++j) x.data[j] = j % 2 ? 0.5f : -0.5f;
  EXPECT_EQ(run_method("arcee_fusion", make_entry(shape, 1), {base, x}).data, x.data);
}

TEST(ArceeFusion, IdenticalModelsGiveTheBaseAndThreeModelsAreRefused) {
  const tensor::Shape shape{20, 30};
  const auto in = dense_inputs(shape, 2, 0.1, 101);
  EXPECT_EQ(run_method("arcee_fusion", make_entry(shape, 1), {in[0], in[0]}).data, in[0].data);
  expect_error([&] { run_method("arcee_fusion", make_entry(shape, 2), in); }, "exactly two");
}

// ---- common ------------------------------------------------------------------------------

// A reader over whole tensors with a chosen chunk, to drive prepare() and the merger directly.
class RowsReader : public merge::TensorReader {
 public:
  RowsReader(const std::vector<Tensor>& t, size_t chunk) : t_(t), chunk_(chunk) {}
  size_t inputs() const override { return t_.size(); }
  size_t numel() const override { return t_[0].data.size(); }
  size_t chunk_elements() const override { return chunk_; }
  void read(size_t input, size_t begin, size_t n, float* dst) const override {
    std::memcpy(dst, t_[input].data.data() + begin, n * sizeof(float));
  }

 private:
  const std::vector<Tensor>& t_;
  size_t chunk_;
};

Tensor run_chunked(const std::string& method, const PlanEntry& e, const std::vector<Tensor>& in,
                   size_t chunk) {
  RowsReader reader(in, chunk);
  auto merger = merge::method_or_fail(method).prepare({e, reader, 0});
  Tensor out(e.shape);
  std::vector<const float*> ptrs(in.size());
  for (size_t begin = 0; begin < out.data.size(); begin += chunk) {
    const size_t len = std::min(chunk, out.data.size() - begin);
    for (size_t i = 0; i < in.size(); ++i) ptrs[i] = in[i].data.data() + begin;
    merger->merge(begin, len, ptrs, out.data.data() + begin);
  }
  return out;
}

TEST(Selective, OutputDoesNotDependOnTheChunkSize) {
  const tensor::Shape shape{600, 1000};
  const auto three = dense_inputs(shape, 3, 0.01, 111);
  std::vector<Tensor> sparse = {three[0]};
  for (uint32_t i = 0; i < 3; ++i) sparse.push_back(perturbed(three[0], 112 + i, 0.01, 0.3));
  const std::vector<Tensor> two = {three[0], three[1]};
  struct Case {
    std::string method;
    Params global;
    const std::vector<Tensor>* in;
  };
  for (const Case& c : std::vector<Case>{{"sce", {{"select_topk", 0.3}}, &three},
                                         {"ram", {}, &sparse},
                                         {"ramplus_tl", {}, &sparse},
                                         {"nearswap", {{"t", 1e-3}}, &two},
                                         {"arcee_fusion", {}, &two}}) {
    const PlanEntry e = make_entry(shape, c.in->size() - 1, c.global);
    const Tensor whole = run_method(c.method, e, *c.in);
    for (size_t rows : {1, 7, 600}) {
      EXPECT_EQ(run_chunked(c.method, e, *c.in, rows * 1000).data, whole.data)
          << c.method << " chunk of " << rows << " rows";
    }
  }
}

TEST(Selective, ATensorOnlyTheBaseHasIsCopied) {
  const tensor::Shape shape{5, 6};
  const Tensor base = random_tensor(shape, 121, 1.0);
  for (const char* m : {"sce", "ram", "ramplus_tl", "nearswap", "arcee_fusion"}) {
    const Params g = std::string(m) == "nearswap" ? Params{{"t", 0.1}} : Params{};
    const PlanEntry e = make_entry(shape, 0, g);
    EXPECT_EQ(run_method(m, e, {base}).data, base.data) << m;
    EXPECT_TRUE(merge::method_or_fail(m).copies_input(e)) << m;
  }
}

TEST(Selective, NeedTheBase) {
  const tensor::Shape shape{5, 6};
  const auto in = dense_inputs(shape, 1, 0.1, 131);
  for (const char* m : {"sce", "ram", "ramplus_tl", "nearswap", "arcee_fusion"}) {
    PlanEntry e =
        make_entry(shape, 1, std::string(m) == "nearswap" ? Params{{"t", 0.1}} : Params{});
    e.base.reset();
    expect_error([&] { run_method(m, e, in); }, "base_model");
    EXPECT_TRUE(merge::method_or_fail(m).requires_base()) << m;
  }
}

TEST(Selective, MethodInfo) {
  using merge::BaseRole;
  using merge::EmbedRule;
  for (const char* m : {"sce", "ram", "ramplus_tl", "nearswap", "arcee_fusion"}) {
    const auto& info = merge::method_or_fail(m).info();
    EXPECT_EQ(info.base, BaseRole::kRequired) << m;
    EXPECT_EQ(info.embed, EmbedRule::kCommonSubMatrix) << m;
    EXPECT_FALSE(info.random) << m;
    EXPECT_FALSE(info.title.empty()) << m;
    EXPECT_NE(info.reference.find("https://"), std::string::npos) << m;
    EXPECT_FALSE(info.summary.empty()) << m;
    for (const auto& p : info.params) EXPECT_EQ(p.scope, merge::ParamScope::kGlobal) << m;
  }
  EXPECT_EQ(merge::method_or_fail("nearswap").info().inputs, 2u);
  EXPECT_EQ(merge::method_or_fail("arcee_fusion").info().inputs, 2u);
  EXPECT_FALSE(merge::method_or_fail("sce").info().inputs.has_value());
  EXPECT_TRUE(merge::method_or_fail("arcee_fusion").info().params.empty());

  const merge::ParamSpec* topk = merge::method_or_fail("sce").param("select_topk");
  ASSERT_NE(topk, nullptr);
  EXPECT_EQ(*topk->default_value, 1.0);
  EXPECT_EQ(topk->min, 0.0);
  EXPECT_EQ(topk->max, 1.0);
  EXPECT_TRUE(topk->searchable);
  const merge::ParamSpec* int8 = merge::method_or_fail("sce").param("int8_mask");
  ASSERT_NE(int8, nullptr);
  EXPECT_EQ(int8->kind, merge::ParamKind::kBool);
  EXPECT_EQ(*int8->default_value, 0.0);
  EXPECT_EQ(merge::method_or_fail("sce").param("weight"), nullptr);

  EXPECT_EQ(*merge::method_or_fail("ram").param("epsilon")->default_value, 1e-5);
  EXPECT_EQ(merge::method_or_fail("ram").param("r"), nullptr);
  const auto& plus = merge::method_or_fail("ramplus_tl");
  EXPECT_EQ(*plus.param("epsilon")->default_value, 1e-5);
  EXPECT_EQ(*plus.param("r")->default_value, 0.1);
  EXPECT_EQ(*plus.param("alpha")->default_value, 0.2);
  EXPECT_TRUE(plus.param("r")->searchable);
  EXPECT_TRUE(plus.param("alpha")->searchable);
  EXPECT_FALSE(plus.param("epsilon")->searchable);

  const merge::ParamSpec* t = merge::method_or_fail("nearswap").param("t");
  ASSERT_NE(t, nullptr);
  EXPECT_FALSE(t->default_value.has_value());  // required
  EXPECT_EQ(t->min, 0.0);
  EXPECT_TRUE(t->searchable);
}

TEST(Selective, Int8MaskHasNoNumericEffect) {
  const tensor::Shape shape{40, 50};
  const auto in = dense_inputs(shape, 3, 0.01, 141);
  EXPECT_EQ(
      run_method("sce", make_entry(shape, 3, {{"select_topk", 0.4}, {"int8_mask", 1}}), in).data,
      run_method("sce", make_entry(shape, 3, {{"select_topk", 0.4}}), in).data);
}

// ---- end to end through the CLI ----------------------------------------------------------

std::string zoo_path(const std::string& name) { return testing::zoo(name).string(); }

// Distance in bf16 steps between two bf16 values.
int64_t ulp_distance(uint16_t a, uint16_t b) {
  auto line = [](uint16_t h) -> int64_t {
    return (h & 0x8000) ? -static_cast<int64_t>(h & 0x7fff) : static_cast<int64_t>(h);
  };
  return std::llabs(line(a) - line(b));
}

struct E2eCase {
  std::string method;
  std::vector<std::string> models;  // base first
  std::string parameters;           // YAML block, "" for none
  std::function<Reference(const Inputs&, size_t cols)> reference;
};

// Merges zoo models with the method through `amalgam merge`, checks that `amalgam inspect` reads
// the output, and every output tensor against the reference within 1 bf16 ulp (or, where the
// result cancels to near zero, 2^-20 of the magnitude of the terms).
void check_e2e(const E2eCase& c) {
  testing::TempDir dir;
  std::string yaml =
      fmt::format("merge_method: {}\nbase_model: {}\nmodels:\n", c.method, zoo_path(c.models[0]));
  for (const auto& m : c.models) yaml += fmt::format("  - model: {}\n", zoo_path(m));
  yaml += c.parameters + "dtype: bfloat16\n";
  testing::write_file(dir / "recipe.yaml", yaml);
  const auto out = dir / "out";
  auto r = testing::run_amalgam(
      fmt::format("merge {} -o {} --quiet", (dir / "recipe.yaml").string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << c.method << ": " << r.output;
  auto inspect = testing::run_amalgam("inspect " + out.string());
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("model.layers.3.mlp.down_proj.weight"), std::string::npos)
      << inspect.output;

  io::Checkpoint result(out);
  std::vector<std::unique_ptr<io::Checkpoint>> in;
  for (const auto& m : c.models) in.push_back(std::make_unique<io::Checkpoint>(testing::zoo(m)));
  EXPECT_EQ(result.names(), in[0]->names());
  size_t edge = 0, total = 0, changed = 0;
  for (const auto& name : result.names()) {
    Inputs x;
    for (const auto& ck : in) {
      const Tensor t = ck->load_f32(name);
      x.emplace_back(t.data.begin(), t.data.end());
    }
    const tensor::TensorView v = result.view(name);
    ASSERT_EQ(v.dtype, tensor::DType::kBF16) << name;
    const size_t cols = v.shape.empty() ? 1 : static_cast<size_t>(v.shape.back());
    const Reference ref = c.reference(x, cols);
    size_t bad = 0;
    for (size_t j = 0; j < ref.out.size(); ++j) {
      uint16_t got;
      std::memcpy(&got, v.data + 2 * j, 2);
      changed += core::bf16_to_f32(got) != x[0][j];
      ++total;
      if (ref.edge[j]) {
        ++edge;
        continue;
      }
      const uint16_t want = core::f32_to_bf16(static_cast<float>(ref.out[j]));
      if (ulp_distance(got, want) <= 1) continue;
      double magnitude = 0;
      for (const auto& xi : x) magnitude += std::fabs(xi[j]);
      if (std::fabs(core::bf16_to_f32(got) - ref.out[j]) <= std::ldexp(magnitude, -20)) continue;
      if (bad++ < 3) {
        ADD_FAILURE() << c.method << " " << name << "[" << j << "]: got " << core::bf16_to_f32(got)
                      << " want " << ref.out[j];
      }
    }
    EXPECT_EQ(bad, 0u) << c.method << " " << name;
  }
  EXPECT_LE(edge, total / 1000) << c.method;
  EXPECT_GT(changed, total / 100) << c.method << ": the merge left the base (nearly) unchanged";
}

const std::vector<std::string> kThreeExperts = {"base", "add-expert", "rev-expert", "sort-expert"};

TEST(SelectiveE2E, Sce) {
  check_e2e({"sce", kThreeExperts, "parameters:\n  select_topk: 0.5\n",
             [](const Inputs& x, size_t) { return sce_reference(x, 0.5); }});
}

TEST(SelectiveE2E, Ram) {
  check_e2e({"ram", kThreeExperts, "parameters:\n  epsilon: 0.001\n",
             [](const Inputs& x, size_t) { return ram_reference(x, 0.001, false); }});
}

TEST(SelectiveE2E, RamPlusTl) {
  check_e2e({"ramplus_tl", kThreeExperts,
             "parameters:\n  epsilon: 0.001\n  r: 0.05\n  alpha: 1.0\n",
             [](const Inputs& x, size_t) { return ram_reference(x, 0.001, true, 0.05, 1.0); }});
}

TEST(SelectiveE2E, NearSwap) {
  check_e2e({"nearswap",
             {"base", "add-expert"},
             "parameters:\n  t: 0.001\n",
             [](const Inputs& x, size_t) { return nearswap_reference(x, 0.001); }});
}

TEST(SelectiveE2E, ArceeFusion) {
  check_e2e({"arcee_fusion", {"base", "add-expert"}, "", [](const Inputs& x, size_t cols) {
               return fusion_reference(x, cols);
             }});
}

}  // namespace
}  // namespace amalgam
