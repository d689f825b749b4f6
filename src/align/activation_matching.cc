#include "align/activation_matching.h"

#include <cblas.h>
#include <fmt/format.h>

#include <cmath>
#include <memory>

#include "align/activations.h"
#include "align/lap.h"
#include "core/error.h"
#include "core/progress.h"
#include "infer/dump.h"

namespace amalgam::align {

namespace {

// Cross statistics of one feature space: G = Z_A^T Z_B and the squared norm of every feature.
struct Cross {
  int64_t n = 0;
  std::vector<double> g, sq_a, sq_b;
  std::vector<float> tmp;

  explicit Cross(int64_t size)
      : n(size), g(size * size, 0.0), sq_a(size, 0.0), sq_b(size, 0.0), tmp(size * size) {}

  void add(const infer::DumpTensor& za, const infer::DumpTensor& zb) {
    AMALGAM_CHECK(za.cols == n && zb.cols == n && za.rows == zb.rows,
                  "activation matching: intermediate of {}x{} / {}x{}, expected {} columns",
                  za.rows, za.cols, zb.rows, zb.cols, n);
    const int64_t t = za.rows;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, t, 1.0f, za.data.data(), n,
                zb.data.data(), n, 0.0f, tmp.data(), n);
    for (int64_t i = 0; i < n * n; ++i) g[i] += tmp[i];
    for (int64_t r = 0; r < t; ++r) {
      for (int64_t i = 0; i < n; ++i) {
        sq_a[i] += static_cast<double>(za.data[r * n + i]) * za.data[r * n + i];
        sq_b[i] += static_cast<double>(zb.data[r * n + i]) * zb.data[r * n + i];
      }
    }
  }
  // Squared distance between feature i of A and feature j of B.
  double dist2(int64_t i, int64_t j) const {
    return std::max(0.0, sq_a[i] + sq_b[j] - 2.0 * g[i * n + j]);
  }
  std::vector<double> similarity() const {
    std::vector<double> s(n * n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) s[i * n + j] = -std::sqrt(dist2(i, j));
    }
    return s;
  }
};

struct LayerStats {
  Cross act, q, k, v, attn;
};

std::vector<double> matched_scores(const std::vector<double>& s, int64_t n,
                                   const std::vector<int64_t>& perm) {
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = s[i * n + perm[i]];
  return out;
}

}  // namespace

ActivationMatch activation_matching(const LlamaParams& a, const LlamaParams& b,
                                    const std::vector<std::vector<int32_t>>& rows,
                                    const ActivationMatchingOptions& options) {
  check_same_shape(a, b);
  const int64_t D = a.hidden(), I = a.intermediate(), H = a.heads(), KV = a.kv_heads();
  const int64_t hd = a.head_dim(), G = H / KV, L = a.layers();
  const auto model_a = make_model(a);
  const auto model_b = make_model(b);
  Cross residual(D);
  std::vector<LayerStats> layers;
  for (int64_t l = 0; l < L; ++l) {
    layers.push_back({Cross(I), Cross(H * hd), Cross(KV * hd), Cross(KV * hd), Cross(H * hd)});
  }
  const std::vector<std::string> selectors = {"embd", "ffn_inp", "l_out", "ffn_act",
                                              "q",    "k",       "v",     "attn"};
  std::unique_ptr<core::ProgressBar> bar;
  if (options.progress) {
    bar = std::make_unique<core::ProgressBar>("activation matching", rows.size(), "rows");
  }
  for (size_t first = 0; first < rows.size(); first += options.batch_rows) {
    const size_t count = std::min(rows.size() - first, static_cast<size_t>(options.batch_rows));
    const infer::Dumper da = dump_rows(*model_a, rows, first, count, selectors);
    const infer::Dumper db = dump_rows(*model_b, rows, first, count, selectors);
    auto both = [&](Cross& c, const std::string& name) {
      c.add(dumped(da, name), dumped(db, name));
    };
    both(residual, "embd");
    for (int64_t l = 0; l < L; ++l) {
      both(residual, infer::Dumper::name("ffn_inp", l));
      both(residual, infer::Dumper::name("l_out", l));
      both(layers[l].act, infer::Dumper::name("ffn_act", l));
      both(layers[l].q, infer::Dumper::name("q", l));
      both(layers[l].k, infer::Dumper::name("k", l));
      both(layers[l].v, infer::Dumper::name("v", l));
      both(layers[l].attn, infer::Dumper::name("attn", l));
    }
    if (bar) bar->advance(count);
  }
  if (bar) bar->finish();

  ActivationMatch m;
  m.permutation = identity_permutation(a);
  {
    const std::vector<double> s = residual.similarity();
    m.permutation.residual = solve_lap_max(s, D);
    m.residual_score = matched_scores(s, D, m.permutation.residual);
    for (int64_t i = 0; i < D; ++i) {
      m.residual_ms_a += residual.sq_a[i];
      m.residual_ms_b += residual.sq_b[i];
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    LayerStats& st = layers[l];
    LayerPermutation& lp = m.permutation.layers[l];
    const std::vector<double> s = st.act.similarity();
    lp.mlp = solve_lap_max(s, I);
    m.mlp_score.push_back(matched_scores(s, I, lp.mlp));
    // Every pair (x of A, y of B) of KV heads: query heads, then value dims, then the distance.
    std::vector<std::vector<int64_t>> qperm(KV * KV), vperm(KV * KV);
    std::vector<double> kv_sim(KV * KV);
    for (int64_t x = 0; x < KV; ++x) {
      for (int64_t y = 0; y < KV; ++y) {
        std::vector<double> sq(G * G);
        for (int64_t i = 0; i < G; ++i) {
          for (int64_t j = 0; j < G; ++j) {
            double d2 = 0;
            for (int64_t t = 0; t < hd; ++t) {
              d2 += st.q.dist2((x * G + i) * hd + t, (y * G + j) * hd + t);
            }
            sq[i * G + j] = -std::sqrt(d2);
          }
        }
        const std::vector<int64_t> qp = solve_lap_max(sq, G);
        std::vector<double> sv(hd * hd);
        for (int64_t t = 0; t < hd; ++t) {
          for (int64_t u = 0; u < hd; ++u) {
            double d2 = st.v.dist2(x * hd + t, y * hd + u);
            for (int64_t i = 0; i < G; ++i) {
              d2 += st.attn.dist2((x * G + i) * hd + t, (y * G + qp[i]) * hd + u);
            }
            sv[t * hd + u] = -std::sqrt(d2);
          }
        }
        const std::vector<int64_t> vp = solve_lap_max(sv, hd);
        double d2 = 0;
        for (int64_t t = 0; t < hd; ++t) {
          d2 += st.k.dist2(x * hd + t, y * hd + t) + st.v.dist2(x * hd + t, y * hd + vp[t]);
          for (int64_t i = 0; i < G; ++i) {
            d2 += st.q.dist2((x * G + i) * hd + t, (y * G + qp[i]) * hd + t);
            d2 += st.attn.dist2((x * G + i) * hd + t, (y * G + qp[i]) * hd + vp[t]);
          }
        }
        kv_sim[x * KV + y] = -std::sqrt(d2);
        qperm[x * KV + y] = qp;
        vperm[x * KV + y] = vp;
      }
    }
    lp.kv = solve_lap_max(kv_sim, KV);
    m.kv_score.push_back(matched_scores(kv_sim, KV, lp.kv));
    for (int64_t x = 0; x < KV; ++x) {
      const int64_t y = lp.kv[x];
      lp.query[y] = qperm[x * KV + y];
      lp.value[y] = vperm[x * KV + y];
    }
  }
  return m;
}

}  // namespace amalgam::align
