#include "merge/masks.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/half.h"

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
  Random(CounterRng rng, double density) : rng_(rng), threshold_(CounterRng::threshold(density)) {}
  void apply(size_t begin, float* delta, size_t n) override {
    for (size_t j = 0; j < n; ++j) {
      delta[j] = rng_.bits24(begin + j) < threshold_ ? delta[j] : 0.0f;
    }
  }
  void apply_delta(size_t begin, const float* __restrict x, const float* __restrict b, float scale,
                   float* __restrict d, size_t n) override {
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
    keys_.resize(cols_);
    bits_.resize(cols_);
    for (size_t row = 0; row < n; row += cols_) {
      float* v = delta + row;
      const size_t c = std::min(cols_, n - row);
      rank_row(v, c);
      for (size_t j = 0; j < c; ++j) bits_[j] = rng_.bits24(begin + row + j);  // vectorises
      const std::vector<uint32_t>& keep_below = thresholds(c);
      for (size_t r = 0; r < c; ++r) {
        const auto j = static_cast<uint32_t>(keys_[r]);
        if (bits_[j] >= keep_below[r]) v[j] = 0.0f;
      }
    }
  }

 private:
  // keys_[0, c) = |v| bits << 32 | index, in ascending magnitude, equal magnitudes by index: for
  // non-negative floats (no NaN here) the bit patterns order as the values do, and a stable LSD
  // radix sort of the 31-bit magnitudes keeps equal ones in index order. (Comparison sorts of
  // the rows took most of a DELLA merge.)
  void rank_row(const float* v, size_t c) {
    constexpr unsigned kDigitBits = 11;
    constexpr uint32_t kDigits = 1u << kDigitBits;
    for (size_t j = 0; j < c; ++j) {
      keys_[j] = uint64_t{core::f32_to_bits(std::fabs(v[j]))} << 32 | j;
    }
    sorted_.resize(keys_.size());
    for (unsigned shift = 32; shift < 64; shift += kDigitBits) {
      counts_.assign(kDigits, 0);
      for (size_t j = 0; j < c; ++j) ++counts_[(keys_[j] >> shift) & (kDigits - 1)];
      if (counts_[(keys_[0] >> shift) & (kDigits - 1)] == c) continue;  // one digit: in order
      uint32_t sum = 0;
      for (uint32_t& n : counts_) sum += std::exchange(n, sum);
      for (size_t j = 0; j < c; ++j) {
        sorted_[counts_[(keys_[j] >> shift) & (kDigits - 1)]++] = keys_[j];
      }
      std::swap(keys_, sorted_);
    }
  }

  // threshold(p) of each rank in a row of c elements (c is the same for every row but a
  // chunk's last, so the table is kept).
  const std::vector<uint32_t>& thresholds(size_t c) {
    if (thresholds_.size() != c) {
      thresholds_.resize(c);
      for (size_t r = 0; r < c; ++r) {
        const double rank_norm = c > 1 ? static_cast<double>(r) / static_cast<double>(c - 1) : 0.5;
        const double p = (density_ - epsilon_) + 2 * epsilon_ * rank_norm;
        thresholds_[r] = CounterRng::threshold(p);
      }
    }
    return thresholds_;
  }

  CounterRng rng_;
  double density_, epsilon_;
  size_t cols_;
  std::vector<uint64_t> keys_, sorted_;  // |v| bits << 32 | index
  std::vector<uint32_t> counts_;         // radix sort buckets
  std::vector<uint32_t> bits_;           // the row's random draws, by index
  std::vector<uint32_t> thresholds_;
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
