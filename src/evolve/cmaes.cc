// CMA-ES: sampling, update, stopping. Compiled with -ffp-contract=off -fno-tree-slp-vectorize and
// EIGEN_DONT_VECTORIZE (CMakeLists.txt): every result below is a fixed sequence of IEEE basic
// operations, the same on any x86-64 machine.
#include "evolve/cmaes.h"

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace amalgam::evolve {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// fdlibm's split of ln 2: the high part has 11 trailing zero bits, so k * kLn2Hi is exact for
// |k| < 2^11 (every exponent of a double).
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// base^exponent by squaring: multiplications only, so the same bits everywhere (std::pow is libm).
double ipow(double base, int64_t exponent) {
  double result = 1;
  while (exponent > 0) {
    if (exponent & 1) result *= base;
    base *= base;
    exponent >>= 1;
  }
  return result;
}

double clip(double x, double lo, double hi) { return std::min(std::max(x, lo), hi); }

}  // namespace

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t xoshiro256ss(std::array<uint64_t, 4>& s) {
  const uint64_t result = rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

std::array<uint64_t, 4> seed_xoshiro(uint64_t seed) {
  std::array<uint64_t, 4> s;
  for (uint64_t& word : s) word = splitmix64(seed);
  return s;  // splitmix64 never yields four zero words in a row
}

double uniform01(std::array<uint64_t, 4>& s) {
  return static_cast<double>(xoshiro256ss(s) >> 11) * 0x1.0p-53;
}

std::pair<double, double> normal_pair(std::array<uint64_t, 4>& s) {
  for (;;) {
    const double u = 2 * uniform01(s) - 1;
    const double v = 2 * uniform01(s) - 1;
    const double r = u * u + v * v;
    if (r >= 1 || r == 0) continue;
    const double factor = std::sqrt(-2 * portable_log(r) / r);
    return {u * factor, v * factor};
  }
}

double portable_log(double x) {
  if (std::isnan(x) || x < 0) return std::numeric_limits<double>::quiet_NaN();
  if (x == 0) return -kInf;
  if (std::isinf(x)) return kInf;
  int e = 0;
  double m = std::frexp(x, &e);    // x = m 2^e, m in [0.5, 1); exact
  if (m < 0x1.6a09e667f3bcdp-1) {  // sqrt(1/2): keep m in [sqrt(1/2), sqrt(2))
    m *= 2;
    --e;
  }
  // log m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (m - 1) / (m + 1), |s| < 0.172; twelve
  // terms leave a truncation error below 1e-20 relative.
  const double s = (m - 1) / (m + 1);
  const double s2 = s * s;
  double series = 1.0 / 23;
  for (int k = 10; k >= 0; --k) series = series * s2 + 1.0 / (2 * k + 1);
  const double k = e;
  return k * kLn2Hi + (k * kLn2Lo + 2 * s * series);
}

double portable_exp(double x) {
  if (std::isnan(x)) return x;
  if (x > 709.78) return kInf;
  if (x < -745.2) return 0;
  // x = k ln 2 + r with |r| <= ln 2 / 2; e^r by its Taylor series to r^13 (error < 1e-17).
  const double k = std::floor(x * 1.4426950408889634 + 0.5);
  const double r = (x - k * kLn2Hi) - k * kLn2Lo;
  double factorial = 1;
  double coefficients[14];
  for (int j = 0; j < 14; ++j) {
    if (j > 0) factorial *= j;
    coefficients[j] = 1 / factorial;
  }
  double p = coefficients[13];
  for (int j = 12; j >= 0; --j) p = p * r + coefficients[j];
  // Two steps so that 2^k for k near the ends of the range does not overflow or flush early.
  const int half = static_cast<int>(k) / 2;
  return std::ldexp(std::ldexp(p, half), static_cast<int>(k) - half);
}

CmaEsParameters cmaes_parameters(int64_t dimension, int64_t lambda, CovarianceMode covariance) {
  AMALGAM_CHECK(dimension >= 1, "CMA-ES: the dimension must be at least 1 (got {})", dimension);
  CmaEsParameters p;
  const double n = static_cast<double>(dimension);
  p.dimension = dimension;
  p.lambda = lambda > 0 ? lambda : 4 + static_cast<int64_t>(std::floor(3 * portable_log(n)));
  AMALGAM_CHECK(p.lambda >= 2, "CMA-ES: the population must be at least 2 (got {})", lambda);
  p.mu = p.lambda / 2;
  const double centre = portable_log((static_cast<double>(p.lambda) + 1) / 2);
  double sum = 0;
  for (int64_t i = 1; i <= p.mu; ++i) {
    p.weights.push_back(centre - portable_log(static_cast<double>(i)));
    sum += p.weights.back();
  }
  double sum_squares = 0;
  for (double& w : p.weights) {
    w /= sum;
    sum_squares += w * w;
  }
  const double mueff = 1 / sum_squares;
  p.mueff = mueff;
  p.separable = covariance == CovarianceMode::kSeparable ||
                (covariance == CovarianceMode::kAuto && dimension > kSeparableAboveDimension);
  p.cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n);
  p.cs = (mueff + 2) / (n + mueff + 5);
  if (p.separable) {
    const double sqrt2 = 1.4142135623730951;
    double ccov = (1 / mueff) * 2 / ((n + sqrt2) * (n + sqrt2)) +
                  (1 - 1 / mueff) * std::min(1.0, (2 * mueff - 1) / ((n + 2) * (n + 2) + mueff));
    ccov = std::min(1.0, (n + 2) / 3 * ccov);
    p.c1 = ccov / mueff;
    p.cmu = ccov * (1 - 1 / mueff);
  } else {
    p.c1 = 2 / ((n + 1.3) * (n + 1.3) + mueff);
    p.cmu = std::min(1 - p.c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) * (n + 2) + mueff));
    p.eigen_interval = 1 / ((p.c1 + p.cmu) * n * 10);
  }
  p.damps = 1 + 2 * std::max(0.0, std::sqrt((mueff - 1) / (n + 1)) - 1) + p.cs;
  p.chi_n = std::sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n));
  p.history_length = 10 + (30 * dimension + p.lambda - 1) / p.lambda;
  return p;
}

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::kNone:
      return "none";
    case StopReason::kMaxGenerations:
      return "max_generations";
    case StopReason::kMaxEvaluations:
      return "max_evaluations";
    case StopReason::kTolFun:
      return "tolfun";
    case StopReason::kTolX:
      return "tolx";
    case StopReason::kCondition:
      return "condition";
  }
  return "unknown";
}

CmaEs::CmaEs(const CmaEsOptions& options) : options_(options) {
  const bool bounded = !options.lower.empty() || !options.upper.empty();
  const size_t n = !options.x0.empty() ? options.x0.size() : options.lower.size();
  AMALGAM_CHECK(n > 0, "CMA-ES: no dimension: give x0 or bounds");
  bool finite_box = bounded;
  double widest = 0;
  if (bounded) {
    AMALGAM_CHECK(options.lower.size() == n && options.upper.size() == n,
                  "CMA-ES: lower and upper bounds need {} values each (got {} and {})", n,
                  options.lower.size(), options.upper.size());
    for (size_t i = 0; i < n; ++i) {
      const double lo = options.lower[i], hi = options.upper[i];
      AMALGAM_CHECK(lo < hi, "CMA-ES: bound {} is empty or NaN: [{}, {}]", i, lo, hi);
      finite_box = finite_box && std::isfinite(lo) && std::isfinite(hi);
      if (std::isfinite(hi - lo)) widest = std::max(widest, hi - lo);
    }
    lower_ = options.lower;
    upper_ = options.upper;
  }
  if (options.x0.empty()) {
    AMALGAM_CHECK(finite_box, "CMA-ES: x0 is required unless every bound is finite");
    for (size_t i = 0; i < n; ++i) mean_.push_back(0.5 * (lower_[i] + upper_[i]));
  } else {
    mean_ = options.x0;
    for (size_t i = 0; i < n; ++i) {
      AMALGAM_CHECK(std::isfinite(mean_[i]), "CMA-ES: x0[{}] is not finite", i);
      AMALGAM_CHECK(!bounded || (lower_[i] <= mean_[i] && mean_[i] <= upper_[i]),
                    "CMA-ES: x0[{}] = {} lies outside its bounds [{}, {}]", i, mean_[i], lower_[i],
                    upper_[i]);
    }
  }
  std::vector<double> scale(n, 1.0);
  if (finite_box) {
    for (size_t i = 0; i < n; ++i) scale[i] = (upper_[i] - lower_[i]) / widest;
  }
  if (options.sigma0 == 0) {
    AMALGAM_CHECK(finite_box, "CMA-ES: sigma0 is required unless every bound is finite");
    sigma_ = widest / 6;
  } else {
    AMALGAM_CHECK(std::isfinite(options.sigma0) && options.sigma0 > 0,
                  "CMA-ES: sigma0 must be positive and finite (got {})", options.sigma0);
    sigma_ = options.sigma0;
  }
  params_ = cmaes_parameters(static_cast<int64_t>(n), options.population, options.covariance);
  ps_.assign(n, 0.0);
  pc_.assign(n, 0.0);
  d_ = scale;
  if (params_.separable) {
    for (double s : scale) c_.push_back(s * s);
  } else {
    c_.assign(n * n, 0.0);
    b_.assign(n * n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      c_[i * n + i] = scale[i] * scale[i];
      b_[i * n + i] = 1;
    }
  }
  rng_ = seed_xoshiro(options.seed);
  best_f_ = kInf;
}

void CmaEs::sample_population() {
  const size_t n = mean_.size();
  const size_t lambda = static_cast<size_t>(params_.lambda);
  std::array<uint64_t, 4> rng = rng_;
  std::vector<double> z(lambda * n);
  for (size_t i = 0; i < z.size(); i += 2) {
    const auto [a, b] = normal_pair(rng);
    z[i] = a;
    if (i + 1 < z.size()) z[i + 1] = b;
  }
  population_.assign(lambda, std::vector<double>(n));
  repaired_.assign(lambda, 0);
  std::vector<double> dz(n), y(n);
  for (size_t k = 0; k < lambda; ++k) {
    const double* zk = &z[k * n];
    if (params_.separable) {
      for (size_t i = 0; i < n; ++i) y[i] = d_[i] * zk[i];
    } else {
      for (size_t j = 0; j < n; ++j) dz[j] = d_[j] * zk[j];
      for (size_t i = 0; i < n; ++i) {
        double sum = 0;
        for (size_t j = 0; j < n; ++j) sum += b_[i * n + j] * dz[j];
        y[i] = sum;
      }
    }
    std::vector<double>& x = population_[k];
    for (size_t i = 0; i < n; ++i) {
      x[i] = mean_[i] + sigma_ * y[i];
      if (!lower_.empty()) {
        const double clipped = clip(x[i], lower_[i], upper_[i]);
        if (clipped != x[i]) repaired_[k] = 1;
        x[i] = clipped;
      }
    }
  }
  rng_after_ask_ = rng;
  asked_ = true;
}

const std::vector<std::vector<double>>& CmaEs::ask() {
  if (!asked_) sample_population();
  return population_;
}

// ||C^-1/2 y|| = ||D^-1 B^T y|| (B orthonormal).
double CmaEs::mahalanobis_norm(const std::vector<double>& y) const {
  const size_t n = y.size();
  double sum = 0;
  if (params_.separable) {
    for (size_t i = 0; i < n; ++i) sum += (y[i] / d_[i]) * (y[i] / d_[i]);
    return std::sqrt(sum);
  }
  std::vector<double> t(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) t[j] += b_[i * n + j] * y[i];
  }
  for (size_t j = 0; j < n; ++j) sum += (t[j] / d_[j]) * (t[j] / d_[j]);
  return std::sqrt(sum);
}

void CmaEs::tell(std::span<const double> fitness) {
  if (!asked_) sample_population();
  const size_t n = mean_.size();
  const size_t lambda = static_cast<size_t>(params_.lambda);
  const size_t mu = static_cast<size_t>(params_.mu);
  AMALGAM_CHECK(fitness.size() == lambda, "CMA-ES tell: {} fitness values for a population of {}",
                fitness.size(), lambda);
  for (size_t k = 0; k < lambda; ++k) {
    AMALGAM_CHECK(!std::isnan(fitness[k]) && fitness[k] != -kInf,
                  "CMA-ES tell: the fitness of candidate {} is {} (NaN and -inf are refused)", k,
                  fitness[k]);
  }
  // Ties keep the candidates' order, so the ranking is a function of the values alone.
  std::vector<size_t> order(lambda);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return fitness[a] < fitness[b]; });
  const double f_best = fitness[order.front()];
  if (f_best < best_f_ || best_x_.empty()) {
    best_f_ = f_best;
    best_x_ = population_[order.front()];
  }
  best_history_.push_back(f_best);
  if (static_cast<int64_t>(best_history_.size()) > params_.history_length) {
    best_history_.erase(best_history_.begin());
  }
  last_min_ = f_best;
  last_max_ = fitness[order.back()];

  // Steps of the mu best, from the points that were evaluated (repaired ones clipped in length).
  const double max_length = std::sqrt(static_cast<double>(n)) + 2.0 * n / (n + 2.0);
  std::vector<std::vector<double>> steps(mu, std::vector<double>(n));
  for (size_t r = 0; r < mu; ++r) {
    const std::vector<double>& x = population_[order[r]];
    std::vector<double>& y = steps[r];
    for (size_t i = 0; i < n; ++i) y[i] = (x[i] - mean_[i]) / sigma_;
    if (repaired_[order[r]]) {
      const double length = mahalanobis_norm(y);
      if (length > max_length) {
        const double shrink = max_length / length;
        for (double& v : y) v *= shrink;
      }
    }
  }
  std::vector<double> yw(n, 0.0);
  for (size_t r = 0; r < mu; ++r) {
    for (size_t i = 0; i < n; ++i) yw[i] += params_.weights[r] * steps[r][i];
  }

  // Step-size path: C^-1/2 yw = B D^-1 B^T yw.
  std::vector<double> whitened(n, 0.0);
  if (params_.separable) {
    for (size_t i = 0; i < n; ++i) whitened[i] = yw[i] / d_[i];
  } else {
    std::vector<double> t(n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) t[j] += b_[i * n + j] * yw[i];
    }
    for (size_t j = 0; j < n; ++j) t[j] /= d_[j];
    for (size_t i = 0; i < n; ++i) {
      double sum = 0;
      for (size_t j = 0; j < n; ++j) sum += b_[i * n + j] * t[j];
      whitened[i] = sum;
    }
  }
  const double cs = params_.cs, cc = params_.cc, c1 = params_.c1, cmu = params_.cmu;
  const double ps_gain = std::sqrt(cs * (2 - cs) * params_.mueff);
  double ps_squared = 0;
  for (size_t i = 0; i < n; ++i) {
    ps_[i] = (1 - cs) * ps_[i] + ps_gain * whitened[i];
    ps_squared += ps_[i] * ps_[i];
  }
  const double ps_norm = std::sqrt(ps_squared);
  const bool hsig = ps_norm / std::sqrt(1 - ipow(1 - cs, 2 * (generation_ + 1))) <
                    (1.4 + 2 / (static_cast<double>(n) + 1)) * params_.chi_n;
  const double pc_gain = hsig ? std::sqrt(cc * (2 - cc) * params_.mueff) : 0.0;
  for (size_t i = 0; i < n; ++i) pc_[i] = (1 - cc) * pc_[i] + pc_gain * yw[i];

  // Covariance: rank-one (pc) and rank-mu (weighted steps) updates; without hsig the variance
  // pc would have carried is given back through the decay factor.
  const double decay = 1 - c1 - cmu + (hsig ? 0.0 : c1 * cc * (2 - cc));
  if (params_.separable) {
    for (size_t i = 0; i < n; ++i) {
      double rank_mu = 0;
      for (size_t r = 0; r < mu; ++r) rank_mu += params_.weights[r] * steps[r][i] * steps[r][i];
      c_[i] = decay * c_[i] + c1 * pc_[i] * pc_[i] + cmu * rank_mu;
      d_[i] = std::sqrt(c_[i]);
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        double rank_mu = 0;
        for (size_t r = 0; r < mu; ++r) rank_mu += params_.weights[r] * steps[r][i] * steps[r][j];
        const double value = decay * c_[i * n + j] + c1 * pc_[i] * pc_[j] + cmu * rank_mu;
        c_[i * n + j] = value;
        c_[j * n + i] = value;
      }
    }
  }

  // The new mean is a convex combination of the old one and points in the box; clipping only
  // removes rounding.
  for (size_t i = 0; i < n; ++i) {
    mean_[i] += sigma_ * yw[i];
    if (!lower_.empty()) mean_[i] = clip(mean_[i], lower_[i], upper_[i]);
  }
  sigma_ *= portable_exp((cs / params_.damps) * (ps_norm / params_.chi_n - 1));
  const size_t flat_rank = (7 * lambda + 9) / 10 - 1;  // ceil(0.7 lambda) - 1
  if (options_.flat_fitness_escape && fitness[order[flat_rank]] == f_best) {
    sigma_ *= portable_exp(0.2 + cs / params_.damps);
  }

  ++generation_;
  rng_ = rng_after_ask_;
  asked_ = false;
  if (!params_.separable &&
      static_cast<double>(generation_ - decomposed_at_) > params_.eigen_interval) {
    decompose();
  }
}

void CmaEs::decompose() {
  const int64_t n = params_.dimension;
  Eigen::MatrixXd c(n, n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) c(i, j) = c_[i * n + j];
  }
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(c);
  AMALGAM_CHECK(solver.info() == Eigen::Success,
                "CMA-ES: eigendecomposition of the covariance failed at generation {}",
                generation_);
  const double largest = solver.eigenvalues().maxCoeff();
  AMALGAM_CHECK(largest > 0 && std::isfinite(largest),
                "CMA-ES: the covariance degenerated at generation {}", generation_);
  for (int64_t j = 0; j < n; ++j) {
    // Rounding can leave an eigenvalue <= 0 far beyond the condition stop (1e14); floor it.
    d_[j] = std::sqrt(std::max(solver.eigenvalues()(j), largest * 1e-20));
    for (int64_t i = 0; i < n; ++i) b_[i * n + j] = solver.eigenvectors()(i, j);
  }
  decomposed_at_ = generation_;
}

std::vector<double> CmaEs::covariance() const {
  if (!params_.separable) return c_;
  const size_t n = c_.size();
  std::vector<double> full(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) full[i * n + i] = c_[i];
  return full;
}

std::vector<double> CmaEs::standard_deviations() const {
  const size_t n = mean_.size();
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = sigma_ * std::sqrt(params_.separable ? c_[i] : c_[i * n + i]);
  }
  return out;
}

double CmaEs::condition_number() const {
  const auto [lo, hi] = std::minmax_element(d_.begin(), d_.end());
  return (*hi / *lo) * (*hi / *lo);
}

StopReason CmaEs::should_stop(const StopCriteria& criteria) const {
  if (criteria.max_generations > 0 && generation_ >= criteria.max_generations) {
    return StopReason::kMaxGenerations;
  }
  if (criteria.max_evaluations > 0 && evaluations() >= criteria.max_evaluations) {
    return StopReason::kMaxEvaluations;
  }
  if (generation_ > 0 && static_cast<int64_t>(best_history_.size()) >= params_.history_length) {
    const auto [lo, hi] = std::minmax_element(best_history_.begin(), best_history_.end());
    const double range = std::max(*hi, last_max_) - std::min(*lo, last_min_);
    if (range < criteria.tolfun) return StopReason::kTolFun;
  }
  bool small = true;
  const std::vector<double> stds = standard_deviations();
  for (size_t i = 0; i < stds.size() && small; ++i) {
    small = stds[i] < criteria.tolx && sigma_ * std::abs(pc_[i]) < criteria.tolx;
  }
  if (small) return StopReason::kTolX;
  if (condition_number() > criteria.max_condition) return StopReason::kCondition;
  return StopReason::kNone;
}

}  // namespace amalgam::evolve
