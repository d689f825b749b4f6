#include "align/permutation.h"

#include <algorithm>
#include <numeric>
#include <random>

namespace amalgam::align {

namespace {

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

std::vector<int64_t> shuffled(int64_t n, std::mt19937_64& rng) {
  std::vector<int64_t> v = iota(n);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

}  // namespace

ModelPermutation identity_permutation(const LlamaParams& m) {
  ModelPermutation p;
  p.residual = iota(m.hidden());
  const int64_t group = m.heads() / m.kv_heads();
  for (int64_t l = 0; l < m.layers(); ++l) {
    LayerPermutation lp;
    lp.mlp = iota(m.intermediate());
    lp.kv = iota(m.kv_heads());
    lp.query.assign(m.kv_heads(), iota(group));
    lp.value.assign(m.kv_heads(), iota(m.head_dim()));
    p.layers.push_back(std::move(lp));
  }
  return p;
}

ModelPermutation random_permutation(const LlamaParams& m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  ModelPermutation p = identity_permutation(m);
  p.residual = shuffled(m.hidden(), rng);
  for (auto& lp : p.layers) {
    lp.mlp = shuffled(m.intermediate(), rng);
    lp.kv = shuffled(m.kv_heads(), rng);
    for (auto& q : lp.query) q = shuffled(static_cast<int64_t>(q.size()), rng);
    for (auto& v : lp.value) v = shuffled(static_cast<int64_t>(v.size()), rng);
  }
  return p;
}

AxisMaps attention_maps(const LlamaParams& m, const LayerPermutation& p) {
  const int64_t kv = m.kv_heads(), group = m.heads() / kv, hd = m.head_dim();
  AxisMaps a;
  a.q_rows.resize(m.heads() * hd);
  a.o_cols.resize(m.heads() * hd);
  a.k_rows.resize(kv * hd);
  a.v_rows.resize(kv * hd);
  for (int64_t g = 0; g < kv; ++g) {
    const int64_t b = p.kv[g];
    for (int64_t t = 0; t < hd; ++t) {
      a.k_rows[g * hd + t] = b * hd + t;
      a.v_rows[g * hd + t] = b * hd + p.value[b][t];
    }
    for (int64_t j = 0; j < group; ++j) {
      const int64_t src_head = b * group + p.query[b][j], dst_head = g * group + j;
      for (int64_t t = 0; t < hd; ++t) {
        a.q_rows[dst_head * hd + t] = src_head * hd + t;
        a.o_cols[dst_head * hd + t] = src_head * hd + p.value[b][t];
      }
    }
  }
  return a;
}

tensor::Tensor gather(const tensor::Tensor& w, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& cols) {
  if (w.shape.size() == 1) {
    const std::vector<int64_t>& map = rows.empty() ? cols : rows;
    if (map.empty()) return w;
    tensor::Tensor out({static_cast<int64_t>(map.size())});
    for (size_t i = 0; i < map.size(); ++i) out.data[i] = w.data[map[i]];
    return out;
  }
  const int64_t r_in = w.shape[0], c_in = w.shape[1];
  const int64_t r_out = rows.empty() ? r_in : static_cast<int64_t>(rows.size());
  const int64_t c_out = cols.empty() ? c_in : static_cast<int64_t>(cols.size());
  tensor::Tensor out({r_out, c_out});
  for (int64_t r = 0; r < r_out; ++r) {
    const float* src = w.data.data() + (rows.empty() ? r : rows[r]) * c_in;
    float* dst = out.data.data() + r * c_out;
    if (cols.empty()) {
      std::copy(src, src + c_in, dst);
    } else {
      for (int64_t c = 0; c < c_out; ++c) dst[c] = src[cols[c]];
    }
  }
  return out;
}

LlamaParams apply_permutation(const LlamaParams& b, const ModelPermutation& p) {
  LlamaParams out;
  out.dir = b.dir;
  out.config = b.config;
  out.dtype = b.dtype;
  const std::vector<int64_t>& res = p.residual;
  out.tensors["model.embed_tokens.weight"] = gather(b.at("model.embed_tokens.weight"), {}, res);
  out.tensors["model.norm.weight"] = gather(b.at("model.norm.weight"), res, {});
  if (!b.tied()) out.tensors["lm_head.weight"] = gather(b.at("lm_head.weight"), {}, res);
  for (int64_t l = 0; l < b.layers(); ++l) {
    const LayerPermutation& lp = p.layers[l];
    const AxisMaps a = attention_maps(b, lp);
    auto put = [&](const std::string& suffix, const std::vector<int64_t>& rows,
                   const std::vector<int64_t>& cols) {
      const std::string name = layer_tensor(l, suffix);
      out.tensors[name] = gather(b.at(name), rows, cols);
    };
    put("input_layernorm.weight", res, {});
    put("post_attention_layernorm.weight", res, {});
    put("self_attn.q_proj.weight", a.q_rows, res);
    put("self_attn.k_proj.weight", a.k_rows, res);
    put("self_attn.v_proj.weight", a.v_rows, res);
    put("self_attn.o_proj.weight", res, a.o_cols);
    put("mlp.gate_proj.weight", lp.mlp, res);
    put("mlp.up_proj.weight", lp.mlp, res);
    put("mlp.down_proj.weight", res, lp.mlp);
  }
  return out;
}

}  // namespace amalgam::align
