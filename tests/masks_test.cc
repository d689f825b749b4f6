// The DELLA (MAGPRUNE) mask against a reference written from the definition: within each row,
// rank the magnitudes ascending (equal magnitudes by index), keep rank r with probability
// (density - epsilon) + 2 epsilon r / (cols - 1), drawn from the counter-based stream. Rows full
// of equal magnitudes (as bf16 task vectors are) check the tie order exactly.
#include "merge/masks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "merge/counter_rng.h"

namespace amalgam {
namespace {

std::vector<float> reference(const merge::CounterRng& rng, double density, double epsilon,
                             size_t cols, size_t begin, std::vector<float> v) {
  for (size_t row = 0; row < v.size(); row += cols) {
    const size_t c = std::min(cols, v.size() - row);
    std::vector<size_t> order(c);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::fabs(static_cast<double>(v[row + a])) <
             std::fabs(static_cast<double>(v[row + b]));
    });
    for (size_t r = 0; r < c; ++r) {
      const double rank = c > 1 ? static_cast<double>(r) / static_cast<double>(c - 1) : 0.5;
      const double p = density - epsilon + 2 * epsilon * rank;
      const size_t j = row + order[r];
      if (rng.bits24(begin + j) >= merge::CounterRng::threshold(p)) v[j] = 0.0f;
    }
  }
  return v;
}

TEST(DellaMask, MatchesRankReferenceWithManyTies) {
  std::mt19937 gen(7);
  // Few distinct magnitudes of both signs, zeros, both zero signs, and a wide exponent range.
  const std::vector<float> levels = {0.0f, -0.0f, 1e-30f, 0.5f, -0.5f, 1.0f, -1.0f, 3.0f, 1e20f};
  std::uniform_int_distribution<size_t> pick(0, levels.size() - 1);
  for (size_t cols : {size_t{1}, size_t{7}, size_t{2048}, size_t{5632}}) {
    std::vector<float> v(cols * 3);
    for (float& x : v) x = levels[pick(gen)];
    const merge::CounterRng rng(42, "layer.weight", cols);
    const size_t begin = 5 * cols;  // a chunk that is not the tensor's first
    std::vector<float> got = v;
    merge::rank_sampling_mask(rng, 0.4, 0.1, cols)->apply(begin, got.data(), got.size());
    const std::vector<float> want = reference(rng, 0.4, 0.1, cols, begin, v);
    size_t kept = 0;
    for (size_t j = 0; j < v.size(); ++j) {
      ASSERT_EQ(std::signbit(got[j]), std::signbit(want[j])) << "cols " << cols << " at " << j;
      ASSERT_EQ(got[j], want[j]) << "cols " << cols << " at " << j;
      kept += want[j] != 0.0f;
    }
    if (cols > 1) {
      EXPECT_GT(kept, 0u);
    }
  }
}

TEST(DellaMask, MatchesRankReferenceOnDistinctValues) {
  std::mt19937 gen(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const size_t cols = 4096;
  std::vector<float> v(cols * 2);
  for (float& x : v) x = dist(gen);
  const merge::CounterRng rng(3, "mlp.down_proj.weight", 1);
  std::vector<float> got = v;
  merge::rank_sampling_mask(rng, 0.5, 0.3, cols)->apply(0, got.data(), got.size());
  EXPECT_EQ(got, reference(rng, 0.5, 0.3, cols, 0, v));
}

}  // namespace
}  // namespace amalgam
