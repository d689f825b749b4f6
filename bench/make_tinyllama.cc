// Writes a TinyLlama-1.1B-shaped bf16 checkpoint with random weights (hidden 2048, 22 layers,
// 32 heads, 4 KV heads, intermediate 5632, vocab 32000) in 3 shards, with the amalgam
// SafetensorsWriter, for the merge benchmark. Models made with the same --family and different
// --seed look like fine-tunes of one base: base + small per-model noise.
//
//   bench_make_tinyllama OUT_DIR --seed N [--family F]
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/half.h"
#include "io/safetensors_writer.h"

namespace {

namespace fs = std::filesystem;
using amalgam::io::OutputTensorSpec;
using amalgam::tensor::DType;

constexpr int64_t kHidden = 2048, kLayers = 22, kHeads = 32, kKvHeads = 4, kInter = 5632,
                  kVocab = 32000;

std::vector<OutputTensorSpec> tinyllama_tensors() {
  const int64_t kv = kHidden / kHeads * kKvHeads;
  std::vector<OutputTensorSpec> t;
  t.push_back({"model.embed_tokens.weight", DType::kBF16, {kVocab, kHidden}});
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    t.push_back({p + "input_layernorm.weight", DType::kBF16, {kHidden}});
    t.push_back({p + "self_attn.q_proj.weight", DType::kBF16, {kHidden, kHidden}});
    t.push_back({p + "self_attn.k_proj.weight", DType::kBF16, {kv, kHidden}});
    t.push_back({p + "self_attn.v_proj.weight", DType::kBF16, {kv, kHidden}});
    t.push_back({p + "self_attn.o_proj.weight", DType::kBF16, {kHidden, kHidden}});
    t.push_back({p + "post_attention_layernorm.weight", DType::kBF16, {kHidden}});
    t.push_back({p + "mlp.gate_proj.weight", DType::kBF16, {kInter, kHidden}});
    t.push_back({p + "mlp.up_proj.weight", DType::kBF16, {kInter, kHidden}});
    t.push_back({p + "mlp.down_proj.weight", DType::kBF16, {kHidden, kInter}});
  }
  t.push_back({"model.norm.weight", DType::kBF16, {kHidden}});
  t.push_back({"lm_head.weight", DType::kBF16, {kVocab, kHidden}});
  return t;
}

// splitmix64: fast, good enough for benchmark weights.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// Uniform in [-1, 1) from 16 random bits.
inline float unit(uint64_t bits16) { return static_cast<float>(bits16) / 32768.0f - 1.0f; }

uint64_t greedy_shard_limit(const std::vector<OutputTensorSpec>& specs, size_t shards) {
  uint64_t total = 0;
  std::vector<uint64_t> sizes;
  for (const auto& s : specs) {
    sizes.push_back(static_cast<uint64_t>(amalgam::tensor::numel(s.shape)) * 2);
    total += sizes.back();
  }
  for (uint64_t limit = total / shards;; limit += total / 1000) {
    size_t count = 1;
    uint64_t current = 0;
    for (uint64_t b : sizes) {
      if (current > 0 && current + b > limit) {
        ++count;
        current = 0;
      }
      current += b;
    }
    if (count <= shards) return limit;
  }
}

void make(const fs::path& out, uint64_t seed, uint64_t family) {
  fs::create_directories(out);
  const auto specs = tinyllama_tensors();
  amalgam::io::SafetensorsWriter writer(out, specs, greedy_shard_limit(specs, 3));
  Rng base{family * 0x1234567ull + 1}, noise{seed * 0x7654321ull + 7};
  std::vector<uint16_t> buf;
  for (size_t i = 0; i < specs.size(); ++i) {
    const size_t n = static_cast<size_t>(amalgam::tensor::numel(specs[i].shape));
    buf.resize(n);
    const bool norm = specs[i].shape.size() == 1;
    for (size_t j = 0; j < n; j += 4) {
      const uint64_t b = base.next(), e = noise.next();
      for (size_t k = 0; k < 4 && j + k < n; ++k) {
        const float w = unit((b >> (16 * k)) & 0xffff), d = unit((e >> (16 * k)) & 0xffff);
        const float v = norm ? 1.0f + 0.1f * w + 0.01f * d : 0.05f * w + 0.005f * d;
        buf[j + k] = amalgam::core::f32_to_bf16(v);
      }
    }
    writer.write(i, reinterpret_cast<const uint8_t*>(buf.data()), n * 2);
  }
  writer.finish();
  amalgam::core::write_text_file(out / "config.json",
                                 fmt::format(R"({{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": {},
  "initializer_range": 0.02,
  "intermediate_size": {},
  "max_position_embeddings": 2048,
  "model_type": "llama",
  "num_attention_heads": {},
  "num_hidden_layers": {},
  "num_key_value_heads": {},
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.35.0",
  "use_cache": true,
  "vocab_size": {}
}}
)",
                                             kHidden, kInter, kHeads, kLayers, kKvHeads, kVocab));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Writes a TinyLlama-1.1B-shaped bf16 checkpoint with random weights"};
  std::string out;
  uint64_t seed = 1, family = 1;
  app.add_option("OUT_DIR", out, "Directory to write")->required();
  app.add_option("--seed", seed, "Seed of this model's own noise");
  app.add_option("--family", family, "Seed of the shared base (same family: fine-tunes of one base)");
  CLI11_PARSE(app, argc, argv);
  try {
    make(out, seed, family);
  } catch (const amalgam::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
