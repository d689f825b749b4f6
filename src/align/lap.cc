#include "align/lap.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace amalgam::align {

std::vector<int64_t> solve_lap_max(const std::vector<double>& score, int64_t n) {
  AMALGAM_CHECK(static_cast<int64_t>(score.size()) == n * n,
                "linear assignment: {} scores for a {}x{} problem", score.size(), n, n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if (!std::isfinite(score[i * n + j])) {
        fail("linear assignment: score ({}, {}) is not finite", i, j);
      }
    }
  }
  // Minimise cost = -score. Rows and columns are 1-based below; index 0 is the virtual start
  // column of each augmentation. u/v are the dual potentials, match[j] the row holding column j.
  const double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0.0), v(n + 1, 0.0), min_slack(n + 1);
  std::vector<int64_t> match(n + 1, 0), way(n + 1, 0);
  std::vector<char> used(n + 1);
  for (int64_t row = 1; row <= n; ++row) {
    match[0] = row;
    int64_t col0 = 0;
    std::fill(min_slack.begin(), min_slack.end(), kInf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[col0] = 1;
      const int64_t i0 = match[col0];
      double delta = kInf;
      int64_t col1 = 0;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const double reduced = -score[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
        if (reduced < min_slack[j]) {
          min_slack[j] = reduced;
          way[j] = col0;
        }
        if (min_slack[j] < delta) {
          delta = min_slack[j];
          col1 = j;
        }
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[match[j]] += delta;
          v[j] -= delta;
        } else {
          min_slack[j] -= delta;
        }
      }
      col0 = col1;
    } while (match[col0] != 0);
    // Augment along the alternating path back to the virtual column.
    do {
      const int64_t col1 = way[col0];
      match[col0] = match[col1];
      col0 = col1;
    } while (col0 != 0);
  }
  std::vector<int64_t> perm(n);
  for (int64_t j = 1; j <= n; ++j) perm[match[j] - 1] = j - 1;
  return perm;
}

double assignment_score(const std::vector<double>& score, int64_t n,
                        const std::vector<int64_t>& perm) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += score[i * n + perm[i]];
  return total;
}

}  // namespace amalgam::align
