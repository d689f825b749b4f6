#include "align/params.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"

namespace amalgam::align {

namespace fs = std::filesystem;

tensor::Tensor& LlamaParams::at(const std::string& name) {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail("{}: no tensor {}", dir.string(), name);
  return it->second;
}

const tensor::Tensor& LlamaParams::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail("{}: no tensor {}", dir.string(), name);
  return it->second;
}

std::string layer_tensor(int64_t layer, const std::string& suffix) {
  return fmt::format("model.layers.{}.{}", layer, suffix);
}

namespace {

void expect_shape(const LlamaParams& p, const std::string& name, const tensor::Shape& shape) {
  auto it = p.tensors.find(name);
  if (it == p.tensors.end()) fail("{}: tensor {} is missing", p.dir.string(), name);
  if (it->second.shape != shape) {
    fail("{}: tensor {} has shape {}, expected {} from config.json", p.dir.string(), name,
         tensor::shape_string(it->second.shape), tensor::shape_string(shape));
  }
}

}  // namespace

LlamaParams load_llama(const fs::path& path) {
  io::Checkpoint ckpt(path);
  LlamaParams p;
  p.dir = ckpt.directory();
  p.config = io::read_model_config(p.dir);
  const io::ModelConfig& c = p.config;
  const std::string where = p.dir.string();
  if (c.num_experts > 0) fail("{}: mixture-of-experts models cannot be aligned", where);
  if (c.rope.partial_rotary_factor != 1.0) {
    fail("{}: partial rotary embeddings are not supported by alignment", where);
  }
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 ||
      c.head_dim <= 0 || c.intermediate_size <= 0 || c.vocab_size <= 0) {
    fail(
        "{}: config.json lacks a positive hidden_size, num_hidden_layers, num_attention_heads, "
        "num_key_value_heads, head_dim, intermediate_size or vocab_size",
        where);
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", where,
         c.num_heads, c.num_kv_heads);
  }
  if (c.head_dim % 2 != 0) fail("{}: head_dim {} is odd", where, c.head_dim);
  bool first = true;
  for (const std::string& name : ckpt.names()) {
    if (name.ends_with(".bias")) {
      fail("{}: tensor {} is a bias; alignment handles bias-free Llama layouts only", where, name);
    }
    if (name.ends_with("rotary_emb.inv_freq")) continue;
    const io::TensorInfo& info = ckpt.info(name);
    if (first) p.dtype = info.dtype;
    first = false;
    p.tensors.emplace(name, ckpt.load_f32(name));
  }
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t i = c.intermediate_size;
  size_t expected = 2 + (p.tensors.count("lm_head.weight") ? 1 : 0);
  expect_shape(p, "model.embed_tokens.weight", {c.vocab_size, d});
  expect_shape(p, "model.norm.weight", {d});
  if (!p.tied()) expect_shape(p, "lm_head.weight", {c.vocab_size, d});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    expect_shape(p, layer_tensor(l, "input_layernorm.weight"), {d});
    expect_shape(p, layer_tensor(l, "post_attention_layernorm.weight"), {d});
    expect_shape(p, layer_tensor(l, "self_attn.q_proj.weight"), {q, d});
    expect_shape(p, layer_tensor(l, "self_attn.k_proj.weight"), {kv, d});
    expect_shape(p, layer_tensor(l, "self_attn.v_proj.weight"), {kv, d});
    expect_shape(p, layer_tensor(l, "self_attn.o_proj.weight"), {d, q});
    expect_shape(p, layer_tensor(l, "mlp.gate_proj.weight"), {i, d});
    expect_shape(p, layer_tensor(l, "mlp.up_proj.weight"), {i, d});
    expect_shape(p, layer_tensor(l, "mlp.down_proj.weight"), {d, i});
    expected += 9;
  }
  if (p.tensors.size() != expected) {
    for (const auto& [name, t] : p.tensors) {
      if (!name.starts_with("model.layers.") && name != "model.embed_tokens.weight" &&
          name != "model.norm.weight" && name != "lm_head.weight") {
        fail("{}: unexpected tensor {} for a dense Llama layout", where, name);
      }
    }
    fail("{}: {} tensors, expected {} for a dense Llama layout of {} layers", where,
         p.tensors.size(), expected, c.num_layers);
  }
  return p;
}

void check_same_shape(const LlamaParams& a, const LlamaParams& b) {
  const io::ModelConfig &x = a.config, &y = b.config;
  auto differ = [&](const char* key, int64_t u, int64_t v) {
    if (u != v) {
      fail("{} and {} differ in {} ({} vs {}); both models need the same architecture",
           a.dir.string(), b.dir.string(), key, u, v);
    }
  };
  differ("hidden_size", x.hidden_size, y.hidden_size);
  differ("num_hidden_layers", x.num_layers, y.num_layers);
  differ("num_attention_heads", x.num_heads, y.num_heads);
  differ("num_key_value_heads", x.num_kv_heads, y.num_kv_heads);
  differ("head_dim", x.head_dim, y.head_dim);
  differ("intermediate_size", x.intermediate_size, y.intermediate_size);
  differ("vocab_size (the models need the same vocabulary)", x.vocab_size, y.vocab_size);
  if (x.rope.theta != y.rope.theta || x.rope.type != y.rope.type) {
    fail("{} and {} use different rotary embeddings (rope_theta {} vs {})", a.dir.string(),
         b.dir.string(), x.rope.theta, y.rope.theta);
  }
  if (a.tied() != b.tied()) {
    fail("{} and {} differ in tie_word_embeddings", a.dir.string(), b.dir.string());
  }
  const fs::path ta = a.dir / "tokenizer.json", tb = b.dir / "tokenizer.json";
  if (fs::exists(ta) && fs::exists(tb) && core::read_text_file(ta) != core::read_text_file(tb)) {
    fail("{} and {} have different tokenizers (tokenizer.json differs)", a.dir.string(),
         b.dir.string());
  }
}

void save_llama(const LlamaParams& params, const fs::path& out, bool force) {
  core::StagedDirectory staged(out, force);
  std::vector<io::OutputTensorSpec> specs;
  for (const auto& [name, t] : params.tensors) specs.push_back({name, params.dtype, t.shape});
  {
    io::SafetensorsWriter writer(staged.path(), specs, uint64_t{5} << 30);
    size_t index = 0;
    for (const auto& [name, t] : params.tensors) {
      std::vector<uint8_t> bytes = tensor::encode(t, params.dtype);
      writer.write(index++, bytes.data(), bytes.size());
    }
    writer.finish();
  }
  core::write_text_file(staged.path() / "config.json", params.config.raw.dump(2) + "\n");
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "tokenizer.model", "generation_config.json"}) {
    const fs::path from = params.dir / name;
    if (!fs::exists(from)) continue;
    core::write_text_file(staged.path() / name, core::read_text_file(from));
  }
  staged.commit();
}

std::unique_ptr<infer::Model> make_model(const LlamaParams& params) {
  infer::WeightMap views;
  for (const auto& [name, t] : params.tensors) {
    views[name] = tensor::TensorView{tensor::DType::kF32, t.shape,
                                     reinterpret_cast<const uint8_t*>(t.data.data())};
  }
  return std::make_unique<infer::Model>(params.config, std::move(views));
}

}  // namespace amalgam::align
