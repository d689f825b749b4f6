// Each merge method against an independent fp64 computation of the spec's formulas
// (spec/mergekit-compat.md sections 1.1, 1.2, 1.6-1.8), written here from the maths, not from the
// implementation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "merge/method.h"
#include "merge/sparsify.h"
#include "test_util.h"

namespace amalgam {
namespace {

using merge::Params;
using merge::PlanEntry;
using tensor::Tensor;

// Values rounded to bf16, as checkpoints hold them: differences of two such values are exact in
// fp32, so the top-k selections of the implementation and of the fp64 reference see the same
// magnitudes.
Tensor random_tensor(tensor::Shape shape, uint32_t seed, double scale = 1.0) {
  Tensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, static_cast<float>(scale));
  for (float& v : t.data) v = core::bf16_to_f32(core::f32_to_bf16(dist(rng)));
  return t;
}

// Values from a tiny set, so that magnitudes tie everywhere.
Tensor tie_heavy_tensor(tensor::Shape shape, uint32_t seed) {
  Tensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-3, 3);
  for (float& v : t.data) v = 0.25f * static_cast<float>(dist(rng));
  return t;
}

PlanEntry make_entry(const tensor::Shape& shape, const std::vector<Params>& per_model,
                     std::optional<size_t> base, Params global = {}) {
  PlanEntry e;
  e.name = "test.weight";
  e.out_dtype = tensor::DType::kF32;
  e.shape = shape;
  for (size_t i = 0; i < per_model.size(); ++i) {
    e.sources.push_back({i, e.name, per_model[i]});
  }
  e.base = base;
  e.global = std::move(global);
  return e;
}

void expect_close(const Tensor& got, const std::vector<double>& want, double rel, double abs_tol) {
  ASSERT_EQ(got.data.size(), want.size());
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = abs_tol + rel * std::fabs(want[i]);
    if (std::fabs(got.data[i] - want[i]) > tol && bad++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got.data[i] << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u);
}

using testing::expect_error;
using testing::run_method;

TEST(Linear, WeightedMeanWithAndWithoutNormalize) {
  const tensor::Shape shape{37, 53};
  std::vector<Tensor> x = {random_tensor(shape, 1), random_tensor(shape, 2),
                           random_tensor(shape, 3)};
  const std::vector<double> w = {0.5, 1.25, -0.3};
  for (double normalize : {1.0, 0.0}) {
    auto e = make_entry(shape, {{{"weight", w[0]}}, {{"weight", w[1]}}, {{"weight", w[2]}}},
                        std::nullopt, {{"normalize", normalize}});
    std::vector<double> want(x[0].data.size());
    const double sum = w[0] + w[1] + w[2];
    for (size_t j = 0; j < want.size(); ++j) {
      double v = 0;
      for (size_t i = 0; i < 3; ++i) v += w[i] * x[i].data[j];
      want[j] = normalize != 0 ? v / sum : v;
    }
    expect_close(run_method("linear", e, x), want, 1e-5, 1e-6);
  }
}

TEST(Linear, NormalizeIsTheDefaultAndZeroSumIsRefused) {
  const tensor::Shape shape{8};
  std::vector<Tensor> x = {random_tensor(shape, 4), random_tensor(shape, 5)};
  auto e = make_entry(shape, {{{"weight", 2.0}}, {{"weight", 6.0}}}, std::nullopt);
  std::vector<double> want(8);
  for (size_t j = 0; j < 8; ++j) want[j] = (2.0 * x[0].data[j] + 6.0 * x[1].data[j]) / 8.0;
  expect_close(run_method("linear", e, x), want, 1e-6, 1e-7);

  auto zero = make_entry(shape, {{{"weight", 1.0}}, {{"weight", -1.0}}}, std::nullopt);
  expect_error([&] { run_method("linear", zero, x); }, "sum to 0");
  auto missing = make_entry(shape, {{{"weight", 1.0}}, {}}, std::nullopt);
  expect_error([&] { run_method("linear", missing, x); }, "'weight'");
}

TEST(Passthrough, CopiesAndScales) {
  const tensor::Shape shape{16, 4};
  std::vector<Tensor> x = {random_tensor(shape, 6)};
  auto plain = make_entry(shape, {{}}, std::nullopt);
  Tensor out = run_method("passthrough", plain, x);
  EXPECT_EQ(out.data, x[0].data);
  auto scaled = make_entry(shape, {{{"scale", 0.5}}}, std::nullopt);
  std::vector<double> want(x[0].data.begin(), x[0].data.end());
  for (double& v : want) v *= 0.5;
  expect_close(run_method("passthrough", scaled, x), want, 0, 0);
  auto zero = make_entry(shape, {{{"scale", 0.0}}}, std::nullopt);
  for (float v : run_method("passthrough", zero, x).data) EXPECT_EQ(v, 0.0f);
  std::vector<Tensor> two = {x[0], x[0]};
  expect_error(
      [&] {
        run_method("passthrough", make_entry(shape, {{}, {}}, std::nullopt), two);
      },
      "exactly one input");
}

// Spherical interpolation in fp64, from the formula (spec 1.2).
std::vector<double> slerp_reference(const Tensor& v0, const Tensor& v1, double t) {
  double n0 = 0, n1 = 0, dot = 0;
  for (size_t j = 0; j < v0.data.size(); ++j) {
    n0 += double(v0.data[j]) * v0.data[j];
    n1 += double(v1.data[j]) * v1.data[j];
    dot += double(v0.data[j]) * v1.data[j];
  }
  const double c = dot / std::sqrt(n0) / std::sqrt(n1);
  std::vector<double> out(v0.data.size());
  for (size_t j = 0; j < out.size(); ++j) {
    if (std::fabs(c) > 0.9995) {
      out[j] = (1 - t) * v0.data[j] + t * v1.data[j];
    } else {
      const double th = std::acos(c);
      out[j] = (std::sin((1 - t) * th) * v0.data[j] + std::sin(t * th) * v1.data[j]) / std::sin(th);
    }
  }
  return out;
}

TEST(Slerp, InterpolatesOnTheSphereFromTheBase) {
  const tensor::Shape shape{300, 400};  // several chunks
  Tensor base = random_tensor(shape, 7), other = random_tensor(shape, 8);
  for (double t : {0.0, 0.3, 1.0}) {
    // Base listed second: t still runs from the base (t = 0) to the other model (t = 1).
    auto e = make_entry(shape, {{}, {}}, 1, {{"t", t}});
    Tensor out = run_method("slerp", e, {other, base});
    expect_close(out, slerp_reference(base, other, t), 1e-5, 1e-6);
    if (t == 0.0) {
      EXPECT_EQ(out.data, base.data);
    }
    if (t == 1.0) {
      EXPECT_EQ(out.data, other.data);
    }
  }
  // Two random vectors are far from colinear: the result is not the lerp.
  auto e = make_entry(shape, {{}, {}}, 0, {{"t", 0.3}});
  Tensor out = run_method("slerp", e, {base, other});
  EXPECT_GT(std::fabs(out.data[0] - (0.7 * base.data[0] + 0.3 * other.data[0])), 1e-4);
}

TEST(Slerp, NearlyColinearFallsBackToLerp) {
  const tensor::Shape shape{64, 64};
  Tensor base = random_tensor(shape, 9);
  Tensor other = base;
  for (float& v : other.data) v *= 2.0f;
  other.data[5] += 0.01f;  // cos stays above 0.9995
  auto e = make_entry(shape, {{}, {}}, 0, {{"t", 0.3}});
  std::vector<double> lerp(base.data.size());
  for (size_t j = 0; j < lerp.size(); ++j) lerp[j] = 0.7 * base.data[j] + 0.3 * other.data[j];
  expect_close(run_method("slerp", e, {base, other}), lerp, 1e-6, 1e-7);
  expect_close(run_method("slerp", e, {base, other}), slerp_reference(base, other, 0.3), 1e-6,
               1e-7);
}

TEST(Slerp, NeedsTwoInputsAndABase) {
  const tensor::Shape shape{4};
  Tensor a = random_tensor(shape, 10);
  EXPECT_EQ(run_method("slerp", make_entry(shape, {{}}, 0, {{"t", 0.5}}), {a}).data, a.data);
  expect_error(
      [&] {
        run_method("slerp", make_entry(shape, {{}, {}, {}}, 0, {{"t", 0.5}}), {a, a, a});
      },
      "exactly two");
  expect_error(
      [&] {
        run_method("slerp", make_entry(shape, {{}, {}}, std::nullopt, {{"t", .5}}), {a, a});
      },
      "base_model");
  expect_error([&] { run_method("slerp", make_entry(shape, {{}, {}}, 0), {a, a}); }, "'t'");
}

// Generalized task arithmetic in fp64 (spec 1.7), with TIES top-k (ties broken by index) and sign
// consensus when asked.
struct GtaReference {
  double lambda = 1.0;
  bool normalize = false;
  bool ties = false;
  std::vector<double> weights;    // per non-base model
  std::vector<double> densities;  // per non-base model
};

std::vector<double> gta_reference(const Tensor& base, const std::vector<Tensor>& models,
                                  const GtaReference& p) {
  const size_t n = base.data.size();
  std::vector<std::vector<double>> D(models.size(), std::vector<double>(n));
  for (size_t m = 0; m < models.size(); ++m) {
    std::vector<double> d(n);
    for (size_t j = 0; j < n; ++j) d[j] = double(models[m].data[j]) - double(base.data[j]);
    if (p.ties && p.densities[m] < 1.0) {
      const size_t k = static_cast<size_t>(p.densities[m] * double(n));
      std::vector<size_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(),
                       [&](size_t a, size_t b) { return std::fabs(d[a]) > std::fabs(d[b]); });
      std::vector<bool> keep(n, false);
      for (size_t r = 0; r < k; ++r) keep[idx[r]] = true;
      for (size_t j = 0; j < n; ++j) {
        if (!keep[j]) d[j] = 0;
      }
    }
    for (size_t j = 0; j < n; ++j) D[m][j] = p.weights[m] * d[j];
  }
  std::vector<double> out(n);
  for (size_t j = 0; j < n; ++j) {
    double mixed = 0, div = 0;
    if (p.ties) {
      double sum = 0;
      for (const auto& d : D) sum += d[j];
      const double sign = sum >= 0 ? 1.0 : -1.0;
      for (size_t m = 0; m < D.size(); ++m) {
        if (D[m][j] != 0 && (D[m][j] > 0) == (sign > 0)) {
          mixed += D[m][j];
          div += p.weights[m];
        }
      }
      if (div == 0) div = 1;
    } else {
      for (size_t m = 0; m < D.size(); ++m) {
        mixed += D[m][j];
        div += p.weights[m];
      }
      if (std::fabs(div) < 1e-8) div = 1;
    }
    if (p.normalize) mixed /= div;
    out[j] = base.data[j] + p.lambda * mixed;
  }
  return out;
}

std::vector<Params> gta_params(const GtaReference& p) {
  std::vector<Params> out = {{}};  // the base first
  for (size_t m = 0; m < p.weights.size(); ++m) {
    Params q{{"weight", p.weights[m]}};
    if (!p.densities.empty()) q["density"] = p.densities[m];
    out.push_back(q);
  }
  return out;
}

std::vector<Tensor> with_base(const Tensor& base, const std::vector<Tensor>& models) {
  std::vector<Tensor> all = {base};
  all.insert(all.end(), models.begin(), models.end());
  return all;
}

TEST(TaskArithmetic, AddsScaledTaskVectors) {
  const tensor::Shape shape{50, 70};
  Tensor base = random_tensor(shape, 11);
  std::vector<Tensor> models = {random_tensor(shape, 12), random_tensor(shape, 13),
                                random_tensor(shape, 14)};
  for (double lambda : {1.0, 0.5}) {
    for (bool normalize : {false, true}) {
      GtaReference p{lambda, normalize, false, {1.0, 0.5, 2.0}, {}};
      auto e = make_entry(shape, gta_params(p), 0,
                          {{"lambda", lambda}, {"normalize", normalize ? 1.0 : 0.0}});
      expect_close(run_method("task_arithmetic", e, with_base(base, models)),
                   gta_reference(base, models, p), 1e-5, 1e-5);
    }
  }
  // Defaults: normalize false, lambda 1.
  GtaReference p{1.0, false, false, {1.0, 1.0, 1.0}, {}};
  auto e = make_entry(shape, gta_params(p), 0);
  expect_close(run_method("task_arithmetic", e, with_base(base, models)),
               gta_reference(base, models, p), 1e-5, 1e-5);
  expect_error(
      [&] {
        run_method("task_arithmetic", make_entry(shape, gta_params(p), std::nullopt),
                   with_base(base, models));
      },
      "base_model");
}

TEST(Ties, MatchesReferenceOnRandomAndTieHeavyTensors) {
  // 600 x 1000 is above the in-memory selection limit: exercises the streamed top-k and the
  // tie quota carried across chunks.
  for (tensor::Shape shape : {tensor::Shape{40, 30}, tensor::Shape{600, 1000}}) {
    for (bool tie_heavy : {false, true}) {
      Tensor base = tie_heavy ? tie_heavy_tensor(shape, 20) : random_tensor(shape, 20);
      std::vector<Tensor> models;
      for (uint32_t s = 21; s < 24; ++s) {
        models.push_back(tie_heavy ? tie_heavy_tensor(shape, s) : random_tensor(shape, s));
      }
      GtaReference p{0.7, true, true, {1.0, 0.5, 2.0}, {0.3, 0.5, 0.1}};
      auto e = make_entry(shape, gta_params(p), 0, {{"lambda", 0.7}});  // normalize: default on
      expect_close(run_method("ties", e, with_base(base, models)), gta_reference(base, models, p),
                   1e-5, 1e-5);
    }
  }
}

TEST(Ties, SignElectionAndAgreement) {
  const tensor::Shape shape{4};
  Tensor base({4});
  base.data = {0, 0, 0, 0};
  Tensor a({4}), b({4});
  // element 0: +1 vs -1, sum 0 -> + wins: only a agrees -> 1/1.
  // element 1: a pruned (0), b = +0.5 -> only b agrees: 0.5 / w_b.
  // element 2: +1 and +3 agree -> (1 + 3 w_b... ) / (w_a + w_b).
  // element 3: -2 vs +1 -> sum < 0 -> only a agrees.
  a.data = {1, 0, 1, -2};
  b.data = {-1, 0.5, 3, 1};
  const double wa = 1.0, wb = 1.0;
  auto e = make_entry(shape, {{}, {{"weight", wa}}, {{"weight", wb}}}, 0);  // density 1
  Tensor out = run_method("ties", e, {base, a, b});
  EXPECT_FLOAT_EQ(out.data[0], 1.0f);
  EXPECT_FLOAT_EQ(out.data[1], 0.5f);
  EXPECT_FLOAT_EQ(out.data[2], 2.0f);
  EXPECT_FLOAT_EQ(out.data[3], -2.0f);
  // Weighted votes: w_b = 3 flips element 0 to b's side; normalisation divides by agreeing weights.
  auto w = make_entry(shape, {{}, {{"weight", 1.0}}, {{"weight", 3.0}}}, 0);
  out = run_method("ties", w, {base, a, b});
  EXPECT_FLOAT_EQ(out.data[0], -1.0f);              // D_b = -3 wins, -3 / 3
  EXPECT_FLOAT_EQ(out.data[2], (1.0f + 9.0f) / 4);  // (1 + 3*3) / (1 + 3)
  EXPECT_FLOAT_EQ(out.data[3], 1.0f);               // D = -2 vs +3: + wins, 3 / 3
}

TEST(Ties, TopKKeepsTiesInIndexOrder) {
  std::vector<float> v = {0.5f, -1.0f, 1.0f, 0.25f, -1.0f, 1.0f, 0.0f, 2.0f};
  // k = int(0.5 * 8) = 4: 2.0, then the first three of the four 1.0 magnitudes.
  merge::sparsify_magnitude(v, 0.5, "t");
  EXPECT_EQ(v, (std::vector<float>{0, -1, 1, 0, -1, 0, 0, 2}));
}

TEST(Ties, DensityThatKeepsNothingIsAnError) {
  const tensor::Shape shape{10};
  Tensor base = random_tensor(shape, 30), a = random_tensor(shape, 31);
  expect_error(
      [&] {
        run_method("ties", make_entry(shape, {{}, {{"weight", 1.0}, {"density", 0.0}}}, 0),
                   {base, a});
      },
      "keeps no element");
  expect_error(
      [&] {
        run_method("ties", make_entry(shape, {{}, {{"weight", 1.0}, {"density", 0.05}}}, 0),
                   {base, a});
      },
      "keeps no element");
  // The check runs without weights (the executor validates plans before reading anything).
  expect_error(
      [&] {
        merge::method_or_fail("ties").check(
            make_entry(shape, {{}, {{"weight", 1.0}, {"density", 0.0}}}, 0));
      },
      "raise density");
}

// Brute-force top-k cut: threshold and kept L1, ties in index order.
void expect_cut_matches(const std::vector<float>& mags, double density) {
  const size_t n = mags.size();
  const size_t k = merge::magnitude_keep_count(density, n, "t");
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return mags[a] > mags[b]; });
  std::vector<bool> keep(n, false);
  for (size_t r = 0; r < k; ++r) keep[idx[r]] = true;
  auto cuts = merge::find_magnitude_cuts(
      n, {k}, 4096,
      [&](size_t b, size_t len, float* const* o) {
        std::copy(mags.begin() + b, mags.begin() + b + len, o[0]);
      },
      true);
  EXPECT_EQ(cuts[0].threshold, mags[idx[k - 1]]);
  std::vector<float> v = mags;
  merge::CutApplier applier(cuts[0]);
  for (size_t b = 0; b < n; b += 1000) applier.apply(v.data() + b, std::min<size_t>(1000, n - b));
  size_t wrong = 0;
  double kept = 0, total = 0;
  for (size_t j = 0; j < n; ++j) {
    wrong += (v[j] != 0) != keep[j] && mags[j] != 0;
    if (keep[j]) kept += mags[j];
    total += mags[j];
  }
  EXPECT_EQ(wrong, 0u);
  EXPECT_NEAR(cuts[0].kept_l1, kept, 1e-9 * total);
  EXPECT_NEAR(cuts[0].total_l1, total, 1e-9 * total);
}

TEST(Sparsify, StreamedCutIsExact) {
  std::mt19937 rng(40);
  std::normal_distribution<float> normal;
  const size_t n = 1'000'000;
  std::vector<float> mags(n);
  for (float& m : mags) m = std::fabs(normal(rng));
  expect_cut_matches(mags, 0.3);
  expect_cut_matches(mags, 0.995);
  // A few distinct magnitudes: the bracket around the k-th holds a huge tie.
  std::uniform_int_distribution<int> level(0, 4);
  for (float& m : mags) m = 0.5f * static_cast<float>(level(rng));
  expect_cut_matches(mags, 0.3);
  // Adversarial for the sample: the sampled runs are all tiny, the rest large and spread out, so
  // the bracket misses and the radix select must take over.
  for (size_t j = 0; j < n; ++j) mags[j] = 1.0f + std::fabs(normal(rng));
  for (size_t s = 0; s < 512; ++s) {
    const size_t begin = s * (n - 128) / 511;
    for (size_t j = begin; j < begin + 128; ++j) mags[j] = 1e-3f;
  }
  expect_cut_matches(mags, 0.3);
}

TEST(Sparsify, SimdPartitionMatchesScalar) {
  std::mt19937 rng(41);
  std::uniform_int_distribution<int> level(0, 40);
  std::vector<float> v(10007);
  for (float& x : v) x = 0.125f * static_cast<float>(level(rng));
  const uint32_t lo = core::f32_to_bits(1.0f), hi = core::f32_to_bits(3.0f);
  std::vector<uint32_t> a(v.size()), b(v.size());
  size_t above_a = 0, above_b = 0;
  const size_t na =
      merge::partition_magnitudes(v.data(), v.size(), lo, hi, &above_a, a.data(), true);
  const size_t nb =
      merge::partition_magnitudes(v.data(), v.size(), lo, hi, &above_b, b.data(), false);
  ASSERT_EQ(na, nb);
  EXPECT_EQ(above_a, above_b);
  a.resize(na);
  b.resize(nb);
  EXPECT_EQ(a, b);  // same values in the same (index) order
  size_t above = 0, inside = 0;
  for (float x : v) {
    above += x > 3.0f;
    inside += x >= 1.0f && x <= 3.0f;
  }
  EXPECT_EQ(above_b, above);
  EXPECT_EQ(nb, inside);
}

TEST(Sparsify, RescaleRestoresTheL1Norm) {
  std::vector<float> v = {4, -3, 2, -1};
  std::vector<float> kept = v;
  merge::sparsify_magnitude(kept, 0.5, "t");
  auto cuts = merge::find_magnitude_cuts(
      4, {2}, 4,
      [&](size_t b, size_t len, float* const* o) {
        for (size_t j = 0; j < len; ++j) o[0][j] = std::fabs(v[b + j]);
      },
      true);
  EXPECT_DOUBLE_EQ(merge::l1_rescale_factor(cuts[0]), 10.0 / 7.0);
}

}  // namespace
}  // namespace amalgam
