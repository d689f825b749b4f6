#include "merge/sparsify.h"

#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/log.h"

namespace amalgam::merge {

namespace {

constexpr size_t kInMemoryLimit = size_t{1} << 18;  // elements per vector selected in memory
constexpr size_t kSegments = 512;                   // sample: kSegments runs of kSegmentLength
constexpr size_t kSegmentLength = 128;
constexpr double kBracketMargin = 0.01;  // bracket half-width, as a fraction of n
constexpr uint32_t kBins = 1 << 16;
constexpr uint32_t kInfBits = 0x7f800000u;
constexpr uint32_t kMixed = 0xffffffffu;  // a bin that saw more than one value

// Calls produce over [0, n) in chunks; visit(m, values, len) sees each vector's chunk.
void scan(size_t n, size_t vectors, size_t chunk, const MagnitudeProducer& produce,
          const std::function<void(size_t m, const float* v, size_t len)>& visit) {
  std::vector<std::vector<float>> bufs(vectors, std::vector<float>(std::min(chunk, n)));
  std::vector<float*> outs(vectors);
  for (size_t m = 0; m < vectors; ++m) outs[m] = bufs[m].data();
  for (size_t begin = 0; begin < n; begin += chunk) {
    const size_t len = std::min(chunk, n - begin);
    produce(begin, len, outs.data());
    for (size_t m = 0; m < vectors; ++m) visit(m, outs[m], len);
  }
}

// Sum of n floats in 8 independent fp64 lanes (no serial dependency).
double sum_floats(const float* v, size_t n) {
  double lanes[8] = {};
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (size_t l = 0; l < 8; ++l) lanes[l] += v[j + l];
  }
  double s = 0;
  for (double l : lanes) s += l;
  for (; j < n; ++j) s += v[j];
  return s;
}

// Bit pattern of a non-negative float.
uint32_t bits_of(float f) { return core::f32_to_bits(f); }

}  // namespace

size_t partition_magnitudes(const float* v, size_t n, uint32_t lo, uint32_t hi, size_t* above,
                            uint32_t* inside, bool simd) {
  size_t j = 0, count = 0, over = 0;
#if defined(__AVX512F__)
  if (simd) {
    const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo));
    const __m512i vhi = _mm512_set1_epi32(static_cast<int>(hi));
    for (; j + 16 <= n; j += 16) {
      const __m512i u = _mm512_loadu_si512(v + j);
      const __mmask16 gt = _mm512_cmpgt_epu32_mask(u, vhi);
      const __mmask16 in = _mm512_cmpge_epu32_mask(u, vlo) & static_cast<__mmask16>(~gt);
      over += static_cast<size_t>(__builtin_popcount(gt));
      _mm512_mask_compressstoreu_epi32(inside + count, in, u);
      count += static_cast<size_t>(__builtin_popcount(in));
    }
  }
#else
  (void)simd;
#endif
  for (; j < n; ++j) {
    const uint32_t u = bits_of(v[j]);
    over += u > hi;
    if (u >= lo && u <= hi) inside[count++] = u;
  }
  *above = over;
  return count;
}

namespace {

// Exact cut of magnitudes held in memory.
MagnitudeCut cut_from_values(std::vector<float> mags, size_t k) {
  double total = 0;
  for (float a : mags) total += a;
  std::nth_element(mags.begin(), mags.begin() + static_cast<std::ptrdiff_t>(k - 1), mags.end(),
                   std::greater<float>());
  MagnitudeCut cut;
  cut.threshold = mags[k - 1];
  size_t above = 0;
  double l1 = 0;
  for (float a : mags) {
    if (a > cut.threshold) {
      ++above;
      l1 += a;
    }
  }
  cut.ties = k - above;
  cut.total_l1 = total;
  cut.kept_l1 = l1 + static_cast<double>(cut.ties) * cut.threshold;
  return cut;
}

// The arrays of one RangeSearch (up to 2^16 bins each).
struct SearchStorage {
  std::vector<uint32_t> counts[4];  // interleaved so repeated bins do not serialise
  std::vector<uint32_t> first;      // bits + 1 of the first value seen in a bin, 0, or kMixed
  std::vector<double> sums;
  std::vector<uint32_t> inside;  // bit patterns of the current chunk's values in the range
};

// The search for one vector's k-th largest magnitude: an inclusive range [lo, hi] of fp32 bit
// patterns known to hold it, histogrammed in bins of 2^shift patterns.
class RangeSearch {
 public:
  RangeSearch(size_t k, bool need_l1, SearchStorage& storage)
      : k_(k),
        need_l1_(need_l1),
        counts_(storage.counts),
        first_(storage.first),
        sums_(storage.sums),
        inside_(storage.inside) {}

  void set_range(uint32_t lo, uint32_t hi) {
    lo_ = lo;
    hi_ = hi;
    shift_ = 0;
    while (((hi_ - lo_) >> shift_) >= kBins) ++shift_;
    const size_t bins = ((hi_ - lo_) >> shift_) + 1;
    for (auto& c : counts_) c.assign(bins, 0);
    first_.assign(bins, 0);
    if (need_l1_) sums_.assign(bins, 0.0);
    above_ = 0;
    above_l1_ = 0;
  }

  // One chunk of magnitudes, in index order.
  void add(const float* v, size_t n) {
    if (need_l1_ && count_total_) total_l1_ += sum_floats(v, n);
    inside_.resize(n);
    size_t above = 0;
    size_t count = 0;
    if (need_l1_) {
      double above_l1 = 0;
      for (size_t j = 0; j < n; ++j) {
        const uint32_t u = bits_of(v[j]);
        if (u > hi_) {
          ++above;
          above_l1 += v[j];
        } else if (u >= lo_) {
          inside_[count++] = u;
        }
      }
      above_l1_ += above_l1;
    } else {
      count = partition_magnitudes(v, n, lo_, hi_, &above, inside_.data(), /*simd=*/true);
    }
    above_ += above;
    // Histogram of what lies in the range (a few percent of the values, or a run of ties).
    const uint32_t lo = lo_, shift = shift_;
    for (size_t i = 0; i < count; ++i) {
      const uint32_t u = inside_[i];
      const uint32_t key = (u - lo) >> shift;
      ++counts_[i & 3][key];
      uint32_t& f = first_[key];
      if (f == 0) {
        f = u + 1;
      } else if (f != u + 1) {
        f = kMixed;
      }
      if (need_l1_) sums_[key] += core::bits_to_f32(u);
    }
  }

  // After a pass: true when the cut is known; otherwise the range is narrowed for another pass.
  bool conclude(MagnitudeCut& cut) {
    count_total_ = false;
    if (above_ >= k_) {  // the k-th lies above the range
      set_range(hi_ + 1, kInfBits);
      return false;
    }
    size_t cum = above_;
    double cum_l1 = above_l1_;
    const size_t bins = first_.size();
    for (size_t b = bins; b-- > 0;) {
      const size_t count = counts_[0][b] + counts_[1][b] + counts_[2][b] + counts_[3][b];
      if (cum + count >= k_) {
        if (first_[b] != kMixed) {  // one value in the bin: it is the threshold
          cut.threshold = core::bits_to_f32(first_[b] - 1);
          cut.ties = k_ - cum;
          cut.total_l1 = total_l1_;
          cut.kept_l1 = cum_l1 + static_cast<double>(cut.ties) * cut.threshold;
          return true;
        }
        const uint32_t lo = lo_ + (static_cast<uint32_t>(b) << shift_);
        const uint32_t hi = std::min<uint64_t>(hi_, lo + ((uint64_t{1} << shift_) - 1));
        set_range(lo, hi);
        return false;
      }
      cum += count;
      if (need_l1_) cum_l1 += sums_[b];
    }
    // The k-th lies below the range (never when the range starts at 0).
    AMALGAM_CHECK(lo_ > 0, "internal: top-k count lost elements");
    set_range(0, lo_ - 1);
    return false;
  }

 private:
  size_t k_;
  bool need_l1_;
  bool count_total_ = true;  // total L1 is summed during the first pass only
  uint32_t lo_ = 0, hi_ = 0, shift_ = 0;
  std::vector<uint32_t> (&counts_)[4];
  std::vector<uint32_t>& first_;
  std::vector<double>& sums_;
  std::vector<uint32_t>& inside_;
  size_t above_ = 0;
  double above_l1_ = 0;
  double total_l1_ = 0;
};

}  // namespace

size_t magnitude_keep_count(double density, size_t n, std::string_view what) {
  if (density >= 1.0) return n;
  const size_t k = density > 0 ? static_cast<size_t>(density * static_cast<double>(n)) : 0;
  if (k == 0) {
    fail("tensor '{}': density {} keeps no element of {} (raise density)", what, density, n);
  }
  return k;
}

std::vector<MagnitudeCut> find_magnitude_cuts(size_t n, const std::vector<size_t>& keep,
                                              size_t chunk, const MagnitudeProducer& produce,
                                              bool need_l1) {
  const size_t vectors = keep.size();
  std::vector<MagnitudeCut> cuts(vectors);
  std::vector<size_t> todo;
  for (size_t m = 0; m < vectors; ++m) {
    if (keep[m] >= n) {
      cuts[m].keep_all = true;
    } else {
      AMALGAM_CHECK(keep[m] > 0, "internal: top-k with k = 0");
      todo.push_back(m);
    }
  }
  if (todo.empty()) return cuts;

  if (n <= kInMemoryLimit) {
    std::vector<std::vector<float>> all(vectors, std::vector<float>(n));
    std::vector<float*> outs(vectors);
    for (size_t m = 0; m < vectors; ++m) outs[m] = all[m].data();
    produce(0, n, outs.data());
    for (size_t m : todo) cuts[m] = cut_from_values(std::move(all[m]), keep[m]);
    return cuts;
  }
  AMALGAM_CHECK(n / 4 < (size_t{1} << 32), "internal: tensor too large for top-k counters");

  // Bracket each k-th magnitude from a sample of evenly spread runs.
  std::vector<std::vector<float>> sample(vectors);
  {
    std::vector<std::vector<float>> bufs(vectors, std::vector<float>(kSegmentLength));
    std::vector<float*> outs(vectors);
    for (size_t m = 0; m < vectors; ++m) outs[m] = bufs[m].data();
    for (size_t s = 0; s < kSegments; ++s) {
      const size_t begin = s * (n - kSegmentLength) / (kSegments - 1);
      produce(begin, kSegmentLength, outs.data());
      for (size_t m : todo) sample[m].insert(sample[m].end(), bufs[m].begin(), bufs[m].end());
    }
  }
  // The searches' arrays are kept per thread from call to call: allocated afresh, their few MiB
  // per tensor were page-faulted in and handed back to the system each time (7% of the CPU time
  // of a TIES merge of bf16 models).
  thread_local std::vector<std::unique_ptr<SearchStorage>> storage;
  while (storage.size() < vectors) storage.push_back(std::make_unique<SearchStorage>());
  std::vector<std::unique_ptr<RangeSearch>> search(vectors);
  for (size_t m : todo) {
    std::vector<float>& s = sample[m];
    const double p = static_cast<double>(keep[m]) / static_cast<double>(n);
    const double size = static_cast<double>(s.size());
    const double hi_rank = std::floor((p - kBracketMargin) * size);
    const double lo_rank = std::ceil((p + kBracketMargin) * size);
    // Two order statistics of the sample (descending), no full sort.
    auto nth = [&](double rank) {
      auto it = s.begin() + static_cast<std::ptrdiff_t>(rank);
      std::nth_element(s.begin(), it, s.end(), std::greater<float>());
      return *it;
    };
    const uint32_t hi = hi_rank < 0 ? kInfBits : bits_of(nth(hi_rank));
    const uint32_t lo = lo_rank >= size ? 0 : bits_of(nth(lo_rank));
    search[m] = std::make_unique<RangeSearch>(keep[m], need_l1, *storage[m]);
    search[m]->set_range(lo, hi);
  }

  // Passes until every cut is known (each pass narrows a range by 2^16, or moves a missed
  // bracket to the full range on the side the k-th lies).
  int pass = 0;
  for (; !todo.empty(); ++pass) {
    AMALGAM_CHECK(pass < 8, "internal: top-k search did not converge");
    scan(n, vectors, chunk, produce, [&](size_t m, const float* v, size_t len) {
      if (search[m]) search[m]->add(v, len);
    });
    std::vector<size_t> still;
    for (size_t m : todo) {
      if (search[m]->conclude(cuts[m])) {
        search[m].reset();
      } else {
        still.push_back(m);
      }
    }
    todo = std::move(still);
  }
  core::debug("top-k of {} vector(s) of {} elements: {} pass(es)", vectors, n, pass);
  return cuts;
}

void CutApplier::apply(float* v, size_t n) {
  if (cut_.keep_all) return;
  const float t = cut_.threshold;
  size_t j = 0;
  // While tie quota remains, the first elements equal to the threshold are kept, in order. A
  // block whose ties all fit the quota is kept wholesale (a loop that vectorises).
  constexpr size_t kBlock = 4096;
  while (j < n && ties_left_ > 0) {
    const size_t len = std::min(kBlock, n - j);
    float* b = v + j;
    size_t ties = 0;
    for (size_t i = 0; i < len; ++i) ties += std::fabs(b[i]) == t;
    if (ties <= ties_left_) {
      for (size_t i = 0; i < len; ++i) b[i] = std::fabs(b[i]) >= t ? b[i] : 0.0f;
      ties_left_ -= ties;
    } else {
      for (size_t i = 0; i < len; ++i) {
        const float a = std::fabs(b[i]);
        const bool tie = a == t && ties_left_ > 0;
        ties_left_ -= tie;
        b[i] = (a > t) | tie ? b[i] : 0.0f;
      }
    }
    j += len;
  }
  for (; j < n; ++j) v[j] = std::fabs(v[j]) > t ? v[j] : 0.0f;
}

void CutApplier::apply_delta(const float* __restrict x, const float* __restrict b, float scale,
                             float* __restrict d, size_t n) {
  if (cut_.keep_all) {
    for (size_t j = 0; j < n; ++j) d[j] = (x[j] - b[j]) * scale;
    return;
  }
  if (ties_left_ > 0) {
    for (size_t j = 0; j < n; ++j) d[j] = x[j] - b[j];
    apply(d, n);
    for (size_t j = 0; j < n; ++j) d[j] *= scale;
    return;
  }
  const float t = cut_.threshold;
  for (size_t j = 0; j < n; ++j) {
    const float v = x[j] - b[j];
    d[j] = std::fabs(v) > t ? v * scale : 0.0f;
  }
}

void sparsify_magnitude(std::span<float> delta, double density, std::string_view what) {
  const size_t n = delta.size();
  const size_t k = magnitude_keep_count(density, n, what);
  const size_t chunk = std::max<size_t>(1, std::min<size_t>(n, size_t{1} << 16));
  auto cuts = find_magnitude_cuts(
      n, {k}, chunk,
      [&](size_t begin, size_t len, float* const* outs) {
        for (size_t j = 0; j < len; ++j) outs[0][j] = std::fabs(delta[begin + j]);
      },
      false);
  CutApplier(cuts[0]).apply(delta.data(), n);
}

double l1_rescale_factor(const MagnitudeCut& cut) {
  if (cut.keep_all || cut.total_l1 < 1e-7 || cut.kept_l1 < 1e-7) return 1.0;
  return cut.total_l1 / cut.kept_l1;
}

}  // namespace amalgam::merge
