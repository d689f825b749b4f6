#include "io/hf_config.h"

#include <algorithm>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"

namespace amalgam::io {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

// A JSON number as an integer: 128 or 128.0, but not 1e30 or 0.5 (converting those is undefined
// behaviour, and no count is fractional).
int64_t integer(const ordered_json& v, const char* key) {
  if (v.is_number_integer()) return v.get<int64_t>();
  const double d = v.get<double>();
  if (!(d >= -9.0e15 && d <= 9.0e15) || d != static_cast<double>(static_cast<int64_t>(d))) {
    fail("config key '{}' must be an integer, got {}", key, v.dump());
  }
  return static_cast<int64_t>(d);
}

int64_t get_int(const ordered_json& j, const char* key, int64_t fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail("config key '{}' must be a number", key);
  return integer(*it, key);
}

double get_double(const ordered_json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail("config key '{}' must be a number", key);
  return it->get<double>();
}

void read_rope(const ordered_json& j, RopeConfig& rope) {
  // transformers 5: rope_parameters holds theta and scaling; 4: rope_theta + rope_scaling.
  rope.theta = get_double(j, "rope_theta", 10000.0);
  const ordered_json* params = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    params = &j["rope_parameters"];
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    params = &j["rope_scaling"];
  }
  if (params == nullptr) return;
  const ordered_json& p = *params;
  rope.theta = get_double(p, "rope_theta", rope.theta);
  std::string type = "default";
  if (p.contains("rope_type") && p["rope_type"].is_string()) type = p["rope_type"];
  else if (p.contains("type") && p["type"].is_string()) type = p["type"];
  rope.type = type;
  rope.factor = get_double(p, "factor", 1.0);
  rope.low_freq_factor = get_double(p, "low_freq_factor", 1.0);
  rope.high_freq_factor = get_double(p, "high_freq_factor", 4.0);
  rope.original_max_position_embeddings = get_int(p, "original_max_position_embeddings", 0);
  if (p.contains("attention_factor") && p["attention_factor"].is_number()) {
    rope.attention_factor = p["attention_factor"].get<double>();
  }
  rope.beta_fast = get_double(p, "beta_fast", 32.0);
  rope.beta_slow = get_double(p, "beta_slow", 1.0);
  if (p.contains("mscale") && p["mscale"].is_number()) rope.mscale = p["mscale"].get<double>();
  if (p.contains("mscale_all_dim") && p["mscale_all_dim"].is_number()) {
    rope.mscale_all_dim = p["mscale_all_dim"].get<double>();
  }
  if (p.contains("truncate") && p["truncate"].is_boolean()) rope.truncate = p["truncate"];
  rope.partial_rotary_factor = get_double(p, "partial_rotary_factor", 1.0);
}

// transformers' Qwen2MoeConfig keys, with its defaults where a key is absent.
void read_qwen2_moe(const ordered_json& j, ModelConfig& c) {
  c.num_experts = get_int(j, "num_experts", 60);
  c.experts_per_token = get_int(j, "num_experts_per_tok", 4);
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", 1408);
  c.shared_expert_intermediate_size = get_int(j, "shared_expert_intermediate_size", 5632);
  c.decoder_sparse_step = get_int(j, "decoder_sparse_step", 1);
  if (c.decoder_sparse_step < 1) {
    fail("config key 'decoder_sparse_step' must be at least 1, got {}", c.decoder_sparse_step);
  }
  c.norm_topk_prob = false;
  if (j.contains("norm_topk_prob") && !j["norm_topk_prob"].is_null()) {
    if (!j["norm_topk_prob"].is_boolean()) fail("config key 'norm_topk_prob' must be a boolean");
    c.norm_topk_prob = j["norm_topk_prob"].get<bool>();
  }
  if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null()) {
    const auto& m = j["mlp_only_layers"];
    if (!m.is_array()) fail("config key 'mlp_only_layers' must be a list of layer indices");
    for (const auto& v : m) {
      if (!v.is_number()) fail("config key 'mlp_only_layers' must be a list of layer indices");
      c.mlp_only_layers.push_back(integer(v, "mlp_only_layers"));
    }
  }
}

}  // namespace

ModelConfig parse_model_config(const ordered_json& j, const std::string& where) {
  ModelConfig c;
  c.raw = j;
  try {
    if (!j.is_object()) fail("not a JSON object");
    if (j.contains("architectures") && j["architectures"].is_array() &&
        !j["architectures"].empty() && j["architectures"][0].is_string()) {
      c.architecture = j["architectures"][0];
    }
    if (j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"];
    c.hidden_size = get_int(j, "hidden_size", 0);
    c.num_layers = get_int(j, "num_hidden_layers", 0);
    c.num_heads = get_int(j, "num_attention_heads", 0);
    c.num_kv_heads = get_int(j, "num_key_value_heads", c.num_heads);
    c.head_dim = get_int(j, "head_dim", c.num_heads ? c.hidden_size / c.num_heads : 0);
    c.intermediate_size = get_int(j, "intermediate_size", 0);
    c.vocab_size = get_int(j, "vocab_size", 0);
    c.max_position_embeddings = get_int(j, "max_position_embeddings", 0);
    c.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6);
    read_rope(j, c.rope);
    c.tie_word_embeddings = j.value("tie_word_embeddings", false);
    c.attention_bias = j.value("attention_bias", c.model_type == "qwen2");
    // Mistral/Qwen2 configs carry sliding_window even when unused; Qwen2 gates it.
    const bool qwen2 = c.model_type == "qwen2" || c.model_type == "qwen2_moe";
    if (j.contains("sliding_window") && j["sliding_window"].is_number()) {
      bool enabled = !qwen2 || j.value("use_sliding_window", false);
      if (enabled) c.sliding_window = integer(j["sliding_window"], "sliding_window");
    }
    if (c.model_type == "qwen2_moe") {
      c.attention_bias = true;  // Qwen2-MoE's q/k/v projections always have biases
      read_qwen2_moe(j, c);
    } else {
      c.num_experts = get_int(j, "num_local_experts", 0);
      c.experts_per_token = get_int(j, "num_experts_per_tok", 0);
    }
    if (j.contains("dtype") && j["dtype"].is_string()) c.dtype = j["dtype"];
    else if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.dtype = j["torch_dtype"];
    if (j.contains("bos_token_id") && j["bos_token_id"].is_number()) {
      c.bos_token_id = integer(j["bos_token_id"], "bos_token_id");
    }
    if (j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number()) c.eos_token_ids.push_back(integer(e, "eos_token_id"));
      if (e.is_array()) {
        for (const auto& v : e) {
          if (v.is_number()) c.eos_token_ids.push_back(integer(v, "eos_token_id"));
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", where, e.what());
  } catch (const Error& e) {
    fail("{}: {}", where, e.what());
  }
  return c;
}

bool is_sparse_layer(const ModelConfig& c, int64_t layer) {
  if (c.num_experts <= 0) return false;
  if (std::find(c.mlp_only_layers.begin(), c.mlp_only_layers.end(), layer) !=
      c.mlp_only_layers.end()) {
    return false;
  }
  return (layer + 1) % c.decoder_sparse_step == 0;
}

ModelConfig read_model_config(const fs::path& model_dir) {
  fs::path path = model_dir / "config.json";
  if (!fs::exists(path)) fail("{}: missing config.json", model_dir.string());
  ordered_json j;
  try {
    const std::string text = core::read_text_file(path);
    core::parse_json_strict(text, path.string());  // duplicate keys are refused, not resolved
    j = ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON: {}", path.string(), e.what());
  }
  ModelConfig config = parse_model_config(j, path.string());
  add_generation_config_eos(config, model_dir);
  return config;
}

void add_generation_config_eos(ModelConfig& config, const fs::path& model_dir) {
  const fs::path path = model_dir / "generation_config.json";
  if (!fs::exists(path)) return;
  const nlohmann::json j = core::read_json_file(path);
  if (!j.is_object() || !j.contains("eos_token_id")) return;
  auto add = [&](const nlohmann::json& v) {
    if (!v.is_number_integer()) return;
    const int64_t id = v.get<int64_t>();
    if (std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), id) ==
        config.eos_token_ids.end()) {
      config.eos_token_ids.push_back(id);
    }
  };
  const auto& e = j["eos_token_id"];
  if (e.is_array()) {
    for (const auto& v : e) add(v);
  } else {
    add(e);
  }
}

}  // namespace amalgam::io
