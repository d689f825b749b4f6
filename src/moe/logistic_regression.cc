#include "moe/logistic_regression.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <deque>

#include "core/error.h"

namespace amalgam::moe {

namespace {

using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXd;

// The objective and its gradient over the parameters theta = [W (C*F, row-major); b (C)].
class Objective {
 public:
  Objective(const Matrix& x, std::span<const int32_t> labels, int64_t classes,
            const LogisticOptions& options)
      : x_(x), labels_(labels), classes_(classes), options_(options) {}

  int64_t size() const { return classes_ * x_.cols() + (options_.bias ? classes_ : 0); }

  double operator()(const Vector& theta, Vector& grad) const {
    const int64_t n = x_.rows(), f = x_.cols(), c = classes_;
    Eigen::Map<const Matrix> w(theta.data(), c, f);
    // z (n, C) = X W^T + b
    Matrix z = x_ * w.transpose();
    if (options_.bias) {
      for (int64_t k = 0; k < c; ++k) z.col(k).array() += theta[c * f + k];
    }
    double loss = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double zmax = z.row(i).maxCoeff();
      z.row(i).array() = (z.row(i).array() - zmax).exp();
      const double total = z.row(i).sum();
      loss -= std::log(z(i, labels_[i]) / total);
      z.row(i) /= total;        // probabilities
      z(i, labels_[i]) -= 1.0;  // d loss_i / d z_i
    }
    const double inv_n = 1.0 / static_cast<double>(n);
    grad.resize(size());
    Eigen::Map<Matrix> gw(grad.data(), c, f);
    gw = (z.transpose() * x_) * inv_n + options_.l2 * w;
    if (options_.bias) {
      for (int64_t k = 0; k < c; ++k) grad[c * f + k] = z.col(k).sum() * inv_n;
    }
    return loss * inv_n + 0.5 * options_.l2 * w.squaredNorm();
  }

 private:
  const Matrix& x_;
  std::span<const int32_t> labels_;
  int64_t classes_;
  const LogisticOptions& options_;
};

}  // namespace

std::vector<double> LogisticModel::scores(const float* x) const {
  std::vector<double> s(static_cast<size_t>(classes));
  for (int64_t k = 0; k < classes; ++k) {
    double v = bias.empty() ? 0.0 : bias[k];
    const double* w = &weights[k * features];
    for (int64_t j = 0; j < features; ++j) v += w[j] * x[j];
    s[k] = v;
  }
  return s;
}

int32_t LogisticModel::predict(const float* x) const {
  const std::vector<double> s = scores(x);
  return static_cast<int32_t>(std::max_element(s.begin(), s.end()) - s.begin());
}

LogisticFit fit_logistic(std::span<const float> x, int64_t n, int64_t features,
                         std::span<const int32_t> labels, int64_t classes,
                         const LogisticOptions& options) {
  AMALGAM_CHECK(n > 0 && features > 0, "logistic regression: no training rows");
  AMALGAM_CHECK(classes >= 2, "logistic regression: needs at least 2 classes, got {}", classes);
  AMALGAM_CHECK(
      static_cast<int64_t>(x.size()) == n * features && static_cast<int64_t>(labels.size()) == n,
      "logistic regression: {} rows of {} features do not match the data", n, features);
  AMALGAM_CHECK(options.l2 >= 0, "logistic regression: l2 must not be negative");
  for (int64_t i = 0; i < n; ++i) {
    AMALGAM_CHECK(labels[i] >= 0 && labels[i] < classes,
                  "logistic regression: row {} has label {} outside [0, {})", i, labels[i],
                  classes);
  }
  Matrix xm(n, features);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < features; ++j) xm(i, j) = x[i * features + j];
  }
  Objective objective(xm, labels, classes, options);
  const int64_t m = objective.size();
  Vector theta = Vector::Zero(m), grad(m), new_grad(m);
  double value = objective(theta, grad);
  std::deque<Vector> s_hist, y_hist;
  std::deque<double> rho_hist;
  LogisticFit fit;
  int64_t it = 0;
  for (; it < options.max_iterations; ++it) {
    if (grad.lpNorm<Eigen::Infinity>() < options.tolerance) {
      fit.converged = true;
      break;
    }
    // Two-loop recursion: direction = -H grad.
    Vector q = grad;
    std::vector<double> alpha(s_hist.size());
    for (int64_t k = static_cast<int64_t>(s_hist.size()) - 1; k >= 0; --k) {
      alpha[k] = rho_hist[k] * s_hist[k].dot(q);
      q -= alpha[k] * y_hist[k];
    }
    if (!s_hist.empty()) q *= s_hist.back().dot(y_hist.back()) / y_hist.back().squaredNorm();
    for (size_t k = 0; k < s_hist.size(); ++k) {
      const double beta = rho_hist[k] * y_hist[k].dot(q);
      q += s_hist[k] * (alpha[k] - beta);
    }
    Vector dir = -q;
    double slope = grad.dot(dir);
    if (slope >= 0) {  // not a descent direction (numerical trouble): restart from the gradient
      s_hist.clear();
      y_hist.clear();
      rho_hist.clear();
      dir = -grad;
      slope = grad.dot(dir);
    }
    // The first step has no curvature estimate: keep it short.
    double step = s_hist.empty() ? std::min(1.0, 1.0 / grad.norm()) : 1.0;
    Vector next;
    double next_value = 0.0;
    bool accepted = false;
    for (int tries = 0; tries < 60; ++tries) {
      next = theta + step * dir;
      next_value = objective(next, new_grad);
      if (std::isfinite(next_value) && next_value <= value + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
      step *= 0.5;
    }
    if (!accepted) break;  // no decrease possible at this precision: at the minimum
    Vector s = next - theta, y = new_grad - grad;
    const double sy = s.dot(y);
    if (sy > 1e-12 * s.norm() * y.norm()) {
      s_hist.push_back(s);
      y_hist.push_back(y);
      rho_hist.push_back(1.0 / sy);
      if (static_cast<int>(s_hist.size()) > options.history) {
        s_hist.pop_front();
        y_hist.pop_front();
        rho_hist.pop_front();
      }
    }
    theta = next;
    grad = new_grad;
    value = next_value;
  }
  if (!fit.converged) fit.converged = grad.lpNorm<Eigen::Infinity>() < options.tolerance;
  fit.iterations = it;
  fit.objective = value;
  fit.gradient_norm = grad.lpNorm<Eigen::Infinity>();
  fit.model.classes = classes;
  fit.model.features = features;
  fit.model.weights.assign(theta.data(), theta.data() + classes * features);
  fit.model.bias.assign(static_cast<size_t>(classes), 0.0);
  if (options.bias) {
    for (int64_t k = 0; k < classes; ++k) fit.model.bias[k] = theta[classes * features + k];
  }
  return fit;
}

double accuracy(const LogisticModel& model, std::span<const float> x, int64_t n,
                std::span<const int32_t> labels) {
  if (n == 0) return 0.0;
  int64_t right = 0;
  for (int64_t i = 0; i < n; ++i) right += model.predict(&x[i * model.features]) == labels[i];
  return static_cast<double>(right) / static_cast<double>(n);
}

}  // namespace amalgam::moe
