// The LAP solver against exhaustive search over all permutations of small random matrices.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "align/lap.h"
#include "core/error.h"

namespace amalgam::align {
namespace {

double brute_force_best(const std::vector<double>& score, int64_t n) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  double best = -1e300;
  do {
    best = std::max(best, assignment_score(score, n, perm));
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

TEST(Lap, MatchesBruteForceOnRandomMatrices) {
  std::mt19937_64 rng(7);
  for (int64_t n = 1; n <= 7; ++n) {
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<double> score(n * n);
      // Integer scores make ties common, which exercises the degenerate paths.
      const bool integer = trial % 2 == 0;
      std::uniform_real_distribution<double> real(-3.0, 3.0);
      std::uniform_int_distribution<int> small(-2, 2);
      for (auto& s : score) s = integer ? small(rng) : real(rng);
      std::vector<int64_t> perm = solve_lap_max(score, n);
      std::vector<int64_t> sorted = perm;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i) << "not a permutation";
      EXPECT_NEAR(assignment_score(score, n, perm), brute_force_best(score, n), 1e-9)
          << "n=" << n << " trial " << trial;
    }
  }
}

TEST(Lap, RecoversAPlantedPermutation) {
  std::mt19937_64 rng(11);
  const int64_t n = 300;
  std::vector<int64_t> planted(n);
  std::iota(planted.begin(), planted.end(), 0);
  std::shuffle(planted.begin(), planted.end(), rng);
  std::normal_distribution<double> noise(0.0, 0.1);
  std::vector<double> score(n * n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) score[i * n + j] = noise(rng) + (planted[i] == j ? 5.0 : 0.0);
  }
  EXPECT_EQ(solve_lap_max(score, n), planted);
}

TEST(Lap, RejectsNonFiniteScores) {
  std::vector<double> score = {1, 2, std::nan(""), 4};
  try {
    solve_lap_max(score, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(1, 0)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace amalgam::align
