// sce, Select-Calculate-Erase from FuseChat (spec/mergekit-compat.md 1.9). With the N task
// vectors d_i = X_i - B of one tensor:
//   Select (select_topk < 1): keep the k = int(nnz(var) * select_topk) elements of largest
//     variance var = Var_i(d_i) (population) in every d_i, zero the others;
//   Calculate: c_i = mean(d_i^2) / sum_j mean(d_j^2) over the selected d_i (1/N when the sum is
//     below 1e-6);
//   Erase: m_i = [sign(d_i) == sign(sum_j d_j)] (a zero sum elects +, a zero never agrees);
//   out = B + sum_i c_i m_i d_i / max(sum_i c_i m_i, 1e-6).
// prepare() counts the nonzero variances, finds the exact top-k cut of the variances with the
// streamed cut search (sparsify.h) and sums the squares; the merger then recomputes the variance
// of each chunk and applies the cut in ascending order.
#include <algorithm>
#include <cmath>
#include <optional>

#include "core/error.h"
#include "merge/registry.h"
#include "merge/sparsify.h"

namespace amalgam::merge {

namespace {

constexpr double kUniformBelow = 1e-6;  // sum_j mean(d_j^2) below which c_i = 1/N
constexpr float kMinDivisor = 1e-6f;    // clamp of sum_i c_i m_i

// Task vectors of the non-base inputs, computed chunk by chunk into reusable buffers.
class TaskVectors {
 public:
  TaskVectors(size_t base, size_t inputs, size_t chunk) : base_(base) {
    for (size_t i = 0; i < inputs; ++i) {
      if (i != base) models_.push_back(i);
    }
    resize(chunk);
  }
  const std::vector<size_t>& models() const { return models_; }
  std::vector<std::vector<float>>& tau() { return tau_; }

  void resize(size_t n) {
    if (!tau_.empty() && tau_[0].size() >= n) return;
    tau_.assign(models_.size(), std::vector<float>(n));
    b_.resize(n);
  }
  // From fp32 input chunks (n each): tau[m] = X_m - B.
  void compute(std::span<const float* const> inputs, size_t n) {
    resize(n);
    const float* b = inputs[base_];
    for (size_t m = 0; m < models_.size(); ++m) {
      const float* x = inputs[models_[m]];
      float* d = tau_[m].data();
      for (size_t j = 0; j < n; ++j) d[j] = x[j] - b[j];
    }
  }
  // The same from the reader, for elements [begin, begin + n).
  void read(const TensorReader& r, size_t begin, size_t n) {
    resize(n);
    r.read(base_, begin, n, b_.data());
    for (size_t m = 0; m < models_.size(); ++m) {
      float* d = tau_[m].data();
      r.read(models_[m], begin, n, d);
      for (size_t j = 0; j < n; ++j) d[j] -= b_[j];
    }
  }

  // Population variance over the models of the current n task-vector values, in fp64 (two
  // passes: mean, then squared deviations), rounded to fp32: var (n). Loops run over the chunk
  // per model so that they vectorise.
  void variance(size_t n, float* __restrict var) {
    if (mean_.size() < n) {
      mean_.resize(n);
      ss_.resize(n);
    }
    double* __restrict mean = mean_.data();
    double* __restrict ss = ss_.data();
    const auto models = static_cast<double>(models_.size());
    for (size_t m = 0; m < tau_.size(); ++m) {
      const float* __restrict d = tau_[m].data();
      if (m == 0) {
        for (size_t j = 0; j < n; ++j) mean[j] = d[j];
      } else {
        for (size_t j = 0; j < n; ++j) mean[j] += d[j];
      }
    }
    for (size_t j = 0; j < n; ++j) mean[j] /= models;
    for (size_t m = 0; m < tau_.size(); ++m) {
      const float* __restrict d = tau_[m].data();
      if (m == 0) {
        for (size_t j = 0; j < n; ++j) ss[j] = (d[j] - mean[j]) * (d[j] - mean[j]);
      } else {
        for (size_t j = 0; j < n; ++j) ss[j] += (d[j] - mean[j]) * (d[j] - mean[j]);
      }
    }
    for (size_t j = 0; j < n; ++j) var[j] = static_cast<float>(ss[j] / models);
  }

 private:
  size_t base_;
  std::vector<size_t> models_;
  std::vector<std::vector<float>> tau_;
  std::vector<float> b_;
  std::vector<double> mean_, ss_;  // variance scratch
};

// The selection: elements whose variance survives the top-k cut. Chunks in ascending order.
class Selection {
 public:
  explicit Selection(const MagnitudeCut& cut) : applier_(cut) {}
  // Zeroes the unselected elements of every task vector.
  void apply(TaskVectors& tv, size_t n) {
    var_.resize(n);
    tv.variance(n, var_.data());
    applier_.apply(var_.data(), n);  // selected variances are > 0: k <= nnz(var)
    for (auto& d : tv.tau()) {
      for (size_t j = 0; j < n; ++j) d[j] = var_[j] != 0.0f ? d[j] : 0.0f;
    }
  }

 private:
  CutApplier applier_;
  std::vector<float> var_;
};

class SceMerger : public ChunkMerger {
 public:
  SceMerger(size_t base, size_t inputs, size_t chunk, std::vector<float> c,
            std::optional<MagnitudeCut> cut)
      : tv_(base, inputs, chunk), base_(base), c_(std::move(c)) {
    if (cut) selection_.emplace(*cut);
  }

  // B and X_i chunks (n) -> out (n)
  void merge(size_t, size_t n, std::span<const float* const> inputs, float* out) override {
    tv_.compute(inputs, n);
    if (selection_) selection_->apply(tv_, n);
    const auto& tau = tv_.tau();
    sum_.assign(n, 0.0f);
    numer_.assign(n, 0.0f);
    denom_.assign(n, 0.0f);
    float* __restrict sum = sum_.data();
    float* __restrict numer = numer_.data();
    float* __restrict denom = denom_.data();
    for (const auto& d : tau) {
      for (size_t j = 0; j < n; ++j) sum[j] += d[j];
    }
    for (size_t m = 0; m < tau.size(); ++m) {
      const float* __restrict d = tau[m].data();
      const float c = c_[m];
      for (size_t j = 0; j < n; ++j) {
        // Bitwise, not short-circuit: branch-free, so the loop vectorises.
        const bool agree = ((d[j] > 0.0f) & (sum[j] >= 0.0f)) | ((d[j] < 0.0f) & (sum[j] < 0.0f));
        numer[j] += agree ? d[j] * c : 0.0f;
        denom[j] += agree ? c : 0.0f;
      }
    }
    const float* b = inputs[base_];
    for (size_t j = 0; j < n; ++j) out[j] = b[j] + numer[j] / std::max(denom[j], kMinDivisor);
  }

 private:
  TaskVectors tv_;
  size_t base_;
  std::vector<float> c_;  // per model, in the order of TaskVectors::models()
  std::optional<Selection> selection_;
  std::vector<float> sum_, numer_, denom_;
};


std::vector<ParamSpec> sce_params() {
  ParamSpec topk = real_spec("select_topk", 1.0, 0, 1,
                             "fraction of the elements of largest variance across the models "
                             "kept (1: no selection, 0: the base)");
  topk.searchable = true;
  return {topk, flag_spec("int8_mask", false, "memory hint in mergekit; no numeric effect")};
}

class Sce : public MergeMethod {
 public:
  Sce()
      : MergeMethod({.name = "sce",
                     .title = "SCE",
                     .reference = "https://arxiv.org/abs/2408.07990",
                     .summary = "task vectors selected by variance, weighted by their energy, "
                                "TIES sign consensus",
                     .base = BaseRole::kRequired,
                     .embed = EmbedRule::kCommonSubMatrix,
                     .inputs = std::nullopt,
                     .params = sce_params()}) {}

  bool copies_input(const PlanEntry& entry) const override { return entry.sources.size() == 1; }

  void check_entry(const PlanEntry& entry) const override { require_base(entry, name()); }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    const size_t base = *e.base;
    const TensorReader& r = in.reader;
    const size_t n = r.numel();
    if (e.sources.size() == 1 || n == 0) return copy_input(base);
    const size_t chunk = std::min(r.chunk_elements(), n);
    const double topk = global_param(e, "select_topk");
    TaskVectors tv(base, r.inputs(), chunk);

    std::optional<MagnitudeCut> cut;
    if (topk < 1) {
      if (topk <= 0) return copy_input(base);  // nothing selected
      const size_t k = keep_count(tv, r, topk);
      if (k == 0) return copy_input(base);  // no variance (e.g. one model)
      cut = find_magnitude_cuts(
          n, {k}, chunk,
          [&](size_t begin, size_t len, float* const* outs) {
            tv.read(r, begin, len);
            tv.variance(len, outs[0]);
          },
          /*need_l1=*/false)[0];
    }

    // Calculate: the energy of each selected task vector.
    std::vector<double> sumsq(tv.models().size(), 0.0);
    std::optional<Selection> selection;
    if (cut) selection.emplace(*cut);
    for (size_t begin = 0; begin < n; begin += chunk) {
      const size_t len = std::min(chunk, n - begin);
      tv.read(r, begin, len);
      if (selection) selection->apply(tv, len);
      for (size_t m = 0; m < sumsq.size(); ++m) {
        const float* d = tv.tau()[m].data();
        double s = 0;
        for (size_t j = 0; j < len; ++j) s += static_cast<double>(d[j]) * d[j];
        sumsq[m] += s;
      }
    }
    double total = 0;
    for (double& s : sumsq) total += (s /= static_cast<double>(n));  // mean(d_i^2)
    std::vector<float> c(sumsq.size());
    for (size_t m = 0; m < c.size(); ++m) {
      c[m] =
          static_cast<float>(std::fabs(total) < kUniformBelow ? 1.0 / static_cast<double>(c.size())
                                                              : sumsq[m] / total);
    }
    return std::make_unique<SceMerger>(base, r.inputs(), chunk, std::move(c), cut);
  }

 private:
  // k = int(nnz(var) * select_topk), in float32 as mergekit computes it (a 0-d int64 tensor
  // times a Python float gives a float32 tensor).
  static size_t keep_count(TaskVectors& tv, const TensorReader& r, double topk) {
    const size_t n = r.numel(), chunk = std::min(r.chunk_elements(), n);
    std::vector<float> var(chunk);
    size_t nonzero = 0;
    for (size_t begin = 0; begin < n; begin += chunk) {
      const size_t len = std::min(chunk, n - begin);
      tv.read(r, begin, len);
      tv.variance(len, var.data());
      for (size_t j = 0; j < len; ++j) nonzero += var[j] != 0.0f;
    }
    const float k = static_cast<float>(nonzero) * static_cast<float>(topk);
    // float32 rounding of a count above 2^24 could exceed it; the selection keeps k <= nnz so
    // that every selected variance is nonzero.
    return std::min(static_cast<size_t>(k), nonzero);
  }
};

}  // namespace

std::unique_ptr<MergeMethod> make_sce() { return std::make_unique<Sce>(); }

}  // namespace amalgam::merge
