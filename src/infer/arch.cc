#include "infer/arch.h"

#include <fmt/format.h>

#include <optional>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "io/config_check.h"

namespace amalgam::infer {

namespace {

using arch::hf_name;
using arch::Role;

class Resolver {
 public:
  Resolver(const WeightMap& weights, const QuantizedMap& quantized)
      : weights_(weights), quantized_(quantized) {}

  bool has(const std::string& name) const {
    return weights_.count(name) != 0 || quantized_.count(name) != 0;
  }

  // The shape of a tensor of either map; nullopt when absent.
  std::optional<tensor::Shape> shape_of(const std::string& name) const {
    if (auto it = weights_.find(name); it != weights_.end()) return it->second.shape;
    if (auto it = quantized_.find(name); it != quantized_.end()) {
      return tensor::Shape{it->second.rows, it->second.cols};
    }
    return std::nullopt;
  }

  const tensor::TensorView& get(const std::string& name, const tensor::Shape& shape) {
    auto it = weights_.find(name);
    if (it == weights_.end())
      fail("missing tensor '{}' (expected shape {})", name, tensor::shape_string(shape));
    const tensor::TensorView& v = it->second;
    if (v.shape != shape) {
      fail("tensor '{}' has shape {}, expected {} from config.json", name,
           tensor::shape_string(v.shape), tensor::shape_string(shape));
    }
    if (!tensor::is_float_dtype(v.dtype)) {
      fail("tensor '{}' has dtype {}; inference reads F32, BF16 or F16", name,
           tensor::dtype_name(v.dtype));
    }
    if (v.data == nullptr && v.numel() > 0) fail("tensor '{}' has no data", name);
    used_.insert(name);
    return v;
  }

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) {
    if (auto it = quantized_.find(name); it != quantized_.end()) {
      const gguf::QuantizedMatrix& q = it->second;
      if (q.rows != rows || q.cols != cols) {
        fail("tensor '{}' has shape {}, expected {} from config.json", name,
             tensor::shape_string({q.rows, q.cols}), tensor::shape_string({rows, cols}));
      }
      used_.insert(name);
      return quantized_matrix(q);
    }
    return weight_matrix(get(name, {rows, cols}), name);
  }

  std::vector<float> vector(const std::string& name, int64_t n) {
    const tensor::TensorView& v = get(name, {n});
    std::vector<float> out(static_cast<size_t>(n));
    tensor::to_f32(v.dtype, v.data, out.data(), out.size());
    return out;
  }

  // Projection with an optional bias; `bias_required` turns a missing bias into an error.
  Linear linear(Role weight, Role bias, int64_t layer, int64_t rows, int64_t cols,
                bool bias_required) {
    Linear l;
    l.w = matrix(hf_name(weight, layer), rows, cols);
    const std::string bias_name = hf_name(bias, layer);
    if (bias_required || has(bias_name)) l.bias = vector(bias_name, rows);
    return l;
  }

  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& [name, view] : weights_) {
      if (!used_.count(name)) out.push_back(name);
    }
    for (const auto& [name, q] : quantized_) {
      if (!used_.count(name)) out.push_back(name);
    }
    return out;
  }

 private:
  const WeightMap& weights_;
  const QuantizedMap& quantized_;
  std::set<std::string> used_;
};

void resolve_moe(Resolver& r, const io::ModelConfig& c, const ArchInfo& arch, int64_t l,
                 LayerWeights& layer) {
  const int64_t D = c.hidden_size, E = c.num_experts;
  const int64_t I = arch.shared_expert && c.moe_intermediate_size > 0 ? c.moe_intermediate_size
                                                                      : c.intermediate_size;
  const char* experts_key = arch.shared_expert ? "num_experts" : "num_local_experts";
  AMALGAM_CHECK(E > 0 && c.experts_per_token > 0 && c.experts_per_token <= E,
                "config.json: MoE needs {0} > 0 and 0 < num_experts_per_tok <= {0} (got {1} and "
                "{2})",
                experts_key, E, c.experts_per_token);
  AMALGAM_CHECK(I > 0, "config.json: the experts' intermediate size must be positive");
  layer.experts.resize(static_cast<size_t>(E));
  layer.norm_topk = arch.shared_expert ? c.norm_topk_prob : true;
  if (arch.shared_expert) {
    const int64_t Is = c.shared_expert_intermediate_size;
    AMALGAM_CHECK(Is > 0, "config.json: shared_expert_intermediate_size must be positive, got {}",
                  Is);
    layer.has_shared = true;
    layer.shared.gate = r.matrix(hf_name(Role::kSharedExpertGate, l), Is, D);
    layer.shared.up = r.matrix(hf_name(Role::kSharedExpertUp, l), Is, D);
    layer.shared.down = r.matrix(hf_name(Role::kSharedExpertDown, l), D, Is);
    layer.shared_gate = r.matrix(hf_name(Role::kSharedExpertRouter, l), 1, D);
  }
  const std::string gu_name = hf_name(Role::kFusedExpertsGateUp, l);
  if (r.has(gu_name)) {
    // transformers 5: experts stacked, gate and up concatenated along the output dimension.
    layer.router = r.matrix(hf_name(Role::kFusedRouter, l), E, D);
    const std::string down_name = hf_name(Role::kFusedExpertsDown, l);
    const tensor::TensorView& gu = r.get(gu_name, {E, 2 * I, D});
    const tensor::TensorView& down = r.get(down_name, {E, D, I});
    for (int64_t e = 0; e < E; ++e) {
      WeightMatrix both = weight_matrix_of_stack(gu, e, gu_name);
      layer.experts[e].gate = both.slice_rows(0, I);
      layer.experts[e].up = both.slice_rows(I, I);
      layer.experts[e].down = weight_matrix_of_stack(down, e, down_name);
    }
  } else if (arch.shared_expert) {
    // Qwen2-MoE, transformers 4: the dense MLP's names under mlp.experts.N.
    layer.router = r.matrix(hf_name(Role::kFusedRouter, l), E, D);
    for (int64_t e = 0; e < E; ++e) {
      layer.experts[e].gate = r.matrix(hf_name(Role::kMlpExpertGate, l, e), I, D);
      layer.experts[e].up = r.matrix(hf_name(Role::kMlpExpertUp, l, e), I, D);
      layer.experts[e].down = r.matrix(hf_name(Role::kMlpExpertDown, l, e), D, I);
    }
  } else {
    layer.router = r.matrix(hf_name(Role::kRouter, l), E, D);
    for (int64_t e = 0; e < E; ++e) {
      layer.experts[e].gate = r.matrix(hf_name(Role::kExpertGate, l, e), I, D);
      layer.experts[e].up = r.matrix(hf_name(Role::kExpertUp, l, e), I, D);
      layer.experts[e].down = r.matrix(hf_name(Role::kExpertDown, l, e), D, I);
    }
  }
}

}  // namespace

const ArchInfo& find_arch(const io::ModelConfig& config) {
  if (const ArchInfo* a = arch::find_arch_spec(config.architecture, config.model_type)) return *a;
  std::string known;
  for (const auto& a : arch::arch_specs()) known += fmt::format(" {}", a.architecture);
  fail(
      "config.json: architecture '{}' (model_type '{}') is not supported by the inference "
      "engine; supported:{}",
      config.architecture, config.model_type, known);
}

std::vector<int64_t> layer_windows(const io::ModelConfig& config) {
  std::vector<int64_t> windows(static_cast<size_t>(config.num_layers), 0);
  if (!config.sliding_window) return windows;
  const int64_t window = *config.sliding_window;
  AMALGAM_CHECK(window > 0, "config.json: sliding_window must be positive, got {}", window);
  const auto& raw = config.raw;
  if (raw.contains("layer_types") && raw["layer_types"].is_array()) {
    const auto& types = raw["layer_types"];
    AMALGAM_CHECK(static_cast<int64_t>(types.size()) == config.num_layers,
                  "config.json: layer_types has {} entries for {} layers", types.size(),
                  config.num_layers);
    for (size_t i = 0; i < types.size(); ++i) {
      AMALGAM_CHECK(types[i].is_string(), "config.json: layer_types[{}] must be a string", i);
      std::string t = types[i];
      AMALGAM_CHECK(t == "sliding_attention" || t == "full_attention",
                    "config.json: layer_types[{}] = '{}' is not supported", i, t);
      if (t == "sliding_attention") windows[i] = window;
    }
    return windows;
  }
  int64_t first = 0;
  if (config.model_type == "qwen2" || config.model_type == "qwen2_moe") {
    // Qwen2 slides only in layers >= max_window_layers (transformers default 28).
    first = 28;
    if (raw.contains("max_window_layers") && raw["max_window_layers"].is_number_integer()) {
      first = raw["max_window_layers"].get<int64_t>();
    }
  }
  for (int64_t i = first; i < config.num_layers; ++i) windows[static_cast<size_t>(i)] = window;
  return windows;
}

ModelWeights resolve_weights(const io::ModelConfig& c, const ArchInfo& arch,
                             const WeightMap& weights, const QuantizedMap& quantized) {
  Resolver r(weights, quantized);
  // Before anything is sized by a count from config.json.
  io::TensorShapes shapes;
  for (const auto& [name, view] : weights) shapes.names.push_back(name);
  for (const auto& [name, q] : quantized) shapes.names.push_back(name);
  shapes.shape = [&r](const std::string& n) { return *r.shape_of(n); };
  io::check_config_against_tensors(c, shapes, "config.json");
  AMALGAM_CHECK(c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 &&
                    c.head_dim > 0 && c.vocab_size > 0,
                "config.json: hidden_size, num_hidden_layers, num_attention_heads, "
                "num_key_value_heads, head_dim and vocab_size must be positive");
  AMALGAM_CHECK(c.num_heads % c.num_kv_heads == 0,
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_heads, c.num_kv_heads);
  bool any_dense = !arch.moe;
  for (int64_t l = 0; arch.moe && c.num_experts > 0 && l < c.num_layers; ++l) {
    any_dense = any_dense || !io::is_sparse_layer(c, l);
  }
  AMALGAM_CHECK(!any_dense || c.intermediate_size > 0,
                "config.json: intermediate_size must be positive");
  const int64_t D = c.hidden_size, H = c.num_heads, Hkv = c.num_kv_heads, d = c.head_dim;
  const int64_t I = c.intermediate_size;
  ModelWeights m;
  const std::string embed_name = hf_name(Role::kTokenEmbd);
  const std::string head_name = hf_name(Role::kOutput);
  // (V, D) matrices whose V is checked against config.json elsewhere.
  auto vocab_matrix = [&](const std::string& name) {
    const auto shape = r.shape_of(name);
    if (!shape) fail("missing tensor '{}'", name);
    AMALGAM_CHECK(shape->size() == 2 && (*shape)[1] == D, "tensor '{}' has shape {}, expected [V, {}]",
                  name, tensor::shape_string(*shape), D);
    return r.matrix(name, (*shape)[0], D);
  };
  m.embed = vocab_matrix(embed_name);
  m.final_norm = r.vector(hf_name(Role::kOutputNorm), D);
  if (c.tie_word_embeddings || !r.has(head_name)) {
    if (!c.tie_word_embeddings) {
      fail("missing tensor '{}' (config.json has tie_word_embeddings false)", head_name);
    }
    m.lm_head = m.embed;
  } else {
    m.lm_head = vocab_matrix(head_name);
  }
  const std::vector<int64_t> windows = layer_windows(c);
  const bool attn_bias = arch.qkv_bias_required || c.attention_bias;
  const bool o_bias = c.attention_bias && !arch.qkv_bias_required;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights layer;
    layer.window = windows[static_cast<size_t>(l)];
    layer.attn_norm = r.vector(hf_name(Role::kAttnNorm, l), D);
    layer.ffn_norm = r.vector(hf_name(Role::kFfnNorm, l), D);
    layer.q = r.linear(Role::kAttnQ, Role::kAttnQBias, l, H * d, D, attn_bias);
    layer.k = r.linear(Role::kAttnK, Role::kAttnKBias, l, Hkv * d, D, attn_bias);
    layer.v = r.linear(Role::kAttnV, Role::kAttnVBias, l, Hkv * d, D, attn_bias);
    layer.o = r.linear(Role::kAttnOut, Role::kAttnOutBias, l, D, H * d, o_bias);
    // num_experts <= 0 goes to resolve_moe, which names the key.
    if (arch.moe && (c.num_experts <= 0 || io::is_sparse_layer(c, l))) {
      resolve_moe(r, c, arch, l, layer);
    } else {
      layer.gate = r.linear(Role::kFfnGate, Role::kFfnGateBias, l, I, D, false);
      layer.up = r.linear(Role::kFfnUp, Role::kFfnUpBias, l, I, D, false);
      layer.down = r.linear(Role::kFfnDown, Role::kFfnDownBias, l, D, I, false);
    }
    m.layers.push_back(std::move(layer));
  }
  for (const auto& name : r.unused()) core::debug("inference ignores tensor '{}'", name);
  return m;
}

}  // namespace amalgam::infer
