#include "align/weight_matching.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "align/lap.h"
#include "core/log.h"
#include "core/progress.h"

namespace amalgam::align {

namespace {

enum class Kind { kResidual, kMlp, kKv, kQuery, kValue };

struct Group {
  Kind kind;
  int64_t layer = 0;
  int64_t head = 0;  // B's KV head (kQuery, kValue)
};

tensor::Tensor transpose(const tensor::Tensor& w) {
  const int64_t r = w.shape[0], c = w.shape[1];
  tensor::Tensor t({c, r});
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) t.data[j * r + i] = w.data[i * c + j];
  }
  return t;
}

// C (n x n, fp64) += A_rows . B_rows^T where both are (n, f) row-major fp32 (or their transposes
// when `transposed`: (f, n)).
void add_gram(std::vector<double>& c, int64_t n, const tensor::Tensor& a, const tensor::Tensor& b,
              bool transposed) {
  std::vector<float> tmp(n * n, 0.0f);
  if (a.shape.size() == 1) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) tmp[i * n + j] = a.data[i] * b.data[j];
    }
  } else if (!transposed) {
    const int64_t f = a.shape[1];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, f, 1.0f, a.data.data(), f,
                b.data.data(), f, 0.0f, tmp.data(), n);
  } else {
    const int64_t f = a.shape[0];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, f, 1.0f, a.data.data(), n,
                b.data.data(), n, 0.0f, tmp.data(), n);
  }
  for (int64_t i = 0; i < n * n; ++i) c[i] += tmp[i];
}

double dot_rows(const tensor::Tensor& a, int64_t ra, const tensor::Tensor& b, int64_t rb,
                int64_t rows) {
  const int64_t cols = a.shape[1];
  const float* x = a.data.data() + ra * cols;
  const float* y = b.data.data() + rb * cols;
  double s = 0;
  for (int64_t i = 0; i < rows * cols; ++i) s += static_cast<double>(x[i]) * y[i];
  return s;
}

// The attention tensors of layer l, B's permuted by `p` (A: p = identity); o is transposed so that
// every unit is a block of rows.
struct Attention {
  tensor::Tensor q, k, v, o_t;
};

Attention attention_of(const LlamaParams& m, int64_t l, const ModelPermutation& p) {
  const AxisMaps maps = attention_maps(m, p.layers[l]);
  const auto& res = p.residual;
  return {gather(m.at(layer_tensor(l, "self_attn.q_proj.weight")), maps.q_rows, res),
          gather(m.at(layer_tensor(l, "self_attn.k_proj.weight")), maps.k_rows, res),
          gather(m.at(layer_tensor(l, "self_attn.v_proj.weight")), maps.v_rows, res),
          transpose(gather(m.at(layer_tensor(l, "self_attn.o_proj.weight")), res, maps.o_cols))};
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

class Matcher {
 public:
  Matcher(const LlamaParams& a, const LlamaParams& b, const ModelPermutation& identity)
      : a_(a), b_(b), identity_(identity) {}

  // Score matrix of `g` with every other group at p; size n.
  std::vector<double> scores(const Group& g, const ModelPermutation& p, int64_t& n) const {
    switch (g.kind) {
      case Kind::kResidual:
        return residual(p, n);
      case Kind::kMlp:
        return mlp(g.layer, p, n);
      default:
        return attention(g, p, n);
    }
  }

  std::vector<int64_t>& slot(const Group& g, ModelPermutation& p) const {
    switch (g.kind) {
      case Kind::kResidual:
        return p.residual;
      case Kind::kMlp:
        return p.layers[g.layer].mlp;
      case Kind::kKv:
        return p.layers[g.layer].kv;
      case Kind::kQuery:
        return p.layers[g.layer].query[g.head];
      default:
        return p.layers[g.layer].value[g.head];
    }
  }

 private:
  std::vector<double> residual(const ModelPermutation& p, int64_t& n) const {
    n = a_.hidden();
    std::vector<double> c(n * n, 0.0);
    const std::vector<int64_t> none;
    // Tensors whose columns are the residual stream: B's rows permuted by their own groups.
    auto by_cols = [&](const std::string& name, const std::vector<int64_t>& rows) {
      add_gram(c, n, a_.at(name), gather(b_.at(name), rows, none), true);
    };
    auto by_rows = [&](const std::string& name, const std::vector<int64_t>& cols) {
      add_gram(c, n, a_.at(name), gather(b_.at(name), none, cols), false);
    };
    by_cols("model.embed_tokens.weight", none);
    if (!a_.tied()) by_cols("lm_head.weight", none);
    by_rows("model.norm.weight", none);
    for (int64_t l = 0; l < a_.layers(); ++l) {
      const AxisMaps maps = attention_maps(b_, p.layers[l]);
      by_rows(layer_tensor(l, "input_layernorm.weight"), none);
      by_rows(layer_tensor(l, "post_attention_layernorm.weight"), none);
      by_cols(layer_tensor(l, "self_attn.q_proj.weight"), maps.q_rows);
      by_cols(layer_tensor(l, "self_attn.k_proj.weight"), maps.k_rows);
      by_cols(layer_tensor(l, "self_attn.v_proj.weight"), maps.v_rows);
      by_rows(layer_tensor(l, "self_attn.o_proj.weight"), maps.o_cols);
      by_cols(layer_tensor(l, "mlp.gate_proj.weight"), p.layers[l].mlp);
      by_cols(layer_tensor(l, "mlp.up_proj.weight"), p.layers[l].mlp);
      by_rows(layer_tensor(l, "mlp.down_proj.weight"), p.layers[l].mlp);
    }
    return c;
  }

  std::vector<double> mlp(int64_t l, const ModelPermutation& p, int64_t& n) const {
    n = a_.intermediate();
    std::vector<double> c(n * n, 0.0);
    const std::vector<int64_t> none;
    for (const char* s : {"mlp.gate_proj.weight", "mlp.up_proj.weight"}) {
      const std::string name = layer_tensor(l, s);
      add_gram(c, n, a_.at(name), gather(b_.at(name), none, p.residual), false);
    }
    const std::string down = layer_tensor(l, "mlp.down_proj.weight");
    add_gram(c, n, a_.at(down), gather(b_.at(down), p.residual, none), true);
    return c;
  }

  std::vector<double> attention(const Group& g, const ModelPermutation& p, int64_t& n) const {
    const int64_t l = g.layer, kv = a_.kv_heads(), group = a_.heads() / kv;
    const int64_t hd = a_.head_dim();
    // B with this group at the identity, so B's unit u sits at slot u of the group.
    ModelPermutation q = p;
    if (g.kind == Kind::kKv) q.layers[l].kv = iota(kv);
    if (g.kind == Kind::kQuery) q.layers[l].query[g.head] = iota(group);
    if (g.kind == Kind::kValue) q.layers[l].value[g.head] = iota(hd);
    ModelPermutation qa = identity_;
    const Attention at_a = attention_of(a_, l, qa);
    if (g.kind != Kind::kKv) q.layers[l].kv = iota(kv);  // B's head g.head at slot g.head
    const Attention at_b = attention_of(b_, l, q);
    if (g.kind == Kind::kKv) {
      n = kv;
      std::vector<double> c(n * n, 0.0);
      for (int64_t x = 0; x < n; ++x) {
        for (int64_t y = 0; y < n; ++y) {
          c[x * n + y] = dot_rows(at_a.q, x * group * hd, at_b.q, y * group * hd, group * hd) +
                         dot_rows(at_a.k, x * hd, at_b.k, y * hd, hd) +
                         dot_rows(at_a.v, x * hd, at_b.v, y * hd, hd) +
                         dot_rows(at_a.o_t, x * group * hd, at_b.o_t, y * group * hd, group * hd);
        }
      }
      return c;
    }
    // A's slot holding B's head g.head.
    const auto& kv_perm = p.layers[l].kv;
    const int64_t slot = std::find(kv_perm.begin(), kv_perm.end(), g.head) - kv_perm.begin();
    const int64_t bh = g.head;
    if (g.kind == Kind::kQuery) {
      n = group;
      std::vector<double> c(n * n, 0.0);
      for (int64_t x = 0; x < n; ++x) {
        for (int64_t y = 0; y < n; ++y) {
          const int64_t ha = slot * group + x, hb = bh * group + y;
          c[x * n + y] = dot_rows(at_a.q, ha * hd, at_b.q, hb * hd, hd) +
                         dot_rows(at_a.o_t, ha * hd, at_b.o_t, hb * hd, hd);
        }
      }
      return c;
    }
    n = hd;
    std::vector<double> c(n * n, 0.0);
    for (int64_t x = 0; x < n; ++x) {
      for (int64_t y = 0; y < n; ++y) {
        double s = dot_rows(at_a.v, slot * hd + x, at_b.v, bh * hd + y, 1);
        for (int64_t j = 0; j < group; ++j) {
          s += dot_rows(at_a.o_t, (slot * group + j) * hd + x, at_b.o_t, (bh * group + j) * hd + y,
                        1);
        }
        c[x * n + y] = s;
      }
    }
    return c;
  }

  const LlamaParams& a_;
  const LlamaParams& b_;
  const ModelPermutation& identity_;
};

std::vector<Group> all_groups(const LlamaParams& m) {
  std::vector<Group> groups = {{Kind::kResidual}};
  for (int64_t l = 0; l < m.layers(); ++l) {
    groups.push_back({Kind::kMlp, l});
    groups.push_back({Kind::kKv, l});
    for (int64_t h = 0; h < m.kv_heads(); ++h) {
      if (m.heads() / m.kv_heads() > 1) groups.push_back({Kind::kQuery, l, h});
      groups.push_back({Kind::kValue, l, h});
    }
  }
  return groups;
}

}  // namespace

double weight_objective(const LlamaParams& a, const LlamaParams& b, const ModelPermutation& p) {
  const LlamaParams bp = apply_permutation(b, p);
  double s = 0;
  for (const auto& [name, t] : a.tensors) {
    const auto& u = bp.at(name).data;
    for (size_t i = 0; i < t.data.size(); ++i) s += static_cast<double>(t.data[i]) * u[i];
  }
  return s;
}

ModelPermutation weight_matching(const LlamaParams& a, const LlamaParams& b,
                                 const WeightMatchingOptions& options, MatchingStats* stats) {
  check_same_shape(a, b);
  const ModelPermutation identity = identity_permutation(a);
  ModelPermutation p = identity;
  Matcher matcher(a, b, identity);
  std::vector<Group> groups = all_groups(a);
  std::mt19937_64 rng(options.seed);
  if (stats) stats->objective_before = weight_objective(a, b, p);
  int64_t round = 0;
  for (; round < options.max_rounds; ++round) {
    std::shuffle(groups.begin(), groups.end(), rng);
    std::unique_ptr<core::ProgressBar> bar;
    if (options.progress) {
      bar = std::make_unique<core::ProgressBar>(fmt::format("weight matching, round {}", round + 1),
                                                groups.size(), "groups");
    }
    bool improved = false;
    for (const Group& g : groups) {
      int64_t n = 0;
      const std::vector<double> c = matcher.scores(g, p, n);
      std::vector<int64_t>& current = matcher.slot(g, p);
      const double before = assignment_score(c, n, current);
      std::vector<int64_t> best = solve_lap_max(c, n);
      const double after = assignment_score(c, n, best);
      // Relative: the scores are sums of many fp32 products, so ties may differ in the last bits.
      if (after > before + 1e-12 * std::max(1.0, std::abs(before))) {
        current = std::move(best);
        improved = true;
      }
      if (bar) bar->advance(1);
    }
    if (bar) bar->finish();
    if (!improved) {
      ++round;
      break;
    }
  }
  if (stats) {
    stats->rounds = round;
    stats->objective_after = weight_objective(a, b, p);
  }
  return p;
}

}  // namespace amalgam::align
