// Tiny random-weight checkpoints for the inference tests, and a naive reference forward pass
// (plain loops, fp64) written independently of src/infer from the transformers modelling code's
// definitions: RMSNorm, rotate_half RoPE, GQA with repeat_kv, causal + sliding-window mask
// (kv_idx > q_idx - window), SwiGLU, Mixtral top-k routing with renormalised softmax weights,
// Qwen2MoeSparseMoeBlock (top-k softmax weights, renormalised only with norm_topk_prob, plus
// sigmoid(shared_expert_gate(x)) * shared_expert(x); mlp_only_layers dense).
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "tensor/tensor.h"
#include "test_util.h"

namespace amalgam::testing {

// n token ids drawn uniformly from [0, vocab).
inline std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

struct TinySpec {
  std::string arch = "llama";  // llama | mistral | qwen2 | mixtral | qwen2_moe
  int64_t D = 64, H = 4, Hkv = 2, d = 16, I = 96, V = 128, L = 2;
  int64_t window = 0;             // sliding_window (0 = none)
  int64_t max_window_layers = 0;  // qwen2: first layer that slides
  bool tied = false;
  bool biases = false;         // q/k/v biases (qwen2 always)
  int64_t E = 0, K = 0;        // mixtral / qwen2_moe experts
  bool fused_experts = false;  // transformers-5 stacked expert tensors
  // qwen2_moe: I is moe_intermediate_size; Is the shared expert's, Idense that of the dense
  // mlp_only_layers (intermediate_size).
  int64_t Is = 0, Idense = 0;
  bool norm_topk = false;
  std::vector<int64_t> mlp_only_layers;
  tensor::DType dtype = tensor::DType::kBF16;
  double theta = 10000.0;
  double eps = 1e-5;
  uint32_t seed = 1;
};

using Mat = std::vector<double>;  // row-major

struct RefLayer {
  Mat attn_norm, ffn_norm, wq, wk, wv, wo, bq, bk, bv, bo, gate, up, down, router;
  std::vector<Mat> w1, w2, w3;  // experts
  Mat sg, su, sd, shared_gate;  // qwen2_moe shared expert
  bool sparse = false;
};

struct RefModel {
  TinySpec spec;
  Mat embed, lm_head, norm;
  std::vector<RefLayer> layers;
};

// Random values rounded to the stored dtype, so the reference sees exactly the stored weights.
class TinyWriter {
 public:
  TinyWriter(const TinySpec& s) : spec_(s), rng_(s.seed) {}

  Mat add(const std::string& name, tensor::Shape shape, double scale, double offset = 0.0) {
    tensor::Tensor t(shape);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (float& v : t.data) v = static_cast<float>(offset + scale * dist(rng_));
    std::vector<uint8_t> bytes = tensor::encode(t, spec_.dtype);
    tensor::Tensor back(shape);
    tensor::to_f32(spec_.dtype, bytes.data(), back.data.data(), back.data.size());
    names_.push_back(name);
    shapes_.push_back(shape);
    bytes_.push_back(std::move(bytes));
    return Mat(back.data.begin(), back.data.end());
  }

  void write(const std::filesystem::path& dir) {
    std::vector<io::OutputTensorSpec> specs;
    for (size_t i = 0; i < names_.size(); ++i)
      specs.push_back({names_[i], spec_.dtype, shapes_[i]});
    io::SafetensorsWriter w(dir, specs, 1ull << 40);
    for (size_t i = 0; i < names_.size(); ++i) w.write(i, bytes_[i].data(), bytes_[i].size());
    w.finish();
  }

 private:
  TinySpec spec_;
  std::mt19937 rng_;
  std::vector<std::string> names_;
  std::vector<tensor::Shape> shapes_;
  std::vector<std::vector<uint8_t>> bytes_;
};

inline nlohmann::ordered_json tiny_config(const TinySpec& s) {
  static const std::map<std::string, std::string> kArch = {{"llama", "LlamaForCausalLM"},
                                                           {"mistral", "MistralForCausalLM"},
                                                           {"qwen2", "Qwen2ForCausalLM"},
                                                           {"mixtral", "MixtralForCausalLM"},
                                                           {"qwen2_moe", "Qwen2MoeForCausalLM"}};
  nlohmann::ordered_json j;
  j["architectures"] = {kArch.at(s.arch)};
  j["model_type"] = s.arch;
  j["hidden_size"] = s.D;
  j["num_hidden_layers"] = s.L;
  j["num_attention_heads"] = s.H;
  j["num_key_value_heads"] = s.Hkv;
  j["head_dim"] = s.d;
  j["intermediate_size"] = s.I;
  j["vocab_size"] = s.V;
  j["max_position_embeddings"] = 512;
  j["rms_norm_eps"] = s.eps;
  j["rope_theta"] = s.theta;
  j["tie_word_embeddings"] = s.tied;
  j["torch_dtype"] = std::string(tensor::torch_dtype_name(s.dtype));
  if (s.arch == "llama") j["attention_bias"] = s.biases;
  if (s.window > 0)
    j["sliding_window"] = s.window;
  else if (s.arch == "mistral" || s.arch == "mixtral")
    j["sliding_window"] = nullptr;
  if (s.arch == "qwen2") {
    j["use_sliding_window"] = s.window > 0;
    if (s.window == 0) j["sliding_window"] = 4096;  // present but disabled, as in Qwen2 releases
    j["max_window_layers"] = s.max_window_layers;
  }
  if (s.arch == "mixtral") {
    j["num_local_experts"] = s.E;
    j["num_experts_per_tok"] = s.K;
  }
  if (s.arch == "qwen2_moe") {
    j["intermediate_size"] = s.Idense > 0 ? s.Idense : s.I;
    j["use_sliding_window"] = false;
    j["sliding_window"] = 4096;
    j["num_experts"] = s.E;
    j["num_experts_per_tok"] = s.K;
    j["moe_intermediate_size"] = s.I;
    j["shared_expert_intermediate_size"] = s.Is;
    j["norm_topk_prob"] = s.norm_topk;
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = s.mlp_only_layers;
  }
  return j;
}

// Writes config.json + model.safetensors into dir; returns the reference copy of the weights.
inline RefModel write_tiny_model(const std::filesystem::path& dir, const TinySpec& s) {
  std::filesystem::create_directories(dir);
  TinyWriter w(s);
  RefModel m;
  m.spec = s;
  const double in_scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  m.embed = w.add("model.embed_tokens.weight", {s.V, s.D}, 1.0);
  const bool qkv_bias = s.biases || s.arch == "qwen2" || s.arch == "qwen2_moe";
  for (int64_t l = 0; l < s.L; ++l) {
    RefLayer r;
    const std::string p = fmt::format("model.layers.{}", l);
    r.attn_norm = w.add(p + ".input_layernorm.weight", {s.D}, 0.1, 1.0);
    r.wq = w.add(p + ".self_attn.q_proj.weight", {s.H * s.d, s.D}, 2.0 * in_scale);
    r.wk = w.add(p + ".self_attn.k_proj.weight", {s.Hkv * s.d, s.D}, 2.0 * in_scale);
    r.wv = w.add(p + ".self_attn.v_proj.weight", {s.Hkv * s.d, s.D}, in_scale);
    if (qkv_bias) {
      r.bq = w.add(p + ".self_attn.q_proj.bias", {s.H * s.d}, 0.5);
      r.bk = w.add(p + ".self_attn.k_proj.bias", {s.Hkv * s.d}, 0.5);
      r.bv = w.add(p + ".self_attn.v_proj.bias", {s.Hkv * s.d}, 0.5);
    }
    r.wo = w.add(p + ".self_attn.o_proj.weight", {s.D, s.H * s.d}, in_scale);
    if (s.biases && s.arch == "llama") r.bo = w.add(p + ".self_attn.o_proj.bias", {s.D}, 0.5);
    r.ffn_norm = w.add(p + ".post_attention_layernorm.weight", {s.D}, 0.1, 1.0);
    const double down_scale = 1.0 / std::sqrt(static_cast<double>(s.I));
    const bool mlp_only =
        std::find(s.mlp_only_layers.begin(), s.mlp_only_layers.end(), l) != s.mlp_only_layers.end();
    if (s.arch == "qwen2_moe" && !mlp_only) {
      r.sparse = true;
      r.router = w.add(p + ".mlp.gate.weight", {s.E, s.D}, 2.0 * in_scale);
      for (int64_t e = 0; e < s.E; ++e) {
        const std::string x = fmt::format("{}.mlp.experts.{}", p, e);
        r.w1.push_back(w.add(x + ".gate_proj.weight", {s.I, s.D}, in_scale));
        r.w3.push_back(w.add(x + ".up_proj.weight", {s.I, s.D}, in_scale));
        r.w2.push_back(w.add(x + ".down_proj.weight", {s.D, s.I}, down_scale));
      }
      const double shared_down = 1.0 / std::sqrt(static_cast<double>(s.Is));
      r.sg = w.add(p + ".mlp.shared_expert.gate_proj.weight", {s.Is, s.D}, in_scale);
      r.su = w.add(p + ".mlp.shared_expert.up_proj.weight", {s.Is, s.D}, in_scale);
      r.sd = w.add(p + ".mlp.shared_expert.down_proj.weight", {s.D, s.Is}, shared_down);
      r.shared_gate = w.add(p + ".mlp.shared_expert_gate.weight", {1, s.D}, 2.0 * in_scale);
    } else if (s.arch == "qwen2_moe") {
      const int64_t Id = s.Idense > 0 ? s.Idense : s.I;
      r.gate = w.add(p + ".mlp.gate_proj.weight", {Id, s.D}, in_scale);
      r.up = w.add(p + ".mlp.up_proj.weight", {Id, s.D}, in_scale);
      r.down = w.add(p + ".mlp.down_proj.weight", {s.D, Id}, 1.0 / std::sqrt(double(Id)));
    } else if (s.arch == "mixtral" && s.fused_experts) {
      r.router = w.add(p + ".mlp.gate.weight", {s.E, s.D}, 2.0 * in_scale);
      Mat gu = w.add(p + ".mlp.experts.gate_up_proj", {s.E, 2 * s.I, s.D}, in_scale);
      Mat dn = w.add(p + ".mlp.experts.down_proj", {s.E, s.D, s.I}, down_scale);
      for (int64_t e = 0; e < s.E; ++e) {
        const size_t gsz = static_cast<size_t>(s.I * s.D);
        auto base = gu.begin() + static_cast<std::ptrdiff_t>(e * 2 * gsz);
        r.w1.emplace_back(base, base + static_cast<std::ptrdiff_t>(gsz));
        r.w3.emplace_back(base + static_cast<std::ptrdiff_t>(gsz),
                          base + static_cast<std::ptrdiff_t>(2 * gsz));
        auto dbase = dn.begin() + static_cast<std::ptrdiff_t>(e * gsz);
        r.w2.emplace_back(dbase, dbase + static_cast<std::ptrdiff_t>(gsz));
      }
    } else if (s.arch == "mixtral") {
      const std::string m = p + ".block_sparse_moe";
      r.router = w.add(m + ".gate.weight", {s.E, s.D}, 2.0 * in_scale);
      for (int64_t e = 0; e < s.E; ++e) {
        const std::string x = fmt::format("{}.experts.{}", m, e);
        r.w1.push_back(w.add(x + ".w1.weight", {s.I, s.D}, in_scale));
        r.w2.push_back(w.add(x + ".w2.weight", {s.D, s.I}, down_scale));
        r.w3.push_back(w.add(x + ".w3.weight", {s.I, s.D}, in_scale));
      }
    } else {
      r.gate = w.add(p + ".mlp.gate_proj.weight", {s.I, s.D}, in_scale);
      r.up = w.add(p + ".mlp.up_proj.weight", {s.I, s.D}, in_scale);
      r.down = w.add(p + ".mlp.down_proj.weight", {s.D, s.I}, down_scale);
    }
    m.layers.push_back(std::move(r));
  }
  m.norm = w.add("model.norm.weight", {s.D}, 0.1, 1.0);
  if (s.tied) {
    m.lm_head = m.embed;
  } else {
    m.lm_head = w.add("lm_head.weight", {s.V, s.D}, in_scale);
  }
  w.write(dir);
  write_file(dir / "config.json", tiny_config(s).dump(2));
  return m;
}

// y (rows) = W (rows, cols) . x (cols) [+ b]
inline std::vector<double> ref_linear(const Mat& W, const std::vector<double>& x, int64_t rows,
                                      const Mat& b = {}) {
  const size_t cols = x.size();
  std::vector<double> y(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double acc = b.empty() ? 0.0 : b[r];
    for (size_t c = 0; c < cols; ++c) acc += W[r * cols + c] * x[c];
    y[r] = acc;
  }
  return y;
}

inline std::vector<double> ref_rms_norm(const std::vector<double>& x, const Mat& w, double eps) {
  double ss = 0.0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * scale;
  return y;
}

// rotate_half RoPE with the default frequencies base^(-2i/d).
inline void ref_rope(std::vector<double>& x, int64_t heads, int64_t d, int64_t pos, double base) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < d / 2; ++i) {
      const double angle = static_cast<double>(pos) * std::pow(base, -2.0 * i / d);
      const double a = x[h * d + i], b = x[h * d + i + d / 2];
      x[h * d + i] = a * std::cos(angle) - b * std::sin(angle);
      x[h * d + i + d / 2] = b * std::cos(angle) + a * std::sin(angle);
    }
  }
}

inline double silu(double v) { return v / (1.0 + std::exp(-v)); }

inline std::vector<double> ref_swiglu(const Mat& g, const Mat& u, const Mat& dn,
                                      const std::vector<double>& h, int64_t I, int64_t D) {
  std::vector<double> a = ref_linear(g, h, I), b = ref_linear(u, h, I);
  for (int64_t i = 0; i < I; ++i) a[i] = silu(a[i]) * b[i];
  return ref_linear(dn, a, D);
}

struct RefOutput {
  std::vector<std::vector<double>> logits;  // (n, V)
  std::vector<std::vector<double>> hidden;  // (L + 1, D) for the last token
};

// One sequence at positions 0..n-1. stream_scales (per layer, optional) multiply the residual
// stream entering each layer, as a data-flow merge's path does. causal false: every token
// attends to every token (bidirectional, LS-unLLaMA), within |t - j| < window when it slides.
inline RefOutput ref_forward(const RefModel& m, const std::vector<int32_t>& ids,
                             const std::vector<double>& stream_scales = {}, bool causal = true) {
  const TinySpec& s = m.spec;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t D = s.D, qd = s.H * s.d, kvd = s.Hkv * s.d;
  std::vector<std::vector<double>> x(n);
  for (int64_t t = 0; t < n; ++t)
    x[t].assign(m.embed.begin() + ids[t] * D, m.embed.begin() + (ids[t] + 1) * D);
  RefOutput out;
  for (int64_t l = 0; l < s.L; ++l) {
    const RefLayer& r = m.layers[l];
    if (!stream_scales.empty()) {
      for (auto& row : x) {
        for (double& v : row) v *= stream_scales[l];
      }
    }
    out.hidden.push_back(x[n - 1]);
    const bool slides = s.window > 0 && (s.arch != "qwen2" || l >= s.max_window_layers);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      auto h = ref_rms_norm(x[t], r.attn_norm, s.eps);
      q[t] = ref_linear(r.wq, h, qd, r.bq);
      k[t] = ref_linear(r.wk, h, kvd, r.bk);
      v[t] = ref_linear(r.wv, h, kvd, r.bv);
      ref_rope(q[t], s.H, s.d, t, s.theta);
      ref_rope(k[t], s.Hkv, s.d, t, s.theta);
    }
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> att(qd, 0.0);
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t g = h / (s.H / s.Hkv);  // repeat_kv: consecutive heads share a kv head
        std::vector<double> w(n, 0.0);
        double mx = -1e300;
        const int64_t last = causal ? t : n - 1;
        for (int64_t j = 0; j <= last; ++j) {
          if (slides && !(j > t - s.window && j < t + s.window)) continue;
          double dot = 0.0;
          for (int64_t i = 0; i < s.d; ++i) dot += q[t][h * s.d + i] * k[j][g * s.d + i];
          w[j] = dot / std::sqrt(static_cast<double>(s.d));
          mx = std::max(mx, w[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j <= last; ++j) {
          if (slides && !(j > t - s.window && j < t + s.window)) {
            w[j] = 0.0;
            continue;
          }
          w[j] = std::exp(w[j] - mx);
          sum += w[j];
        }
        for (int64_t j = 0; j <= last; ++j) {
          for (int64_t i = 0; i < s.d; ++i) att[h * s.d + i] += w[j] / sum * v[j][g * s.d + i];
        }
      }
      auto o = ref_linear(r.wo, att, D, r.bo);
      for (int64_t i = 0; i < D; ++i) x[t][i] += o[i];
      auto h2 = ref_rms_norm(x[t], r.ffn_norm, s.eps);
      std::vector<double> f(D, 0.0);
      if (s.arch == "mixtral" || r.sparse) {
        auto z = ref_linear(r.router, h2, s.E);
        double mx2 = *std::max_element(z.begin(), z.end()), total = 0.0;
        std::vector<double> p(s.E);
        for (int64_t e = 0; e < s.E; ++e) total += p[e] = std::exp(z[e] - mx2);
        for (auto& pe : p) pe /= total;
        std::vector<int64_t> chosen;
        std::vector<bool> taken(s.E, false);
        for (int64_t k2 = 0; k2 < s.K; ++k2) {
          int64_t best = -1;
          for (int64_t e = 0; e < s.E; ++e) {
            if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
          }
          taken[best] = true;
          chosen.push_back(best);
        }
        double top = 0.0;
        for (int64_t e : chosen) top += p[e];
        if (s.arch == "qwen2_moe" && !s.norm_topk) top = 1.0;
        for (int64_t e : chosen) {
          auto y = ref_swiglu(r.w1[e], r.w3[e], r.w2[e], h2, s.I, D);
          for (int64_t i = 0; i < D; ++i) f[i] += p[e] / top * y[i];
        }
        if (s.arch == "qwen2_moe") {
          const double g = 1.0 / (1.0 + std::exp(-ref_linear(r.shared_gate, h2, 1)[0]));
          auto y = ref_swiglu(r.sg, r.su, r.sd, h2, s.Is, D);
          for (int64_t i = 0; i < D; ++i) f[i] += g * y[i];
        }
      } else {
        const int64_t Id = s.arch == "qwen2_moe" && s.Idense > 0 ? s.Idense : s.I;
        f = ref_swiglu(r.gate, r.up, r.down, h2, Id, D);
      }
      for (int64_t i = 0; i < D; ++i) x[t][i] += f[i];
    }
  }
  out.hidden.push_back(ref_rms_norm(x[n - 1], m.norm, s.eps));
  for (int64_t t = 0; t < n; ++t) {
    out.logits.push_back(ref_linear(m.lm_head, ref_rms_norm(x[t], m.norm, s.eps), s.V));
  }
  return out;
}

}  // namespace amalgam::testing
