// The spherical merge methods (nuslerp, multislerp, karcher, model_stock) against independent
// fp64 computations of spec/mergekit-compat.md sections 1.3-1.5 and 1.11, written here on whole
// vectors from the formulas (the implementation works on Gram matrices and streams chunks).
// Then edge cases, parameter errors, and each method end to end through the CLI on zoo models.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>
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
using Vec = std::vector<double>;

// Inputs are rounded to bf16, as checkpoints hold them.
float bf16(double v) { return core::bf16_to_f32(core::f32_to_bf16(static_cast<float>(v))); }

Tensor random_tensor(const tensor::Shape& shape, uint32_t seed, double scale = 1.0) {
  Tensor t(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  for (float& v : t.data) v = bf16(dist(rng));
  return t;
}

// A base and `count` fine-tunes of it: B + shared + own noise, so that their task vectors make
// angles well inside (0, 90) degrees, as real fine-tunes of one base do.
std::vector<Tensor> family(const tensor::Shape& shape, size_t count, uint32_t seed) {
  std::vector<Tensor> out = {random_tensor(shape, seed)};
  const Tensor shared = random_tensor(shape, seed + 1, 0.02);
  for (size_t i = 0; i < count; ++i) {
    Tensor noise = random_tensor(shape, seed + 2 + static_cast<uint32_t>(i), 0.02);
    Tensor x(shape);
    for (size_t j = 0; j < x.data.size(); ++j) {
      x.data[j] = bf16(static_cast<double>(out[0].data[j]) + shared.data[j] + noise.data[j]);
    }
    out.push_back(std::move(x));
  }
  return out;
}

PlanEntry make_entry(const tensor::Shape& shape, const std::vector<Params>& per_model,
                     std::optional<size_t> base, Params global = {}) {
  PlanEntry e;
  e.name = "test.weight";
  e.out_dtype = tensor::DType::kF32;
  e.shape = shape;
  for (size_t i = 0; i < per_model.size(); ++i) e.sources.push_back({i, e.name, per_model[i]});
  e.base = base;
  e.global = std::move(global);
  return e;
}

Vec to64(const Tensor& t) { return Vec(t.data.begin(), t.data.end()); }
std::vector<Vec> to64(const std::vector<Tensor>& ts) {
  std::vector<Vec> out;
  for (const auto& t : ts) out.push_back(to64(t));
  return out;
}

// Tolerance: the implementation streams in fp32 (one rounding per term) from fp64 statistics.
void expect_close(const Tensor& got, const Vec& want, double rel = 1e-5, double abs_tol = 1e-5) {
  ASSERT_EQ(got.data.size(), want.size());
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = abs_tol + rel * std::fabs(want[i]);
    if (!(std::fabs(got.data[i] - want[i]) <= tol) && bad++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got.data[i] << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u);
}

using testing::expect_error;
using testing::run_method;

// ---- fp64 references, from the spec's formulas on whole vectors ----

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += a[j] * b[j];
  return s;
}
double norm(const Vec& a) { return std::sqrt(dot(a, a)); }
Vec sub(const Vec& a, const Vec& b) {
  Vec r(a.size());
  for (size_t j = 0; j < a.size(); ++j) r[j] = a[j] - b[j];
  return r;
}
Vec add(const Vec& a, const Vec& b) {
  Vec r(a.size());
  for (size_t j = 0; j < a.size(); ++j) r[j] = a[j] + b[j];
  return r;
}
Vec scaled(const Vec& a, double s) {
  Vec r(a.size());
  for (size_t j = 0; j < a.size(); ++j) r[j] = a[j] * s;
  return r;
}
void axpy(Vec& y, double s, const Vec& x) {
  for (size_t j = 0; j < y.size(); ++j) y[j] += s * x[j];
}

// The element indices of each interpolated vector: the whole tensor, its rows (last dimension),
// or its columns (dimension 0 of the [d0, rest] view).
enum class Layout { kFlat, kRows, kColumns };
std::vector<std::vector<size_t>> vectors_of(const tensor::Shape& shape, Layout layout) {
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  std::vector<std::vector<size_t>> groups;
  if (layout == Layout::kFlat) {
    groups.emplace_back(n);
    for (size_t j = 0; j < n; ++j) groups[0][j] = j;
  } else if (layout == Layout::kRows) {
    const size_t cols = static_cast<size_t>(shape.back());
    for (size_t r = 0; r < n / cols; ++r) {
      groups.emplace_back();
      for (size_t c = 0; c < cols; ++c) groups.back().push_back(r * cols + c);
    }
  } else {
    const size_t rest = n / static_cast<size_t>(shape[0]);
    for (size_t c = 0; c < rest; ++c) {
      groups.emplace_back();
      for (size_t r = 0; r < static_cast<size_t>(shape[0]); ++r)
        groups.back().push_back(r * rest + c);
    }
  }
  return groups;
}

Vec gather(const Vec& v, const std::vector<size_t>& idx) {
  Vec r;
  for (size_t j : idx) r.push_back(v[j]);
  return r;
}

// nuslerp(t, a, b), spec 1.3: a^ = a / max(|a|, 1e-7), cos = clamp(a^.b^), lerp when |sin| < 1e-8.
// The angle is computed in long double: short vectors (3-element columns of bf16 values) can be
// exactly antipodal, where fp64 rounding of a^.b^ alone would leave sin theta ~ 1.5e-8.
Vec nuslerp_ref(double t, const Vec& a, const Vec& b, const tensor::Shape& shape, Layout layout) {
  using Long = long double;
  Vec out(a.size());
  for (const auto& idx : vectors_of(shape, layout)) {
    const Vec va = gather(a, idx), vb = gather(b, idx);
    Long aa = 0, bb = 0;
    for (size_t k = 0; k < va.size(); ++k) {
      aa += static_cast<Long>(va[k]) * va[k];
      bb += static_cast<Long>(vb[k]) * vb[k];
    }
    const Long na = std::max(std::sqrt(aa), Long(1e-7)), nb = std::max(std::sqrt(bb), Long(1e-7));
    Long cos = 0;
    for (size_t k = 0; k < va.size(); ++k) cos += (va[k] / na) * (vb[k] / nb);
    const double theta = static_cast<double>(std::acos(std::clamp(cos, Long(-1), Long(1))));
    const double s = std::sin(theta);
    for (size_t k = 0; k < idx.size(); ++k) {
      out[idx[k]] = std::fabs(s) < 1e-8
                        ? (1 - t) * va[k] + t * vb[k]
                        : (std::sin((1 - t) * theta) * va[k] + std::sin(t * theta) * vb[k]) / s;
    }
  }
  return out;
}

// Spec 1.4, literally: unit vectors, weighted mean, tangent projection, exponential map, scale.
Vec multislerp_ref(const std::vector<Vec>& xs_in, Vec w, const Vec* base, bool normalize,
                   double eps) {
  std::vector<Vec> xs = xs_in;
  if (base) {
    for (auto& x : xs) x = sub(x, *base);
  }
  if (normalize) {
    double s = 0;
    for (double v : w) s += v;
    for (double& v : w) v /= s;
  }
  std::vector<Vec> u;
  Vec n;
  Vec m(xs[0].size(), 0.0);
  for (size_t i = 0; i < xs.size(); ++i) {
    n.push_back(norm(xs[i]));
    u.push_back(scaled(xs[i], 1.0 / (n[i] + eps)));
    axpy(m, w[i], u[i]);
  }
  const Vec mhat = scaled(m, 1.0 / norm(m));
  Vec tangent(m.size(), 0.0);
  for (size_t i = 0; i < xs.size(); ++i) {
    axpy(tangent, w[i], sub(u[i], scaled(mhat, dot(u[i], mhat))));
  }
  const double r = norm(tangent) + eps;
  Vec y = add(scaled(mhat, std::cos(r)), scaled(tangent, std::sin(r) / r));
  double scale = 0;
  for (size_t i = 0; i < xs.size(); ++i) scale += w[i] * n[i];
  y = scaled(y, scale);
  return base ? add(y, *base) : y;
}

// Spec 1.5, step by step as mergekit's karcher_merge_tensors.
Vec karcher_ref(const std::vector<Vec>& xs, int max_iter, double tol) {
  const size_t count = xs.size();
  const double alpha = 1.0 / static_cast<double>(count);
  std::vector<double> norms;
  std::vector<Vec> units;
  for (const auto& x : xs) {
    const double n = norm(x);
    norms.push_back(n);
    units.push_back(n == 0 ? Vec(x.size(), 0.0) : scaled(x, 1.0 / n));
  }
  std::vector<Vec> valid;
  for (size_t i = 0; i < count; ++i) {
    if (norms[i] > tol) valid.push_back(units[i]);
  }
  if (valid.empty()) return Vec(xs[0].size(), 0.0);
  const double a = 1.0 / static_cast<double>(valid.size());
  Vec u(xs[0].size(), 0.0);
  for (const auto& v : valid) axpy(u, a, v);
  const double nu = norm(u);
  u = nu < tol ? valid[0] : scaled(u, 1.0 / nu);
  for (int iter = 0; iter < max_iter; ++iter) {
    Vec step(u.size(), 0.0);
    for (const auto& v : valid) {
      const double c = std::clamp(dot(u, v), -1.0, 1.0);
      const double theta = std::acos(c);
      if (theta < tol) continue;
      axpy(step, a * theta / std::sin(theta), sub(v, scaled(u, c)));
    }
    const double ns = norm(step);
    if (ns < tol) break;
    u = add(scaled(u, std::cos(ns)), scaled(step, std::sin(ns) / ns));
    const double un = norm(u);
    if (un > tol) u = scaled(u, 1.0 / un);
  }
  double s = 0;
  for (double n : norms) s += alpha * n;
  return scaled(u, s);
}

// Spec 1.11: mean pairwise cosine of the task vectors (norm product clamped at 1e-6), then
// t = N cos / (1 + (N-1) cos), out = t mean(w_i) + (1 - t) w_0; per row with filter_wise.
Vec model_stock_ref(const Vec& w0, const std::vector<Vec>& ws, const tensor::Shape& shape,
                    bool filter_wise) {
  Vec out(w0.size());
  const Layout layout = filter_wise ? Layout::kRows : Layout::kFlat;
  const double count = static_cast<double>(ws.size());
  for (const auto& idx : vectors_of(shape, layout)) {
    const Vec base = gather(w0, idx);
    std::vector<Vec> d;
    for (const auto& w : ws) d.push_back(sub(gather(w, idx), base));
    double sum = 0;
    int pairs = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      for (size_t j = i + 1; j < d.size(); ++j) {
        sum += std::clamp(dot(d[i], d[j]) / std::max(norm(d[i]) * norm(d[j]), 1e-6), -1.0, 1.0);
        ++pairs;
      }
    }
    const double c = sum / pairs;
    const double t = count * c / (1 + (count - 1) * c);
    for (size_t k = 0; k < idx.size(); ++k) {
      double mean = 0;
      for (const auto& w : ws) mean += w[idx[k]] / count;
      out[idx[k]] = t * mean + (1 - t) * base[k];
    }
  }
  return out;
}

const std::vector<tensor::Shape> kShapes = {{600, 1000}, {37, 53}, {128}, {3, 300, 250}};

// ---- nuslerp ----

struct NuslerpCase {
  Layout layout;
  Params global;
};
const std::vector<NuslerpCase> kNuslerpLayouts = {
    {Layout::kFlat, {}},
    {Layout::kRows, {{"nuslerp_flatten", 0}}},
    {Layout::kColumns, {{"nuslerp_flatten", 0}, {"nuslerp_row_wise", 1}}},
};

TEST(Nuslerp, TwoModelsEveryLayoutAndShape) {
  uint32_t seed = 10;
  for (const auto& shape : kShapes) {
    // Models of different scales, so that the angle and the norms both matter.
    std::vector<Tensor> x = {random_tensor(shape, seed++), random_tensor(shape, seed++, 0.5)};
    for (const auto& c : kNuslerpLayouts) {
      SCOPED_TRACE(fmt::format("shape {} layout {}", tensor::shape_string(shape),
                               static_cast<int>(c.layout)));
      auto e = make_entry(shape, {{{"weight", 0.7}}, {{"weight", 0.5}}}, std::nullopt, c.global);
      const double t = 0.5 / 1.2;
      expect_close(run_method("nuslerp", e, x),
                   nuslerp_ref(t, to64(x[0]), to64(x[1]), shape, c.layout));
    }
  }
}

TEST(Nuslerp, TaskVectorsFromAThirdBaseModel) {
  uint32_t seed = 30;
  for (const auto& shape : kShapes) {
    // Sources in the order fine-tune, base, fine-tune: the base is found by entry.base.
    std::vector<Tensor> f = family(shape, 2, seed += 10);
    std::vector<Tensor> x = {f[1], f[0], f[2]};
    const Vec b = to64(f[0]);
    for (const auto& c : kNuslerpLayouts) {
      SCOPED_TRACE(fmt::format("shape {} layout {}", tensor::shape_string(shape),
                               static_cast<int>(c.layout)));
      auto e = make_entry(shape, {{{"weight", 1.0}}, {}, {{"weight", 3.0}}}, 1, c.global);
      const Vec delta = nuslerp_ref(0.75, sub(to64(f[1]), b), sub(to64(f[2]), b), shape, c.layout);
      expect_close(run_method("nuslerp", e, x), add(b, delta));
    }
  }
}

TEST(Nuslerp, ReproducesSlerpWithWeightsOneMinusTAndT) {
  const tensor::Shape shape{600, 1000};
  std::vector<Tensor> x = {random_tensor(shape, 50), random_tensor(shape, 51, 2.0)};
  for (double t : {0.0, 0.3, 0.5, 1.0}) {
    auto nu = make_entry(shape, {{{"weight", 1 - t}}, {{"weight", t}}}, std::nullopt);
    auto sl = make_entry(shape, {{}, {}}, 0, {{"t", t}});
    const Tensor a = run_method("nuslerp", nu, x);
    expect_close(a, to64(run_method("slerp", sl, x)), 1e-6, 1e-6);
    expect_close(a, nuslerp_ref(t, to64(x[0]), to64(x[1]), shape, Layout::kFlat));
  }
}

TEST(Nuslerp, SymmetricAndZeroSumWeightsMeanHalf) {
  const tensor::Shape shape{37, 53};
  std::vector<Tensor> x = {random_tensor(shape, 60), random_tensor(shape, 61)};
  std::vector<Tensor> swapped = {x[1], x[0]};
  auto e = make_entry(shape, {{{"weight", 0.2}}, {{"weight", 0.6}}}, std::nullopt);
  auto es = make_entry(shape, {{{"weight", 0.6}}, {{"weight", 0.2}}}, std::nullopt);
  expect_close(run_method("nuslerp", es, swapped), to64(run_method("nuslerp", e, x)), 1e-6, 1e-6);
  // Weights summing to 0 (mergekit's test: -0.5 / 0.5) give t = 0.5 instead of a division by 0.
  auto zero = make_entry(shape, {{{"weight", -0.5}}, {{"weight", 0.5}}}, std::nullopt);
  expect_close(run_method("nuslerp", zero, x),
               nuslerp_ref(0.5, to64(x[0]), to64(x[1]), shape, Layout::kFlat));
}

TEST(Nuslerp, ColinearInputsFallBackToLerp) {
  const tensor::Shape shape{37, 53};
  const Tensor a = random_tensor(shape, 70);
  for (double factor : {2.0, -1.0, -2.0}) {  // parallel, antipodal, antipodal and longer
    Tensor b(shape);
    for (size_t j = 0; j < b.data.size(); ++j) b.data[j] = static_cast<float>(factor) * a.data[j];
    for (const auto& c : kNuslerpLayouts) {
      SCOPED_TRACE(fmt::format("factor {} layout {}", factor, static_cast<int>(c.layout)));
      auto e = make_entry(shape, {{{"weight", 0.7}}, {{"weight", 0.3}}}, std::nullopt, c.global);
      Vec want(a.data.size());
      for (size_t j = 0; j < want.size(); ++j) want[j] = 0.7 * a.data[j] + 0.3 * b.data[j];
      expect_close(run_method("nuslerp", e, {a, b}), want, 1e-6, 1e-6);
    }
  }
  // A zero task vector is not colinear: a^ = 0 gives theta = 90 degrees (mergekit's maths).
  std::vector<Tensor> f = family(shape, 1, 71);
  auto e = make_entry(shape, {{}, {{"weight", 1.0}}, {{"weight", 1.0}}}, 0);
  Vec want = to64(f[0]);
  axpy(want, std::sin(0.5 * std::numbers::pi / 2), sub(to64(f[1]), to64(f[0])));
  expect_close(run_method("nuslerp", e, {f[0], f[0], f[1]}), want);
}

TEST(Nuslerp, SingleInputPassesThroughAndCountsAreChecked) {
  const tensor::Shape shape{16, 8};
  std::vector<Tensor> f = family(shape, 3, 80);
  expect_close(run_method("nuslerp", make_entry(shape, {{{"weight", 0.3}}}, std::nullopt), {f[1]}),
               to64(f[1]), 0, 0);
  EXPECT_TRUE(merge::method_or_fail("nuslerp").copies_input(make_entry(shape, {{}}, 0)));
  expect_error(
      [&] {
        run_method("nuslerp", make_entry(shape, {{}, {{"weight", 1.0}}}, 0), {f[0], f[1]});
      },
      "can not be one of the two models");
  expect_error(
      [&] {
        run_method("nuslerp",
                   make_entry(shape, {{{"weight", 1.0}}, {{"weight", 1.0}}, {{"weight", 1.0}}},
                              std::nullopt),
                   {f[1], f[2], f[3]});
      },
      "exactly two models");
  expect_error(
      [&] {
        run_method("nuslerp", make_entry(shape, {{{"weight", 1.0}}, {}}, std::nullopt),
                   {f[1], f[2]});
      },
      "'weight'");
  expect_error(
      [&] {
        run_method("nuslerp",
                   make_entry(shape, {{{"weight", 1.0}}, {{"weight", 1.0}}}, std::nullopt,
                              {{"nuslerp_row_wise", 2}}),
                   {f[1], f[2]});
      },
      "switch");
}

// ---- multislerp ----

TEST(Multislerp, WithAndWithoutBaseEveryShape) {
  uint32_t seed = 100;
  for (const auto& shape : kShapes) {
    SCOPED_TRACE(tensor::shape_string(shape));
    std::vector<Tensor> f = family(shape, 3, seed += 10);
    const Vec w = {1.0, 0.6, 0.4};  // normalised to 0.5, 0.3, 0.2
    // Without a base: three independent tensors of different scales.
    std::vector<Tensor> x = {random_tensor(shape, seed + 5), random_tensor(shape, seed + 6, 0.3),
                             random_tensor(shape, seed + 7, 3.0)};
    auto e = make_entry(shape, {{{"weight", w[0]}}, {{"weight", w[1]}}, {{"weight", w[2]}}},
                        std::nullopt);
    expect_close(run_method("multislerp", e, x), multislerp_ref(to64(x), w, nullptr, true, 1e-8));
    // With a base (source 0): task vectors, base added back.
    auto eb =
        make_entry(shape, {{}, {{"weight", w[0]}}, {{"weight", w[1]}}, {{"weight", w[2]}}}, 0);
    const std::vector<Vec> ft = {to64(f[1]), to64(f[2]), to64(f[3])};
    const Vec b = to64(f[0]);
    expect_close(run_method("multislerp", eb, f), multislerp_ref(ft, w, &b, true, 1e-8));
  }
}

TEST(Multislerp, UnnormalizedWeightsAndEps) {
  const tensor::Shape shape{37, 53};
  std::vector<Tensor> f = family(shape, 2, 150);
  const Vec w = {2.0, 1.0};
  auto e = make_entry(shape, {{}, {{"weight", w[0]}}, {{"weight", w[1]}}}, 0,
                      {{"normalize_weights", 0}, {"eps", 1e-3}});
  const Vec b = to64(f[0]);
  expect_close(run_method("multislerp", e, f),
               multislerp_ref({to64(f[1]), to64(f[2])}, w, &b, false, 1e-3));
}

TEST(Multislerp, EdgeCases) {
  const tensor::Shape shape{37, 53};
  std::vector<Tensor> f = family(shape, 3, 160);
  // One model (with or without the base) passes through unchanged.
  expect_close(
      run_method("multislerp", make_entry(shape, {{}, {{"weight", 0.3}}}, 0), {f[0], f[1]}),
      to64(f[1]), 0, 0);
  expect_close(
      run_method("multislerp", make_entry(shape, {{{"weight", 0.3}}}, std::nullopt), {f[2]}),
      to64(f[2]), 0, 0);
  // Two antipodal task vectors with equal weights: lerp (mergekit's fallback), i.e. the base.
  Tensor mirror(shape);
  for (size_t j = 0; j < mirror.data.size(); ++j) {
    mirror.data[j] = 2 * f[0].data[j] - f[1].data[j];  // exact: B - (X - B) in bf16 range
  }
  auto two = make_entry(shape, {{}, {{"weight", 1.0}}, {{"weight", 1.0}}}, 0);
  Vec want(f[0].data.size());
  for (size_t j = 0; j < want.size(); ++j) {
    want[j] = f[0].data[j] + 0.5 * (f[1].data[j] - f[0].data[j]) +
              0.5 * (static_cast<double>(mirror.data[j]) - f[0].data[j]);
  }
  expect_close(run_method("multislerp", two, {f[0], f[1], mirror}), want, 1e-6, 1e-6);
  // Three that cancel: mergekit raises; so does amalgam, naming the tensor.
  auto three = make_entry(shape, {{}, {{"weight", 2.0}}, {{"weight", 1.0}}, {{"weight", 1.0}}}, 0);
  expect_error(
      [&] {
        run_method("multislerp", three, {f[0], f[1], mirror, mirror});
      },
      "cancel out");
  // Every task vector zero (no fine-tune changed the tensor): the base, not an error.
  expect_close(run_method("multislerp", three, {f[0], f[0], f[0], f[0]}), to64(f[0]), 0, 0);
  // Weights summing to 0 cannot be normalised.
  auto zero = make_entry(shape, {{}, {{"weight", 1.0}}, {{"weight", -1.0}}}, 0);
  expect_error([&] { run_method("multislerp", zero, {f[0], f[1], f[2]}); }, "sum to 0");
  auto eps = make_entry(shape, {{}, {{"weight", 1.0}}, {{"weight", 1.0}}}, 0, {{"eps", 0}});
  expect_error([&] { run_method("multislerp", eps, {f[0], f[1], f[2]}); }, "'eps' must be > 0");
  auto missing = make_entry(shape, {{}, {{"weight", 1.0}}, {}}, 0);
  expect_error([&] { run_method("multislerp", missing, {f[0], f[1], f[2]}); }, "'weight'");
}

// The single tangent step vanishes: sum_i w_i tau_i = m - (m . mhat) mhat = 0, so multislerp is
// the normalised mean direction times the weighted mean norm (documented in docs/methods).
TEST(Multislerp, IsTheScaledMeanDirection) {
  const tensor::Shape shape{37, 53};
  std::vector<Tensor> x = {random_tensor(shape, 170), random_tensor(shape, 171, 2.0),
                           random_tensor(shape, 172, 0.5)};
  const Vec w = {0.2, 0.5, 0.3};
  Vec m(x[0].data.size(), 0.0);
  double scale = 0;
  for (size_t i = 0; i < 3; ++i) {
    const Vec v = to64(x[i]);
    axpy(m, w[i] / norm(v), v);
    scale += w[i] * norm(v);
  }
  auto e =
      make_entry(shape, {{{"weight", w[0]}}, {{"weight", w[1]}}, {{"weight", w[2]}}}, std::nullopt);
  expect_close(run_method("multislerp", e, x), scaled(m, scale / norm(m)));
}

// ---- karcher ----

// Points at uneven angles (two close together, one apart, one between), so that the Karcher
// mean differs from the normalised mean of the directions and the iteration has work to do.
std::vector<Tensor> uneven_points(const tensor::Shape& shape, uint32_t seed) {
  const Tensor a = random_tensor(shape, seed), b = random_tensor(shape, seed + 1),
               c = random_tensor(shape, seed + 2);
  std::vector<Tensor> out(4, Tensor(shape));
  for (size_t j = 0; j < a.data.size(); ++j) {
    out[0].data[j] = a.data[j];
    out[1].data[j] = bf16(0.4 * (0.9 * a.data[j] + 0.3 * b.data[j]));
    out[2].data[j] = bf16(2.5 * c.data[j]);
    out[3].data[j] = bf16(1.5 * (-0.5 * a.data[j] + 0.7 * c.data[j] + 0.4 * b.data[j]));
  }
  return out;
}

TEST(Karcher, MatchesTheIterationEveryShape) {
  uint32_t seed = 200;
  for (const auto& shape : kShapes) {
    SCOPED_TRACE(tensor::shape_string(shape));
    std::vector<Tensor> x = uneven_points(shape, seed += 3);
    x.pop_back();
    auto e = make_entry(shape, {{}, {}, {}}, std::nullopt);
    expect_close(run_method("karcher", e, x), karcher_ref(to64(x), 10, 1e-5));
    // Fine-tunes of one base (small angles); the base is one more ordinary point.
    std::vector<Tensor> f = family(shape, 2, seed++);
    expect_close(run_method("karcher", make_entry(shape, {{}, {}, {}}, 0), f),
                 karcher_ref(to64(f), 10, 1e-5));
  }
}

TEST(Karcher, IterationsAndTolerance) {
  const tensor::Shape shape{37, 53};
  const std::vector<Tensor> x = uneven_points(shape, 230);
  // The steps matter: one iteration moves the start by far more than the tolerance used here.
  const Vec start = karcher_ref(to64(x), 0, 1e-5), one = karcher_ref(to64(x), 1, 1e-5);
  EXPECT_GT(norm(sub(start, one)), 1e-2 * norm(start));
  for (double iters : {0.0, 1.0, 2.0, 50.0}) {
    for (double tol : {1e-5, 1e-2, 0.0}) {
      SCOPED_TRACE(fmt::format("max_iter {} tol {}", iters, tol));
      auto e =
          make_entry(shape, {{}, {}, {}, {}}, std::nullopt, {{"max_iter", iters}, {"tol", tol}});
      expect_close(run_method("karcher", e, x), karcher_ref(to64(x), static_cast<int>(iters), tol));
    }
  }
  // More iterations converge: 50 and 100 agree closely.
  auto a = make_entry(shape, {{}, {}, {}, {}}, std::nullopt, {{"max_iter", 50}, {"tol", 0}});
  auto b = make_entry(shape, {{}, {}, {}, {}}, std::nullopt, {{"max_iter", 100}, {"tol", 0}});
  expect_close(run_method("karcher", a, x), to64(run_method("karcher", b, x)), 1e-6, 1e-6);
}

TEST(Karcher, ZeroTensorsAndEdgeCases) {
  const tensor::Shape shape{37, 53};
  const Tensor zero(shape);
  std::vector<Tensor> x = {random_tensor(shape, 240), zero, random_tensor(shape, 241, 3.0)};
  // A zero tensor has no direction: left out of the mean, but counted in the mean norm.
  auto e = make_entry(shape, {{}, {}, {}}, std::nullopt);
  const Vec got_ref = karcher_ref(to64(x), 10, 1e-5);
  expect_close(run_method("karcher", e, x), got_ref);
  const Vec two = karcher_ref({to64(x[0]), to64(x[2])}, 10, 1e-5);
  expect_close(run_method("karcher", e, x), scaled(two, 2.0 / 3.0));
  // All zero: zeros.
  expect_close(run_method("karcher", e, {zero, zero, zero}), Vec(zero.data.size(), 0.0), 0, 0);
  // Identical inputs: that tensor.
  expect_close(run_method("karcher", e, {x[0], x[0], x[0]}), to64(x[0]), 1e-6, 1e-6);
  // One input passes through.
  expect_close(run_method("karcher", make_entry(shape, {{}}, std::nullopt), {x[2]}), to64(x[2]), 0,
               0);
  // Opposite points have no spherical mean.
  Tensor neg(shape);
  for (size_t j = 0; j < neg.data.size(); ++j) neg.data[j] = -x[0].data[j];
  expect_error(
      [&] {
        run_method("karcher", make_entry(shape, {{}, {}}, std::nullopt), {x[0], neg});
      },
      "antipodal");
  // Parameters: max_iter is a whole number >= 0, tol >= 0.
  expect_error(
      [&] {
        run_method("karcher", make_entry(shape, {{}, {}, {}}, std::nullopt, {{"max_iter", 2.5}}),
                   x);
      },
      "whole number");
  expect_error(
      [&] {
        run_method("karcher", make_entry(shape, {{}, {}, {}}, std::nullopt, {{"max_iter", -1}}), x);
      },
      "out of range");
  expect_error(
      [&] {
        run_method("karcher", make_entry(shape, {{}, {}, {}}, std::nullopt, {{"tol", -1e-5}}), x);
      },
      "out of range");
}

// ---- model_stock ----

TEST(ModelStock, PerTensorAndFilterWiseEveryShape) {
  uint32_t seed = 300;
  for (const auto& shape : kShapes) {
    for (size_t count : {2, 3}) {
      std::vector<Tensor> f = family(shape, count, seed += 10);
      std::vector<Vec> ws;
      for (size_t i = 1; i <= count; ++i) ws.push_back(to64(f[i]));
      for (double filter_wise : {0.0, 1.0}) {
        SCOPED_TRACE(fmt::format("shape {} models {} filter_wise {}", tensor::shape_string(shape),
                                 count, filter_wise));
        auto e =
            make_entry(shape, std::vector<Params>(count + 1), 0, {{"filter_wise", filter_wise}});
        expect_close(run_method("model_stock", e, f),
                     model_stock_ref(to64(f[0]), ws, shape, filter_wise != 0));
      }
    }
  }
}

TEST(ModelStock, BaseAnywhereAndOppositeDirections) {
  const tensor::Shape shape{37, 53};
  std::vector<Tensor> f = family(shape, 3, 350);
  // The base is the second source.
  auto e = make_entry(shape, {{}, {}, {}, {}}, 1);
  expect_close(run_method("model_stock", e, {f[1], f[0], f[2], f[3]}),
               model_stock_ref(to64(f[0]), {to64(f[1]), to64(f[2]), to64(f[3])}, shape, false));
  // Task vectors at more than 90 degrees give t < 0 (extrapolation away from the mean), as in
  // mergekit; exactly opposite ones make t infinite: a clear error.
  Tensor far(shape), mirror(shape);
  const Tensor other = random_tensor(shape, 351, 0.02);
  for (size_t j = 0; j < far.data.size(); ++j) {
    far.data[j] = bf16(f[0].data[j] - (f[1].data[j] - f[0].data[j]) + other.data[j]);
    mirror.data[j] = 2 * f[0].data[j] - f[1].data[j];
  }
  auto two = make_entry(shape, {{}, {}, {}}, 0);
  expect_close(run_method("model_stock", two, {f[0], f[1], far}),
               model_stock_ref(to64(f[0]), {to64(f[1]), to64(far)}, shape, false));
  expect_error([&] { run_method("model_stock", two, {f[0], f[1], mirror}); }, "cancel out");
  auto rows = make_entry(shape, {{}, {}, {}}, 0, {{"filter_wise", 1}});
  expect_error(
      [&] {
        run_method("model_stock", rows, {f[0], f[1], mirror});
      },
      "row 0 (filter_wise)");
}

// Task vectors so small that the product of their norms is below 1e-6: the clamp shrinks cos.
TEST(ModelStock, TinyTaskVectorsHitTheNormClamp) {
  const tensor::Shape shape{16, 8};
  const Tensor base(shape);
  std::vector<Tensor> x = {base, random_tensor(shape, 340, 1e-5), random_tensor(shape, 341, 1e-5),
                           random_tensor(shape, 342, 1e-5)};
  for (size_t j = 0; j < base.data.size(); ++j) {  // some shared direction, so that cos > 0
    x[2].data[j] = bf16(0.5 * x[2].data[j] + x[1].data[j]);
  }
  std::vector<Vec> ws = {to64(x[1]), to64(x[2]), to64(x[3])};
  for (double filter_wise : {0.0, 1.0}) {
    auto e = make_entry(shape, {{}, {}, {}, {}}, 0, {{"filter_wise", filter_wise}});
    expect_close(run_method("model_stock", e, x),
                 model_stock_ref(to64(base), ws, shape, filter_wise != 0), 1e-5, 1e-12);
  }
}

TEST(ModelStock, NeedsTheBaseAndTwoOthers) {
  const tensor::Shape shape{16, 8};
  std::vector<Tensor> f = family(shape, 2, 360);
  expect_error(
      [&] {
        run_method("model_stock", make_entry(shape, {{}, {}}, 0), {f[0], f[1]});
      },
      "at least 3 models");
  expect_error(
      [&] {
        run_method("model_stock", make_entry(shape, {{}, {}, {}}, std::nullopt), f);
      },
      "needs a base_model");
  // Only the base has the tensor: it passes through.
  expect_close(run_method("model_stock", make_entry(shape, {{}}, 0), {f[0]}), to64(f[0]), 0, 0);
  // All fine-tunes equal to the base: zero task vectors, cos = 0, t = 0: the base.
  expect_close(run_method("model_stock", make_entry(shape, {{}, {}, {}}, 0), {f[0], f[0], f[0]}),
               to64(f[0]), 0, 0);
  expect_error(
      [&] {
        run_method("model_stock", make_entry(shape, {{}, {}, {}}, 0, {{"filter_wise", 0.5}}), f);
      },
      "switch");
}

// ---- what the methods say about themselves ----

TEST(SphericalMethods, DescribeThemselves) {
  using merge::BaseRole;
  struct Expect {
    const char* name;
    BaseRole base;
    std::vector<std::pair<std::string, std::optional<double>>> params;
  };
  const std::vector<Expect> expect = {
      {"nuslerp",
       BaseRole::kOptional,
       {{"weight", std::nullopt}, {"nuslerp_flatten", 1.0}, {"nuslerp_row_wise", 0.0}}},
      {"multislerp",
       BaseRole::kOptional,
       {{"weight", std::nullopt}, {"normalize_weights", 1.0}, {"eps", 1e-8}}},
      {"karcher", BaseRole::kInput, {{"max_iter", 10.0}, {"tol", 1e-5}}},
      {"model_stock", BaseRole::kRequired, {{"filter_wise", 0.0}}},
  };
  for (const auto& x : expect) {
    SCOPED_TRACE(x.name);
    const auto& m = merge::method_or_fail(x.name);
    EXPECT_EQ(m.info().base, x.base);
    EXPECT_EQ(m.info().embed, merge::EmbedRule::kCommonSubMatrix);
    EXPECT_FALSE(m.info().inputs);
    EXPECT_FALSE(m.info().title.empty());
    EXPECT_EQ(m.info().reference.rfind("https://", 0), 0u);
    EXPECT_EQ(m.info().params.size(), x.params.size());
    for (const auto& [name, def] : x.params) {
      const merge::ParamSpec* p = m.param(name);
      ASSERT_NE(p, nullptr) << name;
      EXPECT_EQ(p->default_value, def) << name;
      EXPECT_EQ(p->searchable, name == "weight") << name;
      EXPECT_EQ(p->scope == merge::ParamScope::kTensor, name == "weight") << name;
    }
  }
  EXPECT_EQ(merge::method_or_fail("karcher").param("max_iter")->kind, merge::ParamKind::kInt);
  EXPECT_EQ(merge::method_or_fail("model_stock").param("filter_wise")->kind,
            merge::ParamKind::kBool);
}

// ---- end to end: recipes over zoo models through the CLI ----

using testing::run_amalgam;
using testing::TempDir;
using testing::zoo;

struct ZooTensors {
  std::vector<std::unique_ptr<io::Checkpoint>> models;
  std::vector<Vec> load(const std::string& name) const {
    std::vector<Vec> out;
    for (const auto& m : models) out.push_back(to64(m->load_f32(name)));
    return out;
  }
};

ZooTensors open_zoo(const std::vector<std::string>& names) {
  ZooTensors z;
  for (const auto& n : names) z.models.push_back(std::make_unique<io::Checkpoint>(zoo(n)));
  return z;
}

// Merges `yaml`, checks that `inspect` reads the output, and compares every tensor (bf16) with
// f(inputs) in fp64: within one bf16 rounding (2^-8 relative) plus 1e-6 for results near zero.
void merge_and_check(const std::string& yaml, const std::vector<std::string>& models,
                     const std::function<Vec(const std::string&, const tensor::Shape&,
                                             const std::vector<Vec>&)>& f) {
  TempDir dir;
  testing::write_file(dir / "recipe.yaml", yaml);
  const auto out = dir / "out";
  auto r = run_amalgam(
      fmt::format("merge {} -o {} --quiet", (dir / "recipe.yaml").string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto inspect = run_amalgam("inspect " + out.string());
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("model.layers.3.mlp.down_proj.weight"), std::string::npos)
      << inspect.output;
  io::Checkpoint result(out);
  const ZooTensors in = open_zoo(models);
  EXPECT_EQ(result.names(), in.models[0]->names());
  for (const auto& name : result.names()) {
    const Tensor got = result.load_f32(name);
    const Vec want = f(name, got.shape, in.load(name));
    size_t bad = 0;
    for (size_t j = 0; j < want.size(); ++j) {
      if (std::fabs(got.data[j] - want[j]) > std::ldexp(std::fabs(want[j]), -8) + 1e-6 &&
          bad++ < 3) {
        ADD_FAILURE() << name << "[" << j << "]: got " << got.data[j] << " want " << want[j];
      }
    }
    EXPECT_EQ(bad, 0u) << name;
  }
}

std::string zoo_path(const std::string& name) { return zoo(name).string(); }

TEST(SphericalE2E, NuslerpTaskVectorsRowWise) {
  merge_and_check(
      fmt::format(R"(merge_method: nuslerp
base_model: {}
models:
  - model: {}
    parameters: {{weight: 0.4}}
  - model: {}
    parameters: {{weight: 0.6}}
parameters:
  nuslerp_flatten: false
dtype: bfloat16
)",
                  zoo_path("base"), zoo_path("add-expert"), zoo_path("rev-expert")),
      {"base", "add-expert", "rev-expert"},
      [](const std::string&, const tensor::Shape& shape, const std::vector<Vec>& x) {
        return add(x[0], nuslerp_ref(0.6, sub(x[1], x[0]), sub(x[2], x[0]), shape, Layout::kRows));
      });
}

TEST(SphericalE2E, MultislerpThreeExpertsWithBase) {
  merge_and_check(fmt::format(R"(merge_method: multislerp
base_model: {}
models:
  - model: {}
    parameters: {{weight: 0.5}}
  - model: {}
    parameters: {{weight: 0.3}}
  - model: {}
    parameters: {{weight: 0.2}}
dtype: bfloat16
)",
                              zoo_path("base"), zoo_path("add-expert"), zoo_path("rev-expert"),
                              zoo_path("sort-expert")),
                  {"base", "add-expert", "rev-expert", "sort-expert"},
                  [](const std::string&, const tensor::Shape&, const std::vector<Vec>& x) {
                    return multislerp_ref({x[1], x[2], x[3]}, {0.5, 0.3, 0.2}, &x[0], true, 1e-8);
                  });
}

TEST(SphericalE2E, KarcherExpertsAndBase) {
  merge_and_check(fmt::format(R"(merge_method: karcher
base_model: {}
models:
  - model: {}
  - model: {}
  - model: {}
parameters:
  max_iter: 20
dtype: bfloat16
)",
                              zoo_path("base"), zoo_path("add-expert"), zoo_path("rev-expert"),
                              zoo_path("sort-expert")),
                  {"add-expert", "rev-expert", "sort-expert", "base"},
                  [](const std::string&, const tensor::Shape&, const std::vector<Vec>& x) {
                    return karcher_ref(x, 20, 1e-5);
                  });
}

TEST(SphericalE2E, ModelStockAddExperts) {
  for (bool filter_wise : {false, true}) {
    SCOPED_TRACE(filter_wise);
    merge_and_check(fmt::format(R"(merge_method: model_stock
base_model: {}
models:
  - model: {}
  - model: {}
  - model: {}
parameters:
  filter_wise: {}
dtype: bfloat16
)",
                                zoo_path("base"), zoo_path("add-expert"), zoo_path("add-expert-s1"),
                                zoo_path("add-expert-s2"), filter_wise),
                    {"base", "add-expert", "add-expert-s1", "add-expert-s2"},
                    [&](const std::string&, const tensor::Shape& shape, const std::vector<Vec>& x) {
                      return model_stock_ref(x[0], {x[1], x[2], x[3]}, shape, filter_wise);
                    });
  }
}

TEST(SphericalE2E, NuslerpBaseAmongTheTwoModelsFails) {
  TempDir dir;
  testing::write_file(dir / "recipe.yaml",
                      fmt::format(R"(merge_method: nuslerp
base_model: {}
models:
  - model: {}
    parameters: {{weight: 0.5}}
  - model: {}
    parameters: {{weight: 0.5}}
)",
                                  zoo_path("base"), zoo_path("base"), zoo_path("add-expert")));
  auto r = run_amalgam(fmt::format("merge {} -o {} --quiet", (dir / "recipe.yaml").string(),
                                   (dir / "out").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("can not be one of the two models"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "out"));
}

}  // namespace
}  // namespace amalgam
