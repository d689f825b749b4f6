#include "align/pleas.h"

#include <cblas.h>
#include <fmt/format.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>

#include "align/activations.h"
#include "align/permutation.h"
#include "core/error.h"
#include "core/progress.h"

namespace amalgam::align {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Which units of a group are merged and which kept separate; features are laid out as
// [merged units; separate units from A; separate units from B], `unit` features per unit.
struct UnitLayout {
  int64_t unit = 1;
  std::vector<int64_t> merged, separate;

  int64_t m() const { return static_cast<int64_t>(merged.size()); }
  int64_t s() const { return static_cast<int64_t>(separate.size()); }
  int64_t original() const { return (m() + s()) * unit; }
  int64_t width() const { return (m() + 2 * s()) * unit; }

  UnitLayout with_unit(int64_t u) const { return {u, merged, separate}; }

  // out (width) from a, b (original), for one token.
  void combine(const float* a, const float* b, float* out) const {
    float* o = out;
    for (int64_t u : merged) {
      for (int64_t k = 0; k < unit; ++k) *o++ = 0.5f * (a[u * unit + k] + b[u * unit + k]);
    }
    for (int64_t u : separate) o = std::copy(a + u * unit, a + (u + 1) * unit, o);
    for (int64_t u : separate) o = std::copy(b + u * unit, b + (u + 1) * unit, o);
  }
};

UnitLayout choose_layout(const std::vector<double>& score, double width) {
  const int64_t n = static_cast<int64_t>(score.size());
  const int64_t s = separate_units(n, width);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return score[x] < score[y]; });
  UnitLayout layout;
  layout.separate.assign(order.begin(), order.begin() + s);
  layout.merged.assign(order.begin() + s, order.end());
  std::sort(layout.separate.begin(), layout.separate.end());
  std::sort(layout.merged.begin(), layout.merged.end());
  return layout;
}

// Moments of one input space: C = X X^T (merged features), CA = X_A X^T, CB = X_B X^T.
struct Space {
  UnitLayout layout;
  std::vector<double> c, ca, cb;
  std::vector<float> x, tmp;

  explicit Space(UnitLayout l) : layout(std::move(l)) {
    const int64_t n = layout.original(), w = layout.width();
    c.assign(w * w, 0.0);
    ca.assign(n * w, 0.0);
    cb.assign(n * w, 0.0);
  }

  // za, zb: (t, n) inputs of A and B for the same tokens; the merged features are their
  // combination.
  void add(const float* za, const float* zb, int64_t t) {
    const int64_t n = layout.original(), w = layout.width();
    x.resize(t * w);
    for (int64_t r = 0; r < t; ++r) layout.combine(za + r * n, zb + r * n, x.data() + r * w);
    add_merged(za, zb, x.data(), t);
  }

  // The same with the merged features given: xm (t, width), e.g. the merged model's own inputs.
  void add_merged(const float* za, const float* zb, const float* xm, int64_t t) {
    const int64_t n = layout.original(), w = layout.width();
    tmp.resize(std::max(w * w, n * w));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, w, t, 1.0f, xm, w, xm, w, 0.0f,
                tmp.data(), w);
    for (int64_t i = 0; i < w * w; ++i) c[i] += tmp[i];
    for (auto [z, acc] : {std::pair{za, &ca}, std::pair{zb, &cb}}) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, w, t, 1.0f, z, n, xm, w, 0.0f,
                  tmp.data(), w);
      for (int64_t i = 0; i < n * w; ++i) (*acc)[i] += tmp[i];
    }
  }
};

// x (t, d) -> x / rms(x) per row (RMSNorm without its weight, which is folded downstream).
std::vector<float> normalized(const infer::DumpTensor& x, double eps) {
  std::vector<float> out(x.data.size());
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* row = x.data.data() + r * x.cols;
    double ss = 0;
    for (int64_t i = 0; i < x.cols; ++i) ss += static_cast<double>(row[i]) * row[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / x.cols + eps));
    for (int64_t i = 0; i < x.cols; ++i) out[r * x.cols + i] = row[i] * inv;
  }
  return out;
}

// w (o, n) with column j scaled by g[j].
tensor::Tensor fold_columns(const tensor::Tensor& w, const tensor::Tensor& g) {
  tensor::Tensor out = w;
  const int64_t o = w.shape[0], n = w.shape[1];
  for (int64_t r = 0; r < o; ++r) {
    for (int64_t j = 0; j < n; ++j) out.data[r * n + j] *= g.data[j];
  }
  return out;
}

// Closed-form ridge fit of one linear layer of the merged model (see pleas.h). wa, wb: (o, n)
// folded weights of A and aligned B; out_layout over the o output features (nullptr: every
// output row is the average of A's and B's, as for lm_head).
tensor::Tensor fit_linear(const tensor::Tensor& wa, const tensor::Tensor& wb, const Space& in,
                          const UnitLayout* out_layout, double ridge, const std::string& what) {
  const int64_t o = wa.shape[0], n = in.layout.original(), w = in.layout.width();
  // Y X^T rows for A and B: (o, w) = W (o, n) . C_A (n, w).
  std::vector<double> wad(wa.data.begin(), wa.data.end()), wbd(wb.data.begin(), wb.data.end());
  std::vector<double> ya(o * w), yb(o * w);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, o, w, n, 1.0, wad.data(), n, in.ca.data(),
              w, 0.0, ya.data(), w);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, o, w, n, 1.0, wbd.data(), n, in.cb.data(),
              w, 0.0, yb.data(), w);
  // Input features each output block may read: merged rows all, A-only rows [merged, sepA],
  // B-only rows [merged, sepB].
  const int64_t iu = in.layout.unit, im = in.layout.m() * iu, is = in.layout.s() * iu;
  std::vector<int64_t> all(w), with_a(im + is), with_b;
  std::iota(all.begin(), all.end(), 0);
  std::iota(with_a.begin(), with_a.end(), 0);
  for (int64_t j = 0; j < im; ++j) with_b.push_back(j);
  for (int64_t j = im + is; j < w; ++j) with_b.push_back(j);
  const std::vector<int64_t>* block_cols[3] = {&all, &with_a, &with_b};
  const int64_t ou = out_layout ? out_layout->unit : 1;
  const int64_t o_width = out_layout ? out_layout->width() : o;
  tensor::Tensor result({o_width, w});
  std::vector<std::vector<int64_t>> block_rows(3);  // A/B output row of each block row
  if (out_layout) {
    for (int64_t u : out_layout->merged) {
      for (int64_t k = 0; k < ou; ++k) block_rows[0].push_back(u * ou + k);
    }
    for (int64_t u : out_layout->separate) {
      for (int64_t k = 0; k < ou; ++k) block_rows[1].push_back(u * ou + k);
    }
    block_rows[2] = block_rows[1];
  } else {
    block_rows[0].resize(o);
    std::iota(block_rows[0].begin(), block_rows[0].end(), 0);
  }
  int64_t out_row = 0;
  for (int b = 0; b < 3; ++b) {
    const auto& rows = block_rows[b];
    if (rows.empty()) continue;
    const auto& cols = *block_cols[b];
    const int64_t k = static_cast<int64_t>(cols.size());
    Eigen::MatrixXd gram(k, k);
    double diag = 0;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) gram(i, j) = in.c[cols[i] * w + cols[j]];
      diag += gram(i, i);
    }
    const double lambda = ridge * std::max(diag / std::max<int64_t>(k, 1), 1e-30);
    gram.diagonal().array() += lambda;
    Eigen::LLT<Eigen::MatrixXd> llt(gram);
    if (llt.info() != Eigen::Success) {
      fail(
          "pleas: the least squares of {} is singular even with ridge {}; give more text or a "
          "larger --ridge",
          what, ridge);
    }
    Eigen::MatrixXd rhs(k, static_cast<int64_t>(rows.size()));
    for (size_t r = 0; r < rows.size(); ++r) {
      const int64_t src = rows[r];
      for (int64_t i = 0; i < k; ++i) {
        const double va = ya[src * w + cols[i]], vb = yb[src * w + cols[i]];
        rhs(i, r) = b == 0 ? 0.5 * (va + vb) : b == 1 ? va : vb;
      }
    }
    const Eigen::MatrixXd sol = llt.solve(rhs);  // (k, rows) = W_block^T
    for (size_t r = 0; r < rows.size(); ++r, ++out_row) {
      float* dst = result.data.data() + out_row * w;
      for (int64_t i = 0; i < k; ++i) dst[cols[i]] = static_cast<float>(sol(i, r));
    }
  }
  return result;
}

// The sequential variant: layer after layer, each projection is refitted on the inputs the merged
// model itself produces there (its earlier layers already refitted), with the same targets (the
// combined outputs of A and B on their own inputs). Errors of earlier layers are then corrected
// rather than compounded. Costs one forward pass of the three models per projection group.
void refit_sequentially(const LlamaParams& a, const LlamaParams& bp,
                        const std::vector<std::vector<int32_t>>& rows, const UnitLayout& residual,
                        const std::vector<UnitLayout>& mlp, const std::vector<UnitLayout>& kv,
                        const PleasOptions& options, LlamaParams& out) {
  const int64_t L = a.layers(), G = a.heads() / a.kv_heads(), hd = a.head_dim();
  const double eps = a.config.rms_norm_eps;
  const auto model_a = make_model(a);
  const auto model_b = make_model(bp);
  std::unique_ptr<core::ProgressBar> bar;
  if (options.progress) {
    bar = std::make_unique<core::ProgressBar>("pleas: sequential refit", L * 4 + 1, "stages");
  }
  // Statistics of input `name` (normalised when it is the residual stream) with the merged
  // model's own features.
  auto statistics = [&](const UnitLayout& layout, const std::string& name, bool normed) {
    Space space(layout);
    const auto model_m = make_model(out);
    const std::vector<std::string> selectors = {name};
    for (size_t first = 0; first < rows.size(); first += options.batch_rows) {
      const size_t count = std::min(rows.size() - first, static_cast<size_t>(options.batch_rows));
      const infer::DumpTensor xa = dumped(dump_rows(*model_a, rows, first, count, selectors), name);
      const infer::DumpTensor xb = dumped(dump_rows(*model_b, rows, first, count, selectors), name);
      const infer::DumpTensor xm = dumped(dump_rows(*model_m, rows, first, count, selectors), name);
      if (normed) {
        space.add_merged(normalized(xa, eps).data(), normalized(xb, eps).data(),
                         normalized(xm, eps).data(), xa.rows);
      } else {
        space.add_merged(xa.data.data(), xb.data.data(), xm.data.data(), xa.rows);
      }
    }
    if (bar) bar->advance(1);
    return space;
  };
  for (int64_t l = 0; l < L; ++l) {
    auto refit = [&](const char* w, const char* norm, const Space& in, const UnitLayout& out_l) {
      const std::string name = layer_tensor(l, w);
      auto folded = [&](const LlamaParams& m) {
        return norm ? fold_columns(m.at(name), m.at(layer_tensor(l, norm))) : m.at(name);
      };
      out.tensors[name] = fit_linear(folded(a), folded(bp), in, &out_l, options.ridge,
                                     fmt::format("layer {} {}", l, w));
    };
    const char* attn_norm = "input_layernorm.weight";
    const char* ffn_norm = "post_attention_layernorm.weight";
    {
      const Space in =
          statistics(residual, l == 0 ? "embd" : infer::Dumper::name("l_out", l - 1), true);
      refit("self_attn.q_proj.weight", attn_norm, in, kv[l].with_unit(G * hd));
      refit("self_attn.k_proj.weight", attn_norm, in, kv[l].with_unit(hd));
      refit("self_attn.v_proj.weight", attn_norm, in, kv[l].with_unit(hd));
    }
    refit("self_attn.o_proj.weight", nullptr,
          statistics(kv[l].with_unit(G * hd), infer::Dumper::name("attn", l), false), residual);
    {
      const Space in = statistics(residual, infer::Dumper::name("ffn_inp", l), true);
      refit("mlp.gate_proj.weight", ffn_norm, in, mlp[l]);
      refit("mlp.up_proj.weight", ffn_norm, in, mlp[l]);
    }
    refit("mlp.down_proj.weight", nullptr,
          statistics(mlp[l], infer::Dumper::name("ffn_act", l), false), residual);
  }
  out.tensors["lm_head.weight"] =
      fit_linear(fold_columns(a.at("lm_head.weight"), a.at("model.norm.weight")),
                 fold_columns(bp.at("lm_head.weight"), bp.at("model.norm.weight")),
                 statistics(residual, infer::Dumper::name("l_out", L - 1), true), nullptr,
                 options.ridge, "lm_head");
  if (bar) bar->finish();
}

}  // namespace

void scale_residual(LlamaParams& m, double c) {
  const float f = static_cast<float>(c);
  auto scale = [&](const std::string& name) {
    for (float& v : m.at(name).data) v *= f;
  };
  scale("model.embed_tokens.weight");
  for (int64_t l = 0; l < m.layers(); ++l) {
    scale(layer_tensor(l, "self_attn.o_proj.weight"));
    scale(layer_tensor(l, "mlp.down_proj.weight"));
  }
}

int64_t separate_units(int64_t n, double width) {
  return std::clamp<int64_t>(std::llround((width - 1.0) * static_cast<double>(n)), 0, n);
}

LlamaParams pleas_merge(const LlamaParams& a, const LlamaParams& b,
                        const std::vector<std::vector<int32_t>>& rows, const PleasOptions& options,
                        PleasReport* report) {
  if (!(options.width >= 1.0 && options.width <= 2.0)) {
    fail("pleas: --width must be in [1, 2], got {}", options.width);
  }
  if (!(options.ridge >= 0.0)) fail("pleas: --ridge must be >= 0, got {}", options.ridge);
  check_same_shape(a, b);
  if (a.tied()) {
    fail("pleas: {} ties lm_head to the embedding; the fitted lm_head needs its own tensor",
         a.dir.string());
  }
  const int64_t L = a.layers(), KV = a.kv_heads(), G = a.heads() / KV, hd = a.head_dim();
  const double eps = a.config.rms_norm_eps;
  PleasReport rep;
  auto t0 = Clock::now();
  ActivationMatchingOptions am_options;
  am_options.batch_rows = options.batch_rows;
  am_options.progress = options.progress;
  const ActivationMatch match = activation_matching(a, b, rows, am_options);
  LlamaParams bp = apply_permutation(b, match.permutation);
  if (options.match_scale && match.residual_ms_b > 0) {
    rep.residual_scale = std::sqrt(match.residual_ms_a / match.residual_ms_b);
    scale_residual(bp, rep.residual_scale);
  }
  rep.match_seconds = since(t0);

  const UnitLayout residual = choose_layout(match.residual_score, options.width);
  std::vector<UnitLayout> mlp, kv;
  for (int64_t l = 0; l < L; ++l) {
    mlp.push_back(choose_layout(match.mlp_score[l], options.width));
    kv.push_back(choose_layout(match.kv_score[l], options.width));
  }
  int64_t tokens = 0;
  for (const auto& r : rows) tokens += static_cast<int64_t>(r.size());
  int64_t widest = residual.width();
  for (int64_t l = 0; l < L; ++l) {
    widest = std::max({widest, mlp[l].width(), kv[l].with_unit(G * hd).width()});
  }
  if (tokens < widest) {
    fail(
        "pleas: {} calibration tokens for least-squares problems with up to {} inputs; give at "
        "least {} tokens (more text or --rows)",
        tokens, widest, widest);
  }

  // Moments of every input space.
  struct LayerSpaces {
    Space attn_in, o_in, ffn_in, down_in;
  };
  std::vector<LayerSpaces> spaces;
  for (int64_t l = 0; l < L; ++l) {
    spaces.push_back(
        {Space(residual), Space(kv[l].with_unit(G * hd)), Space(residual), Space(mlp[l])});
  }
  Space final_in(residual);
  t0 = Clock::now();
  {
    const auto model_a = make_model(a);
    const auto model_b = make_model(bp);
    const std::vector<std::string> selectors = {"embd", "l_out", "ffn_inp", "attn", "ffn_act"};
    std::unique_ptr<core::ProgressBar> bar;
    if (options.progress) {
      bar = std::make_unique<core::ProgressBar>("pleas: layer statistics", rows.size(), "rows");
    }
    for (size_t first = 0; first < rows.size(); first += options.batch_rows) {
      const size_t count = std::min(rows.size() - first, static_cast<size_t>(options.batch_rows));
      const infer::Dumper da = dump_rows(*model_a, rows, first, count, selectors);
      const infer::Dumper db = dump_rows(*model_b, rows, first, count, selectors);
      auto add_normed = [&](Space& s, const std::string& name) {
        const infer::DumpTensor& xa = dumped(da, name);
        s.add(normalized(xa, eps).data(), normalized(dumped(db, name), eps).data(), xa.rows);
      };
      auto add_raw = [&](Space& s, const std::string& name) {
        const infer::DumpTensor& xa = dumped(da, name);
        s.add(xa.data.data(), dumped(db, name).data.data(), xa.rows);
      };
      for (int64_t l = 0; l < L; ++l) {
        add_normed(spaces[l].attn_in, l == 0 ? "embd" : infer::Dumper::name("l_out", l - 1));
        add_raw(spaces[l].o_in, infer::Dumper::name("attn", l));
        add_normed(spaces[l].ffn_in, infer::Dumper::name("ffn_inp", l));
        add_raw(spaces[l].down_in, infer::Dumper::name("ffn_act", l));
      }
      add_normed(final_in, infer::Dumper::name("l_out", L - 1));
      if (bar) bar->advance(count);
    }
    if (bar) bar->finish();
  }
  rep.accumulate_seconds = since(t0);

  t0 = Clock::now();
  LlamaParams out;
  out.dir = a.dir;
  out.dtype = a.dtype;
  const int64_t D2 = residual.width();
  {
    const tensor::Tensor& ea = a.at("model.embed_tokens.weight");
    const tensor::Tensor& eb = bp.at("model.embed_tokens.weight");
    const int64_t V = ea.shape[0], D = ea.shape[1];
    tensor::Tensor e({V, D2});
    for (int64_t v = 0; v < V; ++v) {
      residual.combine(&ea.data[v * D], &eb.data[v * D], &e.data[v * D2]);
    }
    out.tensors["model.embed_tokens.weight"] = std::move(e);
  }
  tensor::Tensor ones({D2});
  std::fill(ones.data.begin(), ones.data.end(), 1.0f);
  out.tensors["model.norm.weight"] = ones;
  // Every layer has the same widths: the unit counts depend on n and width alone.
  rep.hidden = D2;
  rep.intermediate = mlp[0].width();
  rep.kv_heads = kv[0].m() + 2 * kv[0].s();
  rep.heads = rep.kv_heads * G;
  rep.tokens = tokens;
  out.config = a.config;
  out.config.hidden_size = rep.hidden;
  out.config.intermediate_size = rep.intermediate;
  out.config.num_kv_heads = rep.kv_heads;
  out.config.num_heads = rep.heads;
  auto& raw = out.config.raw;
  raw["hidden_size"] = rep.hidden;
  raw["intermediate_size"] = rep.intermediate;
  raw["num_key_value_heads"] = rep.kv_heads;
  raw["num_attention_heads"] = rep.heads;
  raw["head_dim"] = hd;
  std::unique_ptr<core::ProgressBar> bar;
  if (options.progress) {
    bar = std::make_unique<core::ProgressBar>("pleas: least squares", L * 7 + 1, "layers");
  }
  for (int64_t l = 0; l < L; ++l) {
    auto folded = [&](const LlamaParams& m, const char* w, const char* norm) {
      const tensor::Tensor& t = m.at(layer_tensor(l, w));
      return norm ? fold_columns(t, m.at(layer_tensor(l, norm))) : t;
    };
    auto fit = [&](const char* w, const char* norm, const Space& in, const UnitLayout& out_l) {
      out.tensors[layer_tensor(l, w)] =
          fit_linear(folded(a, w, norm), folded(bp, w, norm), in, &out_l, options.ridge,
                     fmt::format("layer {} {}", l, w));
      if (bar) bar->advance(1);
    };
    const char* attn_norm = "input_layernorm.weight";
    const char* ffn_norm = "post_attention_layernorm.weight";
    fit("self_attn.q_proj.weight", attn_norm, spaces[l].attn_in, kv[l].with_unit(G * hd));
    fit("self_attn.k_proj.weight", attn_norm, spaces[l].attn_in, kv[l].with_unit(hd));
    fit("self_attn.v_proj.weight", attn_norm, spaces[l].attn_in, kv[l].with_unit(hd));
    fit("self_attn.o_proj.weight", nullptr, spaces[l].o_in, residual);
    fit("mlp.gate_proj.weight", ffn_norm, spaces[l].ffn_in, mlp[l]);
    fit("mlp.up_proj.weight", ffn_norm, spaces[l].ffn_in, mlp[l]);
    fit("mlp.down_proj.weight", nullptr, spaces[l].down_in, residual);
    out.tensors[layer_tensor(l, attn_norm)] = ones;
    out.tensors[layer_tensor(l, ffn_norm)] = ones;
  }
  out.tensors["lm_head.weight"] =
      fit_linear(fold_columns(a.at("lm_head.weight"), a.at("model.norm.weight")),
                 fold_columns(bp.at("lm_head.weight"), bp.at("model.norm.weight")), final_in,
                 nullptr, options.ridge, "lm_head");
  if (bar) {
    bar->advance(1);
    bar->finish();
  }
  rep.solve_seconds = since(t0);
  if (options.sequential) {
    t0 = Clock::now();
    refit_sequentially(a, bp, rows, residual, mlp, kv, options, out);
    rep.sequential_seconds = since(t0);
  }
  if (report) *report = rep;
  return out;
}

}  // namespace amalgam::align
