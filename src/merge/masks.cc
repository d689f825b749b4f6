#include "merge/masks.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace amalgam::merge {

void DeltaMask::apply_delta(size_t begin, const float* x, const float* b, float scale, float* d,
                            size_t n) {
  for (size_t j = 0; j < n; ++j) d[j] = x[j] - b[j];
  apply(begin, d, n);
  for (size_t j = 0; j < n; ++j) d[j] *= scale;
}

namespace {

class KeepAll : public DeltaMask {
 public:
  void apply(size_t, float*, size_t) override {}
  void apply_delta(size_t, const float* __restrict x, const float* __restrict b, float scale,
                   float* __restrict d, size_t n) override {
    for (size_t j = 0; j < n; ++j) d[j] = (x[j] - b[j]) * scale;
  }
};

class Magnitude : public DeltaMask {
 public:
  explicit Magnitude(const MagnitudeCut& cut) : applier_(cut) {}
  void apply(size_t, float* delta, size_t n) override { applier_.apply(delta, n); }
  void apply_delta(size_t, const float* x, const float* b, float scale, float* d,
                   size_t n) override {
    applier_.apply_delta(x, b, scale, d, n);
  }

 private:
  CutApplier applier_;
};

class Band : public DeltaMask {
 public:
  Band(const MagnitudeCut& keep, std::optional<MagnitudeCut> top) : keep_(keep) {
    if (top) top_.emplace(*top);
  }
  void apply(size_t, float* delta, size_t n) override {
    if (top_) {
      in_top_.assign(delta, delta + n);
      top_->apply(in_top_.data(), n);  // nonzero where the value is among the `top` largest
    }
    keep_.apply(delta, n);
    if (top_) {
      for (size_t j = 0; j < n; ++j) delta[j] = in_top_[j] != 0.0f ? 0.0f : delta[j];
    }
  }

 private:
  CutApplier keep_;
  std::optional<CutApplier> top_;
  std::vector<float> in_top_;
};

class Random : public DeltaMask {
 public:
  Random(CounterRng rng, double density)
      : rng_(rng), threshold_(CounterRng::threshold(density)) {}
  void apply(size_t begin, float* delta, size_t n) override {
    for (size_t j = 0; j < n; ++j) {
      delta[j] = rng_.bits24(begin + j) < threshold_ ? delta[j] : 0.0f;
    }
  }
  void apply_delta(size_t begin, const float* __restrict x, const float* __restrict b,
                   float scale, float* __restrict d, size_t n) override {
    for (size_t j = 0; j < n; ++j) {
      d[j] = rng_.bits24(begin + j) < threshold_ ? (x[j] - b[j]) * scale : 0.0f;
    }
  }

 private:
  CounterRng rng_;
  uint32_t threshold_;
};

class RankSampling : public DeltaMask {
 public:
  RankSampling(CounterRng rng, double density, double epsilon, size_t cols)
      : rng_(rng), density_(density), epsilon_(epsilon), cols_(std::max<size_t>(cols, 1)) {}

  void apply(size_t begin, float* delta, size_t n) override {
    order_.resize(cols_);
    for (size_t row = 0; row < n; row += cols_) {
      float* v = delta + row;
      const size_t c = std::min(cols_, n - row);
      std::iota(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(c), uint32_t{0});
      // Ascending magnitude; equal magnitudes rank by index (deterministic).
      std::stable_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(c),
                       [v](uint32_t a, uint32_t b) { return std::fabs(v[a]) < std::fabs(v[b]); });
      for (size_t r = 0; r < c; ++r) {
        const uint32_t j = order_[r];
        const double rank_norm = c > 1 ? static_cast<double>(r) / static_cast<double>(c - 1) : 0.5;
        const double p = (density_ - epsilon_) + 2 * epsilon_ * rank_norm;
        if (rng_.bits24(begin + row + j) >= CounterRng::threshold(p)) v[j] = 0.0f;
      }
    }
  }

 private:
  CounterRng rng_;
  double density_, epsilon_;
  size_t cols_;
  std::vector<uint32_t> order_;
};

}  // namespace

std::unique_ptr<DeltaMask> keep_all_mask() { return std::make_unique<KeepAll>(); }

std::unique_ptr<DeltaMask> magnitude_mask(const MagnitudeCut& cut) {
  return std::make_unique<Magnitude>(cut);
}

std::unique_ptr<DeltaMask> band_mask(const MagnitudeCut& keep, std::optional<MagnitudeCut> top) {
  return std::make_unique<Band>(keep, top);
}

std::unique_ptr<DeltaMask> random_mask(CounterRng rng, double density) {
  return std::make_unique<Random>(rng, density);
}

std::unique_ptr<DeltaMask> rank_sampling_mask(CounterRng rng, double density, double epsilon,
                                              size_t cols) {
  return std::make_unique<RankSampling>(rng, density, epsilon, cols);
}

}  // namespace amalgam::merge
