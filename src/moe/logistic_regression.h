// Multinomial logistic regression (softmax classifier) fitted by L-BFGS, in fp64:
//   minimise  (1/n) sum_i -log softmax(W x_i + b)_{y_i}  +  (l2 / 2) ||W||_F^2
// with W (C, F) and an optional unpenalised bias b (C). The objective is smooth and strictly
// convex for l2 > 0, so L-BFGS with a backtracking (Armijo) line search reaches the unique
// minimum; it stops when the largest gradient entry falls below `tolerance`.
// Used for the calibrated MoE router (no bias: Mixtral's gate has none) and for linear probes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace amalgam::moe {

struct LogisticOptions {
  double l2 = 1e-4;
  bool bias = false;
  int64_t max_iterations = 500;
  double tolerance = 1e-6;
  int history = 10;  // L-BFGS memory
};

struct LogisticModel {
  int64_t classes = 0;
  int64_t features = 0;
  std::vector<double> weights;  // (classes, features)
  std::vector<double> bias;     // (classes); zeros when fitted without bias

  // Scores W x + b (classes).
  std::vector<double> scores(const float* x) const;
  // argmax of the scores; ties go to the lowest class.
  int32_t predict(const float* x) const;
};

struct LogisticFit {
  LogisticModel model;
  double objective = 0.0;
  double gradient_norm = 0.0;  // largest |entry| of the gradient at the end
  int64_t iterations = 0;
  bool converged = false;
};

// x (n, features) row-major; labels in [0, classes). Fails on empty input or a bad label.
LogisticFit fit_logistic(std::span<const float> x, int64_t n, int64_t features,
                         std::span<const int32_t> labels, int64_t classes,
                         const LogisticOptions& options);

// Fraction of rows whose predicted class equals the label (0 for no rows).
double accuracy(const LogisticModel& model, std::span<const float> x, int64_t n,
                std::span<const int32_t> labels);

}  // namespace amalgam::moe
