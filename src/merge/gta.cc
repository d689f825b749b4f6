#include "merge/gta.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/error.h"
#include "merge/masks.h"
#include "merge/registry.h"
#include "merge/sparsify.h"

namespace amalgam::merge {

namespace {

// Per-model state of one tensor's merge.
struct TaskVector {
  size_t input;                     // index into the inputs
  float weight;                     // w_i
  float scale;                      // w_i times the L1 rescale factor (1 without rescale)
  std::unique_ptr<DeltaMask> mask;  // the sparsifier
};

class GtaMerger : public ChunkMerger {
 public:
  GtaMerger(size_t base, std::vector<TaskVector> tasks, Consensus consensus, bool normalize,
            float lambda, size_t chunk)
      : base_(base),
        tasks_(std::move(tasks)),
        consensus_(consensus),
        normalize_(normalize),
        lambda_(lambda),
        deltas_(tasks_.size(), std::vector<float>(chunk)) {}

  // inputs: base B and models X_i, chunks of n -> out (n) = B + lambda * mix(D_i)
  void merge(size_t begin, size_t n, std::span<const float* const> inputs, float* out) override {
    const float* b = inputs[base_];
    for (auto& d : deltas_) {
      if (d.size() < n) d.resize(n);
    }
    for (size_t m = 0; m < tasks_.size(); ++m) {
      TaskVector& t = tasks_[m];
      t.mask->apply_delta(begin, inputs[t.input], b, t.scale, deltas_[m].data(), n);
    }
    if (consensus_ == Consensus::kNone) {
      merge_plain(n, b, out);
    } else {
      merge_consensus(n, b, out);
    }
  }

 private:
  // Elects a sign per element (sum: of sum_i D_i; count: of sum_i sign(D_i); zero elects +),
  // keeps the D_i of that sign (a pruned zero never agrees), divides by the sum of the agreeing
  // weights. Loops run over the chunk per model so that they vectorise; additions keep the model
  // order.
  void merge_consensus(size_t n, const float* b, float* out) {
    sum_.assign(n, 0.0f);
    div_.resize(n);
    float* __restrict sum = sum_.data();
    float* __restrict div = div_.data();
    float* __restrict mixed = out;  // accumulated in place, then turned into the output
    for (size_t m = 0; m < deltas_.size(); ++m) {
      const float* __restrict d = deltas_[m].data();
      if (consensus_ == Consensus::kSum) {
        for (size_t j = 0; j < n; ++j) sum[j] += d[j];
      } else {
        for (size_t j = 0; j < n; ++j) sum[j] += static_cast<float>((d[j] > 0) - (d[j] < 0));
      }
    }
    for (size_t m = 0; m < deltas_.size(); ++m) {
      const float* __restrict d = deltas_[m].data();
      const float w = tasks_[m].weight;
      if (m == 0) {
        for (size_t j = 0; j < n; ++j) {
          // Bitwise, not short-circuit: branch-free, so the loop vectorises.
          const bool agree = ((d[j] > 0.0f) & (sum[j] >= 0.0f)) | ((d[j] < 0.0f) & (sum[j] < 0.0f));
          mixed[j] = agree ? d[j] : 0.0f;
          div[j] = agree ? w : 0.0f;
        }
      } else {
        for (size_t j = 0; j < n; ++j) {
          const bool agree = ((d[j] > 0.0f) & (sum[j] >= 0.0f)) | ((d[j] < 0.0f) & (sum[j] < 0.0f));
          mixed[j] += agree ? d[j] : 0.0f;
          div[j] += agree ? w : 0.0f;
        }
      }
    }
    const float lambda = lambda_;
    if (normalize_) {
      for (size_t j = 0; j < n; ++j) {
        const float v = div[j] != 0.0f ? mixed[j] / div[j] : mixed[j];
        out[j] = b[j] + v * lambda;
      }
    } else {
      for (size_t j = 0; j < n; ++j) out[j] = b[j] + mixed[j] * lambda;
    }
  }

  void merge_plain(size_t n, const float* b, float* out) {
    float div = 0;
    for (const auto& t : tasks_) div += t.weight;
    if (std::fabs(div) < 1e-8f) div = 1.0f;  // mergekit's guard for weights summing to 0
    const float factor = normalize_ ? lambda_ / div : lambda_;
    std::copy(b, b + n, out);
    // Sum the task vectors first, then scale once, as the formula does.
    std::vector<float>& mixed = deltas_[0];
    for (size_t m = 1; m < deltas_.size(); ++m) {
      const float* d = deltas_[m].data();
      for (size_t j = 0; j < n; ++j) mixed[j] += d[j];
    }
    for (size_t j = 0; j < n; ++j) out[j] += mixed[j] * factor;
  }

  size_t base_;
  std::vector<TaskVector> tasks_;
  Consensus consensus_;
  bool normalize_;
  float lambda_;
  std::vector<std::vector<float>> deltas_;  // D_i of the current chunk
  std::vector<float> sum_, div_;            // consensus scratch
};

// Sums |full[t][j]| and |kept[t][j]| over j < n into fp64, each in index order (the rescale
// factors, and so the output, stay the same bit for bit whatever the chunking of the loops
// around). The sums are serial chains of fp64 additions; running up to eight chains side by
// side hides their latency, which made one chain at a time the slowest part of DARE.
template <size_t G>
void abs_sums_group(const float* const* full, const float* const* kept, size_t n, double* full_sum,
                    double* kept_sum) {
  double f[G] = {}, k[G] = {};
  for (size_t j = 0; j < n; ++j) {
    for (size_t g = 0; g < G; ++g) {
      f[g] += std::fabs(full[g][j]);
      k[g] += std::fabs(kept[g][j]);
    }
  }
  for (size_t g = 0; g < G; ++g) {
    full_sum[g] = f[g];
    kept_sum[g] = k[g];
  }
}

void abs_sums(const std::vector<const float*>& full, const std::vector<const float*>& kept,
              size_t n, std::vector<double>& full_sum, std::vector<double>& kept_sum) {
  for (size_t t = 0; t < full.size(); t += 4) {
    const size_t group = std::min<size_t>(4, full.size() - t);
    const float* const* f = full.data() + t;
    const float* const* k = kept.data() + t;
    if (group == 4) abs_sums_group<4>(f, k, n, &full_sum[t], &kept_sum[t]);
    if (group == 3) abs_sums_group<3>(f, k, n, &full_sum[t], &kept_sum[t]);
    if (group == 2) abs_sums_group<2>(f, k, n, &full_sum[t], &kept_sum[t]);
    if (group == 1) abs_sums_group<1>(f, k, n, &full_sum[t], &kept_sum[t]);
  }
}

std::vector<ParamSpec> gta_params(const GtaConfig& c) {
  std::vector<ParamSpec> p = {
      flag_spec("int8_mask", false, "memory hint in mergekit; no numeric effect"),
      flag_spec("normalize", c.normalize_default, "divide by the sum of the (agreeing) weights"),
      flag_spec("rescale", c.rescale_default,
                "scale each sparsified task vector back to its L1 norm"),
      real_spec("lambda", 1.0, -std::numeric_limits<double>::infinity(),
                std::numeric_limits<double>::infinity(), "factor on the merged task vector"),
      weight_spec()};
  // Every GTA method takes a density (mergekit); task arithmetic ignores it.
  p.push_back(density_spec());
  p.back().searchable = c.sparsifier != Sparsifier::kNone;
  if (c.sparsifier == Sparsifier::kMagnitudeOutliers) {
    ParamSpec gamma = density_spec();
    gamma.name = "gamma";
    gamma.default_value = 0.01;
    gamma.help = "fraction of the largest magnitudes dropped";
    p.push_back(gamma);
  }
  if (c.sparsifier == Sparsifier::kRankSampling) {
    ParamSpec epsilon = density_spec();
    epsilon.name = "epsilon";
    epsilon.default_value = 0.15;
    epsilon.searchable = false;
    epsilon.help = "keep probabilities span density -/+ epsilon from smallest to largest";
    p.push_back(epsilon);
  }
  return p;
}

// One model's sparsification settings for one tensor.
struct ModelSettings {
  size_t input;
  double density = 1, gamma = 0, epsilon = 0;
  bool sparsify = false;  // density < 1
};

class GeneralizedTaskArithmetic : public MergeMethod {
 public:
  explicit GeneralizedTaskArithmetic(GtaConfig config)
      : MergeMethod({.name = config.name,
                     .title = config.title,
                     .reference = config.reference,
                     .summary = config.summary,
                     .base = BaseRole::kRequired,
                     .embed = EmbedRule::kCropToBase,
                     .random = config.sparsifier == Sparsifier::kRandom ||
                               config.sparsifier == Sparsifier::kRankSampling,
                     .params = gta_params(config)}),
        config_(std::move(config)) {}

  void check_entry(const PlanEntry& entry) const override {
    const size_t base = require_base(entry, name());
    const size_t n = static_cast<size_t>(tensor::numel(entry.shape));
    for (size_t i = 0; i < entry.sources.size(); ++i) {
      if (i == base) continue;
      tensor_param(entry, i, "weight");
      const ModelSettings s = settings(entry, i);
      if (!s.sparsify) continue;
      if (config_.sparsifier == Sparsifier::kMagnitude) {
        magnitude_keep_count(s.density, n, entry.name);
      } else if (config_.sparsifier == Sparsifier::kRankSampling && s.density > 0 &&
                 (s.density - s.epsilon <= 0 || s.density + s.epsilon >= 1)) {
        fail(
            "tensor '{}': {} needs 0 < density - epsilon and density + epsilon < 1 (keep "
            "probabilities), but density = {} and epsilon = {}",
            entry.name, name(), s.density, s.epsilon);
      }
    }
  }

  std::unique_ptr<ChunkMerger> prepare(const MethodInputs& in) const override {
    const PlanEntry& e = in.entry;
    check(e);
    const size_t base = *e.base;
    if (e.sources.size() == 1) return copy_input(base);
    const TensorReader& reader = in.reader;
    const bool rescale = global_flag(e, "rescale");

    std::vector<ModelSettings> models;
    for (size_t i = 0; i < e.sources.size(); ++i) {
      if (i != base) models.push_back(settings(e, i));
    }
    std::vector<std::unique_ptr<DeltaMask>> masks;
    std::vector<double> factors(models.size(), 1.0);
    if (config_.sparsifier == Sparsifier::kMagnitude ||
        config_.sparsifier == Sparsifier::kMagnitudeOutliers) {
      masks = magnitude_masks(e, reader, models, rescale, factors);
    } else {
      for (const auto& m : models) masks.push_back(random_model_mask(e, in.seed, m));
    }
    // Magnitude cuts know their L1 sums; random masks need a pass over the data.
    if (rescale && (config_.sparsifier == Sparsifier::kRandom ||
                    config_.sparsifier == Sparsifier::kRankSampling)) {
      l1_factors(reader, base, models, e, in.seed, factors);
    }

    std::vector<TaskVector> tasks;
    for (size_t m = 0; m < models.size(); ++m) {
      const double w = tensor_param(e, models[m].input, "weight");
      tasks.push_back(TaskVector{models[m].input, static_cast<float>(w),
                                 static_cast<float>(w * factors[m]), std::move(masks[m])});
    }
    return std::make_unique<GtaMerger>(
        base, std::move(tasks), config_.consensus, global_flag(e, "normalize"),
        static_cast<float>(global_param(e, "lambda")), reader.chunk_elements());
  }

 private:
  ModelSettings settings(const PlanEntry& e, size_t input) const {
    ModelSettings s{input};
    if (config_.sparsifier == Sparsifier::kNone) return s;
    s.density = tensor_param(e, input, "density");
    s.sparsify = s.density < 1.0;
    if (config_.sparsifier == Sparsifier::kMagnitudeOutliers)
      s.gamma = tensor_param(e, input, "gamma");
    if (config_.sparsifier == Sparsifier::kRankSampling)
      s.epsilon = tensor_param(e, input, "epsilon");
    return s;
  }

  std::unique_ptr<DeltaMask> random_model_mask(const PlanEntry& e, uint64_t seed,
                                               const ModelSettings& m) const {
    if (!m.sparsify) return keep_all_mask();
    const CounterRng rng(seed, e.name, e.sources[m.input].model);
    if (config_.sparsifier == Sparsifier::kRandom) return random_mask(rng, m.density);
    const size_t cols = e.shape.empty() ? 1 : static_cast<size_t>(e.shape.back());
    return rank_sampling_mask(rng, m.density, m.epsilon, cols);
  }

  // TIES and breadcrumbs: exact top-k cuts of |X_i - B|, found chunk by chunk.
  // With `rescale`, also sets the L1 factors (the cuts' passes sum the magnitudes).
  std::vector<std::unique_ptr<DeltaMask>> magnitude_masks(const PlanEntry& e,
                                                          const TensorReader& reader,
                                                          const std::vector<ModelSettings>& models,
                                                          bool rescale,
                                                          std::vector<double>& factors) const {
    std::vector<std::unique_ptr<DeltaMask>> masks;
    const size_t n = reader.numel();
    const bool band = config_.sparsifier == Sparsifier::kMagnitudeOutliers;
    // Cut requests: (model, keep count); a band asks for its keep cut and its top cut.
    std::vector<size_t> owner, keep;
    std::vector<size_t> keep_cut(models.size(), SIZE_MAX), top_cut(models.size(), SIZE_MAX);
    for (size_t m = 0; m < models.size(); ++m) {
      const ModelSettings& s = models[m];
      if (!s.sparsify) continue;
      const auto nd = static_cast<double>(n);
      if (!band) {
        keep_cut[m] = owner.size();
        owner.push_back(m);
        keep.push_back(magnitude_keep_count(s.density, n, e.name));
        continue;
      }
      // mergekit: keep = int(density n), top = int(gamma n), bottom = n - keep - top (>= 0);
      // the band [bottom, n - top) of ascending magnitudes survives.
      size_t kept = static_cast<size_t>(std::max(0.0, s.density) * nd);
      size_t top = static_cast<size_t>(s.gamma * nd);
      if (kept + top > n) top = n - kept;
      const size_t bottom = n - kept - top;
      if (kept == 0) continue;  // the band is empty: the mask below drops everything
      keep_cut[m] = owner.size();
      owner.push_back(m);
      keep.push_back(n - bottom);
      if (top > 0) {
        top_cut[m] = owner.size();
        owner.push_back(m);
        keep.push_back(top);
      }
    }
    std::vector<MagnitudeCut> cuts;
    if (!owner.empty()) {
      std::vector<float> b;
      cuts = find_magnitude_cuts(
          n, keep, reader.chunk_elements(),
          [&](size_t begin, size_t len, float* const* outs) {
            b.resize(len);
            reader.read(*e.base, begin, len, b.data());
            for (size_t c = 0; c < owner.size(); ++c) {
              if (c > 0 && owner[c] == owner[c - 1]) {  // the band's second cut: same values
                std::copy(outs[c - 1], outs[c - 1] + len, outs[c]);
                continue;
              }
              float* d = outs[c];
              reader.read(models[owner[c]].input, begin, len, d);
              for (size_t j = 0; j < len; ++j) d[j] = std::fabs(d[j] - b[j]);
            }
          },
          /*need_l1=*/rescale);
    }
    for (size_t m = 0; m < models.size(); ++m) {
      if (!models[m].sparsify) {
        masks.push_back(keep_all_mask());
      } else if (keep_cut[m] == SIZE_MAX) {  // an empty band
        MagnitudeCut none;
        none.threshold = std::numeric_limits<float>::infinity();
        masks.push_back(magnitude_mask(none));
      } else if (!band) {
        masks.push_back(magnitude_mask(cuts[keep_cut[m]]));
        if (rescale) factors[m] = l1_rescale_factor(cuts[keep_cut[m]]);
      } else {
        std::optional<MagnitudeCut> top;
        if (top_cut[m] != SIZE_MAX) top = cuts[top_cut[m]];
        masks.push_back(band_mask(cuts[keep_cut[m]], top));
        if (rescale) {  // the band's L1 is the keep cut's minus the top cut's
          MagnitudeCut kept = cuts[keep_cut[m]];
          if (top) kept.kept_l1 -= top->kept_l1;
          factors[m] = l1_rescale_factor(kept);
        }
      }
    }
    return masks;
  }

  // L1 rescale factors ||d||_1 / ||mask(d)||_1 of the sparsified models, by a pass over the data
  // with fresh masks (random masks draw the same decisions again in the merge).
  void l1_factors(const TensorReader& reader, size_t base, const std::vector<ModelSettings>& models,
                  const PlanEntry& e, uint64_t seed, std::vector<double>& factors) const {
    std::vector<size_t> todo;
    for (size_t m = 0; m < models.size(); ++m) {
      if (models[m].sparsify) todo.push_back(m);
    }
    if (todo.empty()) return;
    std::vector<std::unique_ptr<DeltaMask>> masks;
    for (size_t m : todo) masks.push_back(random_model_mask(e, seed, models[m]));
    const size_t total = reader.numel(), chunk = reader.chunk_elements();
    std::vector<float> b(chunk);
    // Per model: the chunk's task vector and its masked copy.
    std::vector<std::vector<float>> d(todo.size(), std::vector<float>(chunk)),
        k(todo.size(), std::vector<float>(chunk));
    std::vector<const float*> dp(todo.size()), kp(todo.size());
    std::vector<double> full(todo.size(), 0.0), kept(todo.size(), 0.0);
    std::vector<double> s_full(todo.size()), s_kept(todo.size());
    for (size_t begin = 0; begin < total; begin += chunk) {
      const size_t len = std::min(chunk, total - begin);
      reader.read(base, begin, len, b.data());
      for (size_t t = 0; t < todo.size(); ++t) {
        float* __restrict dt = d[t].data();
        reader.read(models[todo[t]].input, begin, len, dt);
        for (size_t j = 0; j < len; ++j) dt[j] -= b[j];
        std::copy(dt, dt + len, k[t].data());
        masks[t]->apply(begin, k[t].data(), len);
        dp[t] = dt;
        kp[t] = k[t].data();
      }
      abs_sums(dp, kp, len, s_full, s_kept);
      for (size_t t = 0; t < todo.size(); ++t) {
        full[t] += s_full[t];
        kept[t] += s_kept[t];
      }
    }
    for (size_t t = 0; t < todo.size(); ++t) {
      factors[todo[t]] = full[t] < 1e-7 || kept[t] < 1e-7 ? 1.0 : full[t] / kept[t];
    }
  }

  GtaConfig config_;
};

}  // namespace

std::unique_ptr<MergeMethod> make_gta(GtaConfig config) {
  return std::make_unique<GeneralizedTaskArithmetic>(std::move(config));
}

}  // namespace amalgam::merge
