// The sparsifying GTA methods (spec/mergekit-compat.md 1.7, 1.8): breadcrumbs against an fp64
// reference of the magnitude band; DARE and DELLA, whose masks are random, by their statistics
// (kept fraction, L1 rescaling, rank dependence) and their determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "merge/counter_rng.h"
#include "merge/method.h"
#include "test_util.h"

namespace amalgam {
namespace {

using merge::Params;
using merge::PlanEntry;
using tensor::Tensor;

Tensor random_tensor(tensor::Shape shape, uint32_t seed, double scale = 1.0) {
  Tensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, static_cast<float>(scale));
  for (float& v : t.data) v = core::bf16_to_f32(core::f32_to_bf16(dist(rng)));
  return t;
}

// Base first, then the models with their per-model parameters.
PlanEntry make_entry(const tensor::Shape& shape, const std::vector<Params>& models,
                     Params global = {}) {
  PlanEntry e;
  e.name = "model.layers.0.mlp.up_proj.weight";
  e.out_dtype = tensor::DType::kF32;
  e.shape = shape;
  e.sources.push_back({0, e.name, {}});
  for (size_t i = 0; i < models.size(); ++i) e.sources.push_back({i + 1, e.name, models[i]});
  e.base = 0;
  e.global = std::move(global);
  return e;
}

double l1(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += std::fabs(x);
  return s;
}

std::vector<double> diff(const Tensor& a, const Tensor& b) {
  std::vector<double> d(a.data.size());
  for (size_t j = 0; j < d.size(); ++j) d[j] = double(a.data[j]) - double(b.data[j]);
  return d;
}

using testing::expect_error;
using testing::run_method;

TEST(CounterRng, UniformAndIndependentOfVisitOrder) {
  merge::CounterRng rng(7, "a.weight", 1);
  const uint32_t t = merge::CounterRng::threshold(0.3);
  size_t kept = 0;
  const size_t n = 1'000'000;
  for (size_t i = 0; i < n; ++i) kept += rng.bits24(i) < t;
  EXPECT_NEAR(double(kept) / n, 0.3, 0.003);
  EXPECT_EQ(rng.bits24(12345), merge::CounterRng(7, "a.weight", 1).bits24(12345));
  EXPECT_NE(rng.bits24(12345), merge::CounterRng(8, "a.weight", 1).bits24(12345));
  EXPECT_NE(rng.bits24(12345), merge::CounterRng(7, "b.weight", 1).bits24(12345));
  EXPECT_NE(rng.bits24(12345), merge::CounterRng(7, "a.weight", 2).bits24(12345));
}

TEST(Dare, KeepsTheDensityAndRestoresTheL1Norm) {
  const tensor::Shape shape{300, 400};
  Tensor base = random_tensor(shape, 1);
  Tensor x = random_tensor(shape, 2);
  const std::vector<double> d = diff(x, base);
  for (double density : {0.1, 0.5, 0.9}) {
    // One model, weight 1: out - B is the rescaled, masked task vector.
    auto e = make_entry(shape, {{{"weight", 1.0}, {"density", density}}});
    const Tensor out = run_method("dare_linear", e, {base, x}, 42);
    const std::vector<double> got = diff(out, base);
    size_t kept = 0;
    double ratio = 0;
    for (size_t j = 0; j < got.size(); ++j) {
      if (got[j] != 0) {
        ++kept;
        ratio = got[j] / d[j];
      }
    }
    EXPECT_NEAR(double(kept) / got.size(), density, 0.01) << density;
    EXPECT_NEAR(l1(got) / l1(d), 1.0, 1e-4) << density;  // L1 norm matched (rescale default)
    EXPECT_NEAR(ratio, 1.0 / density, 0.05 / density);   // ~1/p in expectation
    // Without rescale the kept entries are the task vector itself.
    auto plain = e;
    plain.global["rescale"] = 0;
    const std::vector<double> raw = diff(run_method("dare_linear", plain, {base, x}, 42), base);
    for (size_t j = 0; j < raw.size(); ++j) {
      ASSERT_TRUE(raw[j] == 0 || std::fabs(raw[j] - d[j]) < 1e-6) << j;
      ASSERT_EQ(raw[j] != 0, got[j] != 0) << j;  // the same mask
    }
  }
}

TEST(Dare, SeededDeterministicAndDensityOneIsTiesOrTaskArithmetic) {
  const tensor::Shape shape{64, 96};
  Tensor base = random_tensor(shape, 3);
  std::vector<Tensor> in = {base, random_tensor(shape, 4), random_tensor(shape, 5)};
  auto e =
      make_entry(shape, {{{"weight", 0.6}, {"density", 0.4}}, {{"weight", 0.8}, {"density", 0.7}}});
  const Tensor a = run_method("dare_ties", e, in, 1), b = run_method("dare_ties", e, in, 1);
  const Tensor c = run_method("dare_ties", e, in, 2);
  EXPECT_EQ(a.data, b.data);
  EXPECT_NE(a.data, c.data);
  // density 1 keeps everything: dare_linear is task arithmetic, dare_ties is TIES at density 1
  // without normalisation (dare_ties' default).
  auto full = make_entry(shape, {{{"weight", 0.6}}, {{"weight", 0.8}}});
  EXPECT_EQ(run_method("dare_linear", full, in, 9).data,
            run_method("task_arithmetic", full, in).data);
  auto ties = full;
  ties.global["normalize"] = 0;
  EXPECT_EQ(run_method("dare_ties", full, in, 9).data, run_method("ties", ties, in).data);
}

// Breadcrumbs in fp64: drop the int(gamma n) largest and the n - keep - top smallest magnitudes
// (ties broken by index, larger index = smaller), keep the band between.
std::vector<double> breadcrumbs_reference(const Tensor& base, const Tensor& x, double density,
                                          double gamma) {
  const size_t n = base.data.size();
  std::vector<double> d = diff(x, base);
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return std::fabs(d[a]) > std::fabs(d[b]); });
  size_t keep = static_cast<size_t>(density * n), top = static_cast<size_t>(gamma * n);
  if (keep + top > n) top = n - keep;
  const size_t bottom = n - keep - top;
  std::vector<double> out(n, 0.0);
  for (size_t r = top; r < n - bottom; ++r) out[idx[r]] = d[idx[r]];
  for (size_t j = 0; j < n; ++j) out[j] += base.data[j];
  return out;
}

TEST(Breadcrumbs, KeepsTheMagnitudeBand) {
  for (tensor::Shape shape : {tensor::Shape{30, 40}, tensor::Shape{600, 1000}}) {
    Tensor base = random_tensor(shape, 6);
    Tensor x = random_tensor(shape, 7);
    for (auto [density, gamma] : {std::pair{0.5, 0.01}, {0.9, 0.2}, {0.3, 0.0}}) {
      auto e = make_entry(shape, {{{"weight", 1.0}, {"density", density}, {"gamma", gamma}}});
      const Tensor got = run_method("breadcrumbs", e, {base, x});
      const std::vector<double> want = breadcrumbs_reference(base, x, density, gamma);
      size_t bad = 0;
      for (size_t j = 0; j < want.size(); ++j) bad += std::fabs(got.data[j] - want[j]) > 1e-6;
      EXPECT_EQ(bad, 0u) << density << " " << gamma;
    }
  }
}

TEST(Breadcrumbs, GammaBelowOneElementDropsNothingAtTheTop) {
  // mergekit zeroes the whole delta when int(gamma n) == 0 (a slice [bot:-0]); amalgam keeps the
  // intended band: the largest values survive.
  const tensor::Shape shape{50};
  Tensor base = random_tensor(shape, 8), x = random_tensor(shape, 9);
  auto e = make_entry(shape, {{{"weight", 1.0}, {"density", 0.5}, {"gamma", 0.01}}});
  const std::vector<double> got = diff(run_method("breadcrumbs", e, {base, x}), base);
  size_t kept = 0;
  for (double v : got) kept += v != 0;
  EXPECT_EQ(kept, 25u);
}

TEST(Della, KeepProbabilityRisesWithMagnitudeRank) {
  const tensor::Shape shape{400, 500};
  Tensor base = random_tensor(shape, 10), x = random_tensor(shape, 11);
  const double density = 0.5, epsilon = 0.2;
  auto e = make_entry(shape, {{{"weight", 1.0}, {"density", density}, {"epsilon", epsilon}}});
  const std::vector<double> d = diff(x, base);
  const std::vector<double> got = diff(run_method("della_linear", e, {base, x}, 3), base);
  // Per row: kept fraction among the smaller and the larger half of the magnitudes.
  size_t low_kept = 0, high_kept = 0, low = 0, high = 0;
  const size_t cols = 500;
  for (size_t r = 0; r < 400; ++r) {
    std::vector<double> mags(d.begin() + r * cols, d.begin() + (r + 1) * cols);
    for (double& m : mags) m = std::fabs(m);
    std::vector<double> sorted = mags;
    std::nth_element(sorted.begin(), sorted.begin() + cols / 2, sorted.end());
    const double median = sorted[cols / 2];
    for (size_t c = 0; c < cols; ++c) {
      const bool kept = got[r * cols + c] != 0;
      if (mags[c] < median) {
        ++low;
        low_kept += kept;
      } else {
        ++high;
        high_kept += kept;
      }
    }
  }
  // Mean keep probability of the lower half: density - epsilon / 2; of the upper half: + epsilon
  // / 2.
  EXPECT_NEAR(double(low_kept) / low, density - epsilon / 2, 0.01);
  EXPECT_NEAR(double(high_kept) / high, density + epsilon / 2, 0.01);
  EXPECT_NEAR(l1(got) / l1(d), 1.0, 1e-4);  // L1 rescale is della's default
}

TEST(Della, RefusesProbabilitiesOutsideZeroOne) {
  const tensor::Shape shape{8, 8};
  Tensor base = random_tensor(shape, 12), x = random_tensor(shape, 13);
  auto e = make_entry(shape, {{{"weight", 1.0}, {"density", 0.1}, {"epsilon", 0.15}}});
  expect_error([&] { run_method("della", e, {base, x}); }, "density - epsilon");
  auto range = make_entry(shape, {{{"weight", 1.0}, {"density", 1.5}}});
  expect_error([&] { run_method("della", range, {base, x}); }, "out of range");
}

TEST(Gta, SwitchesAcceptOnlyZeroOrOne) {
  const tensor::Shape shape{8};
  Tensor base = random_tensor(shape, 14), x = random_tensor(shape, 15);
  auto e = make_entry(shape, {{{"weight", 1.0}}}, {{"normalize", 0.5}});
  expect_error([&] { run_method("ties", e, {base, x}); }, "switch");
}

}  // namespace
}  // namespace amalgam
