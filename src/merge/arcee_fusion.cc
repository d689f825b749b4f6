// arcee_fusion (spec/mergekit-compat.md 1.13): keeps only the salient changes of the other model.
// Per row of the last dimension, p = softmax(X) + 1e-8 and q = softmax(B) + 1e-8 give
// KL_row = sum p log(p / q); the importance of an element is I = |X - B| KL_row; with the
// quartiles Q1, median, Q3 of I (the element of index floor(q (n - 1)) of the sorted I),
//   thr = median + 1.5 (Q3 - Q1),  out = B + (X - B) [I >= thr].
//
// mergekit takes the quartiles of a random sample of 1e6 elements when n > 1e6, so its result
// for large tensors changes from run to run. amalgam takes the exact quartiles of all n elements,
// always: deterministic, equal to mergekit's whenever n <= 1e6. They are order statistics, found
// by the streamed exact top-k search (sparsify.h) without holding I. prepare() first stores
// KL_row (one double per row), so I can be produced for any range.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "merge/registry.h"
#include "merge/sparsify.h"

namespace amalgam::merge {

namespace {

constexpr double kSoftmaxEps = 1e-8;  // added to both softmaxes, as mergekit
constexpr double kIqrFactor = 1.5;

size_t row_length(const tensor::Shape& shape) {
  return shape.empty() || shape.back() == 0 ? 1 : static_cast<size_t>(shape.back());
}

// log(P + eps) from P > 0 and log P: log P + log1p(eps / P), the log1p by its series where
// eps / P is small (nearly always), which saves a log call per element.
inline double log_plus_eps(double p, double log_p) {
  const double u = kSoftmaxEps / p;
  if (u < 1e-4) return log_p + u * (1.0 - u * (0.5 - u / 3.0));  // error below u^4 / 4
  return std::log(p + kSoftmaxEps);                              // also P = 0 (underflow)
}

// KL(softmax(x) + eps || softmax(b) + eps) of one row of `cols`, in fp64; ex, eb: scratch.
// log p = log(P + eps) with log P = (x - max x) - log Z taken without a log per element.
double row_kl(const float* x, const float* b, size_t cols, std::vector<double>& ex,
              std::vector<double>& eb) {
  ex.resize(cols);
  eb.resize(cols);
  const double mx = *std::max_element(x, x + cols);
  const double mb = *std::max_element(b, b + cols);
  double zx = 0, zb = 0;
  for (size_t j = 0; j < cols; ++j) {
    zx += (ex[j] = std::exp(x[j] - mx));
    zb += (eb[j] = std::exp(b[j] - mb));
  }
  const double lzx = mx + std::log(zx), lzb = mb + std::log(zb);
  double kl = 0;
  for (size_t j = 0; j < cols; ++j) {
    const double px = ex[j] / zx, pb = eb[j] / zb;
    const double log_p = log_plus_eps(px, x[j] - lzx);
    const double log_q = log_plus_eps(pb, b[j] - lzb);
    kl += (px + kSoftmaxEps) * (log_p - log_q);
  }
  // Both measures have the same total, so KL >= 0; a negative sum is rounding (rows nearly
  // equal) and would rank those rows' elements below unchanged ones.
  return std::max(kl, 0.0);
}

// I = |x - b| KL_row for elements [begin, begin + n), rows of `cols`; walks row by row, so no
// division per element and the inner loop vectorises.
void importance(const float* x, const float* b, size_t begin, size_t n, size_t cols,
                const std::vector<double>& kl, float* out) {
  size_t row = begin / cols, col = begin % cols;
  for (size_t j = 0; j < n; ++row, col = 0) {
    const size_t len = std::min(cols - col, n - j);
    const double k = kl[row];
    for (size_t i = j; i < j + len; ++i) {
      out[i] = static_cast<float>(static_cast<double>(std::fabs(x[i] - b[i])) * k);
    }
    j += len;
  }
}

class FusionMerger : public ChunkMerger {
 public:
  FusionMerger(size_t base, size_t cols, std::vector<double> kl, double threshold)
      : base_(base), cols_(cols), kl_(std::move(kl)), threshold_(threshold) {}

  // B, X chunks (n) -> out (n) = B + (X - B) [I >= thr]
  void merge(size_t begin, size_t n, std::span<const float* const> inputs, float* out) override {
    const float* b = inputs[base_];
    const float* x = inputs[1 - base_];
    imp_.resize(n);
    importance(x, b, begin, n, cols_, kl_, imp_.data());
    for (size_t j = 0; j < n; ++j) {
      const float d = x[j] - b[j];
      out[j] = b[j] + (static_cast<double>(imp_[j]) >= threshold_ ? d : 0.0f);
    }
  }

 private:
  size_t base_, cols_;
  std::vector<double> kl_;
  double threshold_;
  std::vector<float> imp_;
};


class ArceeFusion : public MergeMethod {
 public:
  ArceeFusion()
      : MergeMethod({.name = "arcee_fusion",
                     .title = "Arcee Fusion",
                     .reference = "https://www.arcee.ai/blog/"
                                  "meet-mergekit-v0-1-arcee-fusion-expanded-model-support-multi-"
                                  "gpu-acceleration",
                     .summary = "keeps the other model's changes whose importance |X - B| "
                                "KL(row) is an upper outlier",
                     .base = BaseRole::kRequired,
                     .embed = EmbedRule::kCommonSubMatrix,
                     .inputs = 2,
                     .params = {}}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override {
    if (entry.sources.size() == 1) return;  // a tensor only the base has is copied
    if (entry.sources.size() != 2) {
      fail("tensor '{}': arcee_fusion merges exactly two models (the base and one other), got {}",
           entry.name, entry.sources.size());
    }
    require_base(entry, name());
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    const TensorReader& r = in.reader;
    const size_t n = r.numel();
    if (e.sources.size() == 1 || n == 0) return copy_input(0);
    const size_t base = *e.base, other = 1 - base;
    const size_t cols = row_length(e.shape);
    AMALGAM_CHECK(n % cols == 0, "internal: tensor size is not a multiple of its row length");
    const size_t rows_per_chunk = std::max<size_t>(1, r.chunk_elements() / cols);

    // Pass 1: KL per row.
    std::vector<double> kl(n / cols);
    {
      const size_t chunk = std::min(rows_per_chunk * cols, n);
      std::vector<float> x(chunk), b(chunk);
      std::vector<double> ex, eb;
      for (size_t row = 0; row < kl.size(); row += rows_per_chunk) {
        const size_t rows = std::min(rows_per_chunk, kl.size() - row);
        r.read(other, row * cols, rows * cols, x.data());
        r.read(base, row * cols, rows * cols, b.data());
        for (size_t i = 0; i < rows; ++i) {
          kl[row + i] = row_kl(x.data() + i * cols, b.data() + i * cols, cols, ex, eb);
        }
      }
    }

    // Quartiles of I: ascending indices floor(q (n - 1)), in integers (exact for any n).
    const size_t idx[3] = {(n - 1) / 4, (n - 1) / 2, 3 * (n - 1) / 4};
    std::vector<float> x, b;
    auto produce = [&](size_t begin, size_t len, float* out) {
      x.resize(len);
      b.resize(len);
      r.read(other, begin, len, x.data());
      r.read(base, begin, len, b.data());
      importance(x.data(), b.data(), begin, len, cols, kl, out);
    };
    float quartile[3];
    if (idx[0] == 0) {
      // n <= 4: the minimum is a quartile, which a top-k cut does not give (it would keep all).
      std::vector<float> all(n);
      produce(0, n, all.data());
      std::sort(all.begin(), all.end());
      for (int q = 0; q < 3; ++q) quartile[q] = all[idx[q]];
    } else {
      // The idx-th smallest of n is the (n - idx)-th largest: the threshold of a top-(n - idx)
      // cut (I >= 0, as the cut search needs).
      std::vector<size_t> keep = {n - idx[0], n - idx[1], n - idx[2]};
      auto cuts = find_magnitude_cuts(
          n, keep, r.chunk_elements(),
          [&](size_t begin, size_t len, float* const* outs) {
            produce(begin, len, outs[0]);
            std::copy(outs[0], outs[0] + len, outs[1]);
            std::copy(outs[0], outs[0] + len, outs[2]);
          },
          /*need_l1=*/false);
      for (int q = 0; q < 3; ++q) quartile[q] = cuts[q].threshold;
    }
    const double threshold = static_cast<double>(quartile[1]) +
                             kIqrFactor * (static_cast<double>(quartile[2]) - quartile[0]);
    return std::make_unique<FusionMerger>(base, cols, std::move(kl), threshold);
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_arcee_fusion() { return std::make_unique<ArceeFusion>(); }

}  // namespace amalgam::merge
