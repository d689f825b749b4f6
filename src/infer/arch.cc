#include "infer/arch.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"
#include "core/log.h"
#include "io/config_check.h"

namespace amalgam::infer {

namespace {

constexpr ArchInfo kArchitectures[] = {
    {"LlamaForCausalLM", "llama", false, false},
    {"MistralForCausalLM", "mistral", false, false},
    {"Qwen2ForCausalLM", "qwen2", true, false},
    {"MixtralForCausalLM", "mixtral", false, true},
};

class Resolver {
 public:
  Resolver(const WeightMap& weights) : weights_(weights) {}

  bool has(const std::string& name) const { return weights_.count(name) != 0; }

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
    return weight_matrix(get(name, {rows, cols}), name);
  }

  std::vector<float> vector(const std::string& name, int64_t n) {
    const tensor::TensorView& v = get(name, {n});
    std::vector<float> out(static_cast<size_t>(n));
    tensor::to_f32(v.dtype, v.data, out.data(), out.size());
    return out;
  }

  // Projection with an optional bias; `bias_required` turns a missing bias into an error.
  Linear linear(const std::string& prefix, int64_t rows, int64_t cols, bool bias_required) {
    Linear l;
    l.w = matrix(prefix + ".weight", rows, cols);
    if (bias_required || has(prefix + ".bias")) l.bias = vector(prefix + ".bias", rows);
    return l;
  }

  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& [name, view] : weights_) {
      if (!used_.count(name)) out.push_back(name);
    }
    return out;
  }

 private:
  const WeightMap& weights_;
  std::set<std::string> used_;
};

void resolve_moe(Resolver& r, const io::ModelConfig& c, int64_t l, LayerWeights& layer) {
  const int64_t D = c.hidden_size, I = c.intermediate_size, E = c.num_experts;
  AMALGAM_CHECK(E > 0 && c.experts_per_token > 0 && c.experts_per_token <= E,
                "config.json: MoE needs num_local_experts > 0 and 0 < num_experts_per_tok <= "
                "num_local_experts (got {} and {})",
                E, c.experts_per_token);
  const std::string classic = fmt::format("model.layers.{}.block_sparse_moe", l);
  const std::string fused = fmt::format("model.layers.{}.mlp", l);
  layer.experts.resize(static_cast<size_t>(E));
  if (r.has(fused + ".experts.gate_up_proj")) {
    // transformers 5: experts stacked, gate and up concatenated along the output dimension.
    layer.router = r.matrix(fused + ".gate.weight", E, D);
    const std::string gu_name = fused + ".experts.gate_up_proj";
    const std::string down_name = fused + ".experts.down_proj";
    const tensor::TensorView& gu = r.get(gu_name, {E, 2 * I, D});
    const tensor::TensorView& down = r.get(down_name, {E, D, I});
    for (int64_t e = 0; e < E; ++e) {
      WeightMatrix both = weight_matrix_of_stack(gu, e, gu_name);
      layer.experts[e].gate = both.slice_rows(0, I);
      layer.experts[e].up = both.slice_rows(I, I);
      layer.experts[e].down = weight_matrix_of_stack(down, e, down_name);
    }
  } else {
    layer.router = r.matrix(classic + ".gate.weight", E, D);
    for (int64_t e = 0; e < E; ++e) {
      const std::string p = fmt::format("{}.experts.{}", classic, e);
      layer.experts[e].gate = r.matrix(p + ".w1.weight", I, D);
      layer.experts[e].up = r.matrix(p + ".w3.weight", I, D);
      layer.experts[e].down = r.matrix(p + ".w2.weight", D, I);
    }
  }
}

}  // namespace

const ArchInfo& find_arch(const io::ModelConfig& config) {
  for (const auto& a : kArchitectures) {
    if (!config.architecture.empty() && a.architecture == config.architecture) return a;
  }
  for (const auto& a : kArchitectures) {
    if (config.architecture.empty() && a.model_type == config.model_type) return a;
  }
  std::string known;
  for (const auto& a : kArchitectures) known += fmt::format(" {}", a.architecture);
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
  if (config.model_type == "qwen2") {
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
                             const WeightMap& weights) {
  // Before anything is sized by a count from config.json.
  io::TensorShapes shapes;
  for (const auto& [name, view] : weights) shapes.names.push_back(name);
  shapes.shape = [&weights](const std::string& n) { return weights.at(n).shape; };
  io::check_config_against_tensors(c, shapes, "config.json");
  AMALGAM_CHECK(c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 &&
                    c.head_dim > 0 && c.vocab_size > 0,
                "config.json: hidden_size, num_hidden_layers, num_attention_heads, "
                "num_key_value_heads, head_dim and vocab_size must be positive");
  AMALGAM_CHECK(c.num_heads % c.num_kv_heads == 0,
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_heads, c.num_kv_heads);
  AMALGAM_CHECK(arch.moe || c.intermediate_size > 0,
                "config.json: intermediate_size must be positive");
  const int64_t D = c.hidden_size, H = c.num_heads, Hkv = c.num_kv_heads, d = c.head_dim;
  const int64_t I = c.intermediate_size;
  Resolver r(weights);
  ModelWeights m;
  const tensor::TensorView* embed = nullptr;
  {
    auto it = weights.find("model.embed_tokens.weight");
    if (it == weights.end()) fail("missing tensor 'model.embed_tokens.weight'");
    AMALGAM_CHECK(it->second.shape.size() == 2 && it->second.shape[1] == D,
                  "tensor 'model.embed_tokens.weight' has shape {}, expected [V, {}]",
                  tensor::shape_string(it->second.shape), D);
    embed = &r.get("model.embed_tokens.weight", it->second.shape);
  }
  m.embed = weight_matrix(*embed, "model.embed_tokens.weight");
  m.final_norm = r.vector("model.norm.weight", D);
  if (c.tie_word_embeddings || !r.has("lm_head.weight")) {
    if (!c.tie_word_embeddings) {
      fail("missing tensor 'lm_head.weight' (config.json has tie_word_embeddings false)");
    }
    m.lm_head = m.embed;
  } else {
    auto it = weights.find("lm_head.weight");
    AMALGAM_CHECK(it->second.shape.size() == 2 && it->second.shape[1] == D,
                  "tensor 'lm_head.weight' has shape {}, expected [V, {}]",
                  tensor::shape_string(it->second.shape), D);
    m.lm_head = weight_matrix(r.get("lm_head.weight", it->second.shape), "lm_head.weight");
  }
  const std::vector<int64_t> windows = layer_windows(c);
  const bool attn_bias = arch.qkv_bias_required || c.attention_bias;
  const bool o_bias = c.attention_bias && !arch.qkv_bias_required;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}", l);
    LayerWeights layer;
    layer.window = windows[static_cast<size_t>(l)];
    layer.attn_norm = r.vector(p + ".input_layernorm.weight", D);
    layer.ffn_norm = r.vector(p + ".post_attention_layernorm.weight", D);
    layer.q = r.linear(p + ".self_attn.q_proj", H * d, D, attn_bias);
    layer.k = r.linear(p + ".self_attn.k_proj", Hkv * d, D, attn_bias);
    layer.v = r.linear(p + ".self_attn.v_proj", Hkv * d, D, attn_bias);
    layer.o = r.linear(p + ".self_attn.o_proj", D, H * d, o_bias);
    if (arch.moe) {
      resolve_moe(r, c, l, layer);
    } else {
      layer.gate = r.linear(p + ".mlp.gate_proj", I, D, false);
      layer.up = r.linear(p + ".mlp.up_proj", I, D, false);
      layer.down = r.linear(p + ".mlp.down_proj", D, I, false);
    }
    m.layers.push_back(std::move(layer));
  }
  for (const auto& name : r.unused()) core::debug("inference ignores tensor '{}'", name);
  return m;
}

}  // namespace amalgam::infer
