// model_stock: interpolates between the base w_0 and the mean of N >= 2 fine-tunes with
// t = N cos / (1 + (N - 1) cos), where cos is the mean pairwise cosine of the task vectors
// w_i - w_0: out = t mean(w_i) + (1 - t) w_0 = w_0 + (t / N) sum_i (w_i - w_0). The cosine is a
// whole-tensor statistic (one fp64 scan of the Gram matrix), or per row with filter_wise, where
// each chunk's rows are merged from their own statistics.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "core/error.h"
#include "merge/registry.h"
#include "merge/sphere.h"

namespace amalgam::merge {

namespace {

// t from the Gram matrix of the task vectors (N x N, row-major). Cosines divide by the product of
// the norms clamped at 1e-6 and are clamped to [-1, 1], as mergekit; `where` names the tensor (and
// row) when the offsets cancel.
double stock_ratio(const std::vector<double>& gram, size_t count,
                   const std::function<std::string()>& where) {
  double sum = 0;
  size_t pairs = 0;
  for (size_t i = 0; i < count; ++i) {
    for (size_t j = i + 1; j < count; ++j) {
      const double norms = std::sqrt(gram[i * count + i] * gram[j * count + j]);
      sum += std::clamp(gram[i * count + j] / std::max(norms, 1e-6), -1.0, 1.0);
      ++pairs;
    }
  }
  const double cos = sum / static_cast<double>(pairs);
  const double n = static_cast<double>(count);
  const double denom = 1.0 + (n - 1.0) * cos;
  // The mean pairwise cosine is >= -1/(N-1), with equality exactly when the unit task vectors sum
  // to zero; t is then infinite (mergekit writes inf/NaN).
  if (denom < 1e-9) {
    fail(
        "{}: model_stock task vectors cancel out (mean pairwise cosine {} = -1/(N-1) for N = "
        "{}), so the interpolation ratio t = N cos / (1 + (N-1) cos) is undefined",
        where(), cos, count);
  }
  return n * cos / denom;
}

// filter_wise: rows of the last dimension, each with its own t.
class RowMerger : public ChunkMerger {
 public:
  RowMerger(std::string name, size_t base, std::vector<size_t> others, size_t cols)
      : name_(std::move(name)),
        base_(base),
        others_(std::move(others)),
        cols_(cols),
        gram_(others_.size() * others_.size()),
        d_(others_.size()) {}

  // per row r: B_r, X_{i,r} (cols) -> out_r = B_r + (t_r / N) sum_i (X_{i,r} - B_r)
  void merge(size_t begin, size_t n, std::span<const float* const> inputs, float* out) override {
    const size_t count = others_.size();
    const float* b = inputs[base_];
    for (size_t i = 0; i < count; ++i) {
      d_[i].resize(n);
      const float* x = inputs[others_[i]];
      for (size_t j = 0; j < n; ++j) d_[i][j] = x[j] - b[j];
    }
    for (size_t row = 0; row < n; row += cols_) {
      for (size_t i = 0; i < count; ++i) {
        for (size_t k = i; k < count; ++k) {
          double s = 0;
          const float* p = d_[i].data() + row;
          const float* q = d_[k].data() + row;
          for (size_t j = 0; j < cols_; ++j) s += static_cast<double>(p[j]) * q[j];
          gram_[i * count + k] = gram_[k * count + i] = s;
        }
      }
      const double t = stock_ratio(gram_, count, [&] {
        return fmt::format("tensor '{}' row {} (filter_wise)", name_, (begin + row) / cols_);
      });
      const float f = static_cast<float>(t / static_cast<double>(count));
      float* o = out + row;
      std::fill_n(o, cols_, 0.0f);
      for (size_t i = 0; i < count; ++i) {
        const float* d = d_[i].data() + row;
        for (size_t j = 0; j < cols_; ++j) o[j] += d[j];
      }
      for (size_t j = 0; j < cols_; ++j) o[j] = b[row + j] + f * o[j];
    }
  }

 private:
  std::string name_;
  size_t base_;
  std::vector<size_t> others_;
  size_t cols_;
  std::vector<double> gram_;
  std::vector<std::vector<float>> d_;  // task vectors of the chunk
};

class ModelStock : public MergeMethod {
 public:
  ModelStock()
      : MergeMethod({.name = "model_stock",
                     .title = "Model Stock",
                     .reference = "https://arxiv.org/abs/2403.19522",
                     .summary = "interpolates base and fine-tune mean by the task vectors' angle",
                     .base = BaseRole::kRequired,
                     .params = {flag_spec("filter_wise", false,
                                          "one ratio per row instead of per tensor")}}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override {
    require_base(entry, name());
    if (entry.sources.size() == 1) return;  // only the base has it: passes through
    if (entry.sources.size() < 3) {
      fail(
          "tensor '{}': model_stock needs at least 3 models (the base plus two or more others), "
          "got {}",
          entry.name, entry.sources.size());
    }
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    const size_t base = *e.base;
    if (e.sources.size() == 1) return copy_merger(base);
    std::vector<size_t> others = inputs_without_base(e);
    const size_t count = others.size();
    if (global_flag(e, "filter_wise")) {
      // 1-D tensors (norms, biases) are a single row.
      return std::make_unique<RowMerger>(e.name, base, std::move(others), row_length(e.shape));
    }
    const GramSpace g = gram_matrix(in.reader, others, base);
    std::vector<double> gram(count * count);
    for (size_t i = 0; i < count; ++i) {
      for (size_t k = 0; k < count; ++k) gram[i * count + k] = g.at(i, k);
    }
    const double t = stock_ratio(gram, count, [&] { return fmt::format("tensor '{}'", e.name); });
    return combination_merger(std::move(others),
                              std::vector<double>(count, t / static_cast<double>(count)), base);
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_model_stock() { return std::make_unique<ModelStock>(); }

}  // namespace amalgam::merge
