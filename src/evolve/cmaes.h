// CMA-ES (Hansen's covariance matrix adaptation evolution strategy) with an ask/tell interface,
// the optimiser of the evolutionary recipe search. Two covariance models:
//   full       C is n x n, eigendecomposed lazily (Hansen, "The CMA Evolution Strategy: A
//              Tutorial", 2016, default strategy parameters, positive recombination weights);
//   separable  C is diagonal (sep-CMA-ES, Ros & Hansen, PPSN 2008): O(n) per sample and a
//              covariance learning rate (n + 2) / 3 times larger, for large genomes.
// Fitness is MINIMISED: tell() receives values where lower is better (negate accuracies).
//
// Box bounds are handled by repair: each sample is clipped into the box, the clipped point is
// what the caller evaluates, and the clipped point is what the update learns from (see tell()).
//
// Determinism: the candidates are a pure function of the options (seed included) and of the
// fitness values told, bit for bit on any x86-64 machine: our own generator (xoshiro256** seeded
// by splitmix64, Marsaglia's polar method), our own log/exp (libm may pick FMA or non-FMA code at
// run time), and cmaes.cc compiled without floating-point contraction or SLP vectorisation, with
// Eigen's explicit vectorisation off (CMakeLists.txt), so no result depends on the SIMD width.
//
// Resume: to_json() captures the whole state; from_json() restores an optimiser whose candidates
// are bit-identical to those of one that never stopped. ask() is idempotent until tell(), and the
// saved state is the state at the start of the generation, so a run may be saved between ask()
// and tell() and the restored optimiser asks the same population again.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace amalgam::evolve {

enum class CovarianceMode { kAuto, kFull, kSeparable };

// kAuto picks the separable model above this dimension. With a full C the learning rates are
// ~2/n^2, so at n > 100 and the budgets of recipe search (~1000 evaluations) C stays essentially
// isotropic while sep-CMA learns per-coordinate scales; a full C also costs O(n^2) memory and an
// O(n^3) eigendecomposition.
inline constexpr int64_t kSeparableAboveDimension = 100;

struct CmaEsOptions {
  // Initial mean. Empty: the centre of the box (every bound must then be finite). It must lie in
  // the box (the bounds themselves are allowed).
  std::vector<double> x0;
  // Initial step size. 0: (hi - lo) / 6 of the widest coordinate (every bound must be finite).
  // With finite bounds of unequal widths, the initial covariance is diag((w_i / w_max)^2), so the
  // initial standard deviation of coordinate i is sigma0 * w_i / w_max (range_i / 6 by default).
  double sigma0 = 0;
  // Box [lower_i, upper_i] per coordinate, lower_i < upper_i; -inf / +inf allowed. Both empty:
  // unbounded. Otherwise both have the dimension of x0 (or define it when x0 is empty).
  std::vector<double> lower;
  std::vector<double> upper;
  // Population size lambda. 0: 4 + floor(3 ln n). At least 2.
  int64_t population = 0;
  CovarianceMode covariance = CovarianceMode::kAuto;
  uint64_t seed = 0;
  // Hansen's flat-fitness escape: when the best and the ceil(0.7 lambda)-th fitness are equal,
  // sigma grows by exp(0.2 + c_sigma / d_sigma) so that a plateau does not stall the search.
  bool flat_fitness_escape = true;
};

// Everything derived from (n, lambda, covariance model).
struct CmaEsParameters {
  int64_t dimension = 0;
  int64_t lambda = 0;
  int64_t mu = 0;               // floor(lambda / 2) parents
  std::vector<double> weights;  // w_i ~ ln((lambda + 1) / 2) - ln i, i = 1..mu, sum 1
  double mueff = 0;             // 1 / sum w_i^2
  double cc = 0;                // (4 + mueff/n) / (n + 4 + 2 mueff/n)
  double cs = 0;                // (mueff + 2) / (n + mueff + 5)
  double c1 = 0;                // full: 2 / ((n + 1.3)^2 + mueff)
  double cmu = 0;               // full: min(1 - c1, 2 (mueff - 2 + 1/mueff) / ((n + 2)^2 + mueff))
  double damps = 0;             // 1 + 2 max(0, sqrt((mueff - 1) / (n + 1)) - 1) + cs
  double chi_n = 0;             // E||N(0, I)|| ~ sqrt(n) (1 - 1/(4n) + 1/(21 n^2))
  double eigen_interval = 0;    // full: decompose when generations since the last one exceed this
  int64_t history_length = 0;   // tolfun window: 10 + ceil(30 n / lambda) generations
  bool separable = false;
};

// Parameters for dimension n, population lambda (0: default) and covariance model (kAuto
// resolved by kSeparableAboveDimension). For the separable model c1 and cmu are Ros & Hansen's:
// c_cov = (n + 2) / 3 * [ (1/mueff) 2 / (n + sqrt 2)^2
//                         + (1 - 1/mueff) min(1, (2 mueff - 1) / ((n + 2)^2 + mueff)) ],
// capped at 1, split as c1 = c_cov / mueff and cmu = c_cov (1 - 1/mueff).
CmaEsParameters cmaes_parameters(int64_t dimension, int64_t lambda, CovarianceMode covariance);

struct StopCriteria {
  int64_t max_generations = 0;  // 0: no limit
  int64_t max_evaluations = 0;  // 0: no limit
  // Range of the best fitness over the last history_length generations and of all fitness
  // values of the last generation below this (checked only once the window is full).
  double tolfun = 1e-12;
  // sigma * sqrt(C_ii) and sigma * |pc_i| below this for every i.
  double tolx = 1e-12;
  double max_condition = 1e14;  // condition number of C
};

enum class StopReason { kNone, kMaxGenerations, kMaxEvaluations, kTolFun, kTolX, kCondition };
const char* stop_reason_name(StopReason reason);

class CmaEs {
 public:
  explicit CmaEs(const CmaEsOptions& options);

  // The current generation's lambda candidates, each inside the box. Idempotent until tell().
  const std::vector<std::vector<double>>& ask();
  // Fitness of each candidate of ask(), in order; lower is better. NaN and -inf are refused;
  // +inf (an invalid candidate) ranks last. Calls ask() first if it was not called in this
  // generation (e.g. after from_json).
  //
  // Bounds: the update uses the repaired (clipped) points, Hansen's recommendation for repair
  // ("Injecting external solutions into CMA-ES", 2011): the point that was evaluated is the point
  // learnt from, so the fitness and the update agree, no penalty weight needs tuning, the mean
  // stays inside the box, and an optimum on the bound is reached exactly. A repaired step
  // y = (x - m) / sigma can be long in the metric of C (clipping along an axis across a thin
  // ellipsoid), so, as in that paper, its Mahalanobis length ||C^-1/2 y|| is clipped to
  // sqrt(n) + 2n / (n + 2) before it enters the mean, the paths and C.
  void tell(std::span<const double> fitness);

  StopReason should_stop(const StopCriteria& criteria) const;

  nlohmann::json to_json() const;
  // `where` names the source (a file path) in error messages.
  static CmaEs from_json(const nlohmann::json& state, const std::string& where);

  const CmaEsParameters& parameters() const { return params_; }
  int64_t dimension() const { return params_.dimension; }
  int64_t population_size() const { return params_.lambda; }
  bool separable() const { return params_.separable; }
  int64_t generation() const { return generation_; }  // completed tell() calls
  int64_t evaluations() const { return generation_ * params_.lambda; }
  const std::vector<double>& mean() const { return mean_; }
  double sigma() const { return sigma_; }
  const std::vector<double>& lower() const { return lower_; }
  const std::vector<double>& upper() const { return upper_; }
  // Best evaluated point so far (inside the box) and its fitness; +inf and empty before tell().
  const std::vector<double>& best_x() const { return best_x_; }
  double best_f() const { return best_f_; }
  // C (without sigma^2), n x n row-major; diagonal for the separable model.
  std::vector<double> covariance() const;
  // sigma * sqrt(C_ii).
  std::vector<double> standard_deviations() const;
  // Condition number of C from the last decomposition (max eigenvalue / min eigenvalue).
  double condition_number() const;

 private:
  CmaEs() = default;
  void sample_population();
  void decompose();
  double mahalanobis_norm(const std::vector<double>& y) const;  // ||C^-1/2 y||, B and D as sampled
  void check_state(const std::string& where) const;

  CmaEsParameters params_;
  CmaEsOptions options_;  // bounds, seed and switches, as given (x0 and sigma0 only at start)
  std::vector<double> lower_, upper_;  // empty when unbounded
  std::vector<double> mean_;
  double sigma_ = 0;
  std::vector<double> ps_, pc_;
  std::vector<double> c_;  // full: n x n row-major (kept exactly symmetric); separable: n
  std::vector<double> b_;  // full: eigenvectors, row-major, column j = eigenvector j
  std::vector<double> d_;  // sqrt of the eigenvalues (separable: sqrt(C_ii))
  int64_t generation_ = 0;
  int64_t decomposed_at_ = 0;  // generation of the last eigendecomposition (full)
  // Generator state at the start of the generation; ask() draws from a copy, tell() commits it.
  std::array<uint64_t, 4> rng_{};
  std::array<uint64_t, 4> rng_after_ask_{};
  bool asked_ = false;
  std::vector<std::vector<double>> population_;
  std::vector<char> repaired_;  // per candidate: clipped into the box
  std::vector<double> best_x_;
  double best_f_ = 0;
  std::vector<double> best_history_;    // best fitness of the last history_length generations
  double last_min_ = 0, last_max_ = 0;  // fitness range of the last generation
};

// Portable randomness and math behind the determinism promise (exposed for tests).
// splitmix64: expands a 64-bit seed into xoshiro state.
uint64_t splitmix64(uint64_t& state);
// xoshiro256** (Blackman & Vigna): the next 64 bits.
uint64_t xoshiro256ss(std::array<uint64_t, 4>& s);
std::array<uint64_t, 4> seed_xoshiro(uint64_t seed);
// Uniform in [0, 1) with 53 random bits.
double uniform01(std::array<uint64_t, 4>& s);
// A pair of independent N(0, 1) draws (Marsaglia's polar method).
std::pair<double, double> normal_pair(std::array<uint64_t, 4>& s);
// log and exp from IEEE basic operations only (no libm): the same bits with every compiler and
// instruction set; log within 3 ulps of the exact value, exp within 1.2 (CmaEsDeterminism).
double portable_log(double x);
double portable_exp(double x);

}  // namespace amalgam::evolve
