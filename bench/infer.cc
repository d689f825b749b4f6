// Inference throughput on a TinyLlama-1.1B-shaped checkpoint with random weights (hidden 2048,
// 22 layers, 32 heads, 4 kv heads, intermediate 5632, vocab 32000), in F32 and BF16:
// prefill (one batch of 512 tokens, logits of the last) and decode (128 tokens one by one) in
// tokens/s, next to the memory-bandwidth bound of decoding (weight bytes per token divided by
// the measured read bandwidth). The checkpoints are generated once into bench/.cache. `--model`
// runs given checkpoints or GGUF files instead (e.g. amalgam's GGUF exports of the same
// checkpoint, which bench/vs_llama_cpp.sh also gives llama.cpp). Runs use the engine's default
// reduced-precision products (infer/gemm.h); `--fp32-products` adds, for every model with BF16 or
// quantised weights, a run with fp32 products, side by side.
// `--kv-cache f32,bf16` runs each model once per KV-cache type; `--context N` decodes after a
// prompt of N tokens (prefilled untimed), where attention reads N cache entries per token.
// Each decode run sits between two bandwidth measurements, and is also reported as a fraction
// of its own bound (the machine's bandwidth moves by up to 2x within minutes).
//
//   bench_infer [--threads 2] [--dtype f32|bf16|all] [--model PATH]... [--fp32-products]
//               [--prefill 512] [--decode 128] [--decode-runs 2] [--in-memory]
//               [--kv-cache f32,bf16,f16] [--context 0]

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "core/fs.h"
#include "infer/gemm.h"
#include "infer/matmul.h"
#include "infer/model.h"
#include "io/safetensors_writer.h"
#include "memory_bandwidth.h"

namespace fs = std::filesystem;
using namespace amalgam;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr int64_t kD = 2048, kLayers = 22, kHeads = 32, kKvHeads = 4, kI = 5632, kV = 32000;

std::vector<io::OutputTensorSpec> tinyllama_tensors(tensor::DType dtype) {
  const int64_t d = kD / kHeads;
  std::vector<io::OutputTensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", dtype, {kV, kD}});
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    specs.push_back({p + "input_layernorm.weight", dtype, {kD}});
    specs.push_back({p + "self_attn.q_proj.weight", dtype, {kHeads * d, kD}});
    specs.push_back({p + "self_attn.k_proj.weight", dtype, {kKvHeads * d, kD}});
    specs.push_back({p + "self_attn.v_proj.weight", dtype, {kKvHeads * d, kD}});
    specs.push_back({p + "self_attn.o_proj.weight", dtype, {kD, kHeads * d}});
    specs.push_back({p + "post_attention_layernorm.weight", dtype, {kD}});
    specs.push_back({p + "mlp.gate_proj.weight", dtype, {kI, kD}});
    specs.push_back({p + "mlp.up_proj.weight", dtype, {kI, kD}});
    specs.push_back({p + "mlp.down_proj.weight", dtype, {kD, kI}});
  }
  specs.push_back({"model.norm.weight", dtype, {kD}});
  specs.push_back({"lm_head.weight", dtype, {kV, kD}});
  return specs;
}

void write_checkpoint(const fs::path& dir, tensor::DType dtype) {
  if (fs::exists(dir / "config.json")) return;
  fmt::print(stderr, "generating {} ...\n", dir.string());
  fs::path staging = dir.string() + ".partial";
  fs::remove_all(staging);
  fs::create_directories(staging);
  auto specs = tinyllama_tensors(dtype);
  io::SafetensorsWriter writer(staging, specs, uint64_t{1} << 40);
  std::mt19937_64 rng(1234);
  for (size_t i = 0; i < specs.size(); ++i) {
    const bool norm = specs[i].shape.size() == 1;
    tensor::Tensor t(specs[i].shape);
    // Uniform weights of std 0.02 (norm weights around 1): cheap to draw, realistic magnitudes.
    std::uniform_real_distribution<float> dist(-0.0346f, 0.0346f);
    for (float& v : t.data) v = norm ? 1.0f + dist(rng) : dist(rng);
    std::vector<uint8_t> bytes = tensor::encode(t, dtype);
    writer.write(i, bytes.data(), bytes.size());
  }
  writer.finish();
  nlohmann::ordered_json c = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_size", kD},
                              {"num_hidden_layers", kLayers},
                              {"num_attention_heads", kHeads},
                              {"num_key_value_heads", kKvHeads},
                              {"intermediate_size", kI},
                              {"vocab_size", kV},
                              {"max_position_embeddings", 2048},
                              {"rms_norm_eps", 1e-5},
                              {"rope_theta", 10000.0},
                              {"tie_word_embeddings", false},
                              {"bos_token_id", 1},
                              {"eos_token_id", 2},
                              {"torch_dtype", std::string(tensor::torch_dtype_name(dtype))}};
  core::write_text_file(staging / "config.json", c.dump(2) + "\n");
  fs::rename(staging, dir);
}

struct Result {
  std::string dtype;
  double prefill = 0, decode = 0;
  // The best over the decode runs of tok/s divided by that run's bandwidth bound (weight bytes
  // per token over the higher of the bandwidths measured just before and just after the run).
  double decode_of_bound = 0;
  uint64_t bytes_per_token = 0;
  size_t cache_bytes = 0;  // KV cache after the decode run
};

Result run(const fs::path& dir, const std::string& label, int64_t prefill_tokens,
           int64_t decode_tokens, bool in_memory, bool reduced_precision, infer::KVType kv_type,
           int64_t context, int decode_runs, const bench::HugePageBandwidth& bandwidth) {
  infer::set_reduced_precision_products(reduced_precision);
  infer::set_default_kv_type(kv_type);
  infer::LoadOptions lo;
  lo.in_memory = in_memory;
  const double load_start = now();
  auto model = infer::load_model(dir, lo);
  const double load_seconds = now() - load_start;
  fmt::print(stderr, "  {} load: {:.2f} s\n", label, load_seconds);
  Result r;
  r.dtype = label;
  r.bytes_per_token = model->weight_bytes_per_token();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, kV - 1);
  std::vector<int32_t> prompt(static_cast<size_t>(prefill_tokens));
  for (auto& t : prompt) t = token(rng);
  // Prefill: warm-up (pages the weights in), then best of two.
  for (int rep = 0; rep < 3; ++rep) {
    infer::KVCache cache = model->new_cache();
    infer::Batch batch;
    batch.add_sequence(prompt, 0, 0, false);
    infer::StageTimes stages;
    infer::ForwardOptions fo;
    fo.profile = &stages;
    const double t0 = now();
    model->forward(batch, cache, fo);
    const double tps = static_cast<double>(prefill_tokens) / (now() - t0);
    if (rep > 0) r.prefill = std::max(r.prefill, tps);
    fmt::print(stderr, "  {} prefill run {}: {:.1f} tok/s (", label, rep, tps);
    for (const auto& [stage, sec] : stages.seconds) fmt::print(stderr, " {} {:.2f}s", stage, sec);
    fmt::print(stderr, ")\n");
  }
  // Decode after `context` prompt tokens (prefilled untimed), one token per forward, best of
  // `decode_runs`, each between two bandwidth measurements.
  std::vector<int32_t> context_ids(static_cast<size_t>(context));
  for (auto& t : context_ids) t = token(rng);
  for (int rep = 0; rep < decode_runs; ++rep) {
    infer::KVCache cache = model->new_cache();
    if (context > 0) {
      infer::Batch batch;
      batch.add_sequence(context_ids, 0, 0, false);
      model->forward(batch, cache);
    }
    infer::StageTimes stages;
    int32_t next = 1;
    const double bw_before = bandwidth.measure();
    const double t0 = now();
    for (int64_t i = 0; i < decode_tokens; ++i) {
      infer::Batch b;
      b.add(next, static_cast<int32_t>(context + i), 0, true);
      infer::ForwardOptions fo;
      fo.profile = &stages;
      auto out = model->forward(b, cache, fo);
      next = 3 + static_cast<int32_t>(i * 7919 % (kV - 3));  // fixed sequence, no argmax cost
      (void)out;
    }
    const double tps = static_cast<double>(decode_tokens) / (now() - t0);
    const double bw = std::max(bw_before, bandwidth.measure());
    const double of_bound = tps * static_cast<double>(r.bytes_per_token) / (bw * 1e9);
    r.decode = std::max(r.decode, tps);
    r.decode_of_bound = std::max(r.decode_of_bound, of_bound);
    r.cache_bytes = cache.bytes();
    fmt::print(stderr, "  {} decode run {}: {:.2f} tok/s, {:.2f} of the bound at {:.1f} GB/s (",
               label, rep, tps, of_bound, bw);
    for (const auto& [stage, sec] : stages.seconds) fmt::print(stderr, " {} {:.2f}s", stage, sec);
    fmt::print(stderr, ")\n");
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Inference throughput on a TinyLlama-1.1B-shaped random checkpoint"};
  int threads = 2;
  std::string dtypes = "all";
  int64_t prefill = 512, decode = 128;
  std::string cache = std::string(AMALGAM_SOURCE_DIR) + "/bench/.cache";
  app.add_option("--threads", threads, "Threads");
  app.add_option("--dtype", dtypes, "f32, bf16 or all")
      ->check(CLI::IsMember({"f32", "bf16", "all"}));
  app.add_option("--prefill", prefill, "Prefill tokens");
  app.add_option("--decode", decode, "Decoded tokens");
  app.add_option("--cache", cache, "Directory of the generated checkpoints");
  bool in_memory = false;
  app.add_flag("--in-memory", in_memory, "Copy the weights into huge-page memory (no mmap)");
  std::vector<std::string> models;
  app.add_option("--model", models, "Checkpoint directory or .gguf file to run (repeatable)");
  bool fp32_products = false;
  app.add_flag("--fp32-products", fp32_products,
               "Also run BF16 and quantised models with fp32 products (where the default is "
               "reduced-precision products: CPUs with native BF16)");
  std::vector<std::string> kv_types = {"f32"};
  app.add_option("--kv-cache", kv_types, "KV cache types to run, e.g. f32,bf16")
      ->delimiter(',')
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  int64_t context = 0;
  app.add_option("--context", context, "Prompt tokens in the cache before decoding");
  int decode_runs = 2;
  app.add_option("--decode-runs", decode_runs, "Decode runs per model (the best is reported)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  infer::set_num_threads(threads);
  struct Run {
    std::string label;
    fs::path path;
    bool reduced_precision;
    infer::KVType kv_type;
  };
  std::vector<Run> runs;
  auto add_run = [&](const std::string& label, const fs::path& path, bool native_possible) {
    for (const std::string& kv : kv_types) {
      const infer::KVType type = infer::parse_kv_type(kv);
      const std::string name = kv_types.size() > 1 ? label + " (kv " + kv + ")" : label;
      runs.push_back({name, path, true, type});
      if (fp32_products && native_possible && infer::cpu_has_native_bf16()) {
        runs.push_back({name + " (fp32 products)", path, false, type});
      }
    }
  };
  if (models.empty()) {
    fs::create_directories(cache);
    for (auto dtype : {tensor::DType::kF32, tensor::DType::kBF16}) {
      const bool f32 = dtype == tensor::DType::kF32;
      if ((f32 && dtypes == "bf16") || (!f32 && dtypes == "f32")) continue;
      const fs::path dir =
          fs::path(cache) / ("tinyllama-" + std::string(tensor::dtype_name(dtype)));
      write_checkpoint(dir, dtype);
      add_run(f32 ? "F32" : "BF16", dir, !f32);
    }
  } else {
    for (const auto& m : models) {
      add_run(fs::path(m).filename().string(), m, true);
    }
  }
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  const bench::HugePageBandwidth bandwidth(threads);
  const double before = bandwidth.measure();
  fmt::print(stderr, "read bandwidth {:.1f} GB/s, load average {:.2f}\n", before, load[0]);
  std::vector<Result> results;
  for (const Run& r : runs) {
    results.push_back(run(r.path, r.label, prefill, decode, in_memory, r.reduced_precision,
                          r.kv_type, context, decode_runs, bandwidth));
  }
  const double after = bandwidth.measure();
  double load_after[3] = {0, 0, 0};
  getloadavg(load_after, 3);
  // Other processes only lower a measurement: the bound uses the higher of the two.
  const double best_bandwidth = std::max(before, after);
  fmt::print(
      "threads {}, weights {}, read bandwidth {:.1f} GB/s (best of before/after: {:.1f}, "
      "{:.1f}), load average {:.2f} before, {:.2f} after\n",
      threads, in_memory ? "copied into huge-page memory" : "memory-mapped", best_bandwidth, before,
      after, load[0], load_after[0]);
  const std::string after_context = context > 0 ? fmt::format(" after {}", context) : "";
  fmt::print(
      "| dtype | prefill {} tok/s | decode {}{} tok/s | weights/token | bandwidth bound tok/s | "
      "decode / bound beside the run (best) | KV cache |\n",
      prefill, decode, after_context);
  fmt::print("|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    fmt::print("| {} | {:.1f} | {:.2f} | {:.2f} GB | {:.2f} | {:.2f} | {:.1f} MB |\n", r.dtype,
               r.prefill, r.decode, r.bytes_per_token / 1e9,
               best_bandwidth * 1e9 / static_cast<double>(r.bytes_per_token), r.decode_of_bound,
               r.cache_bytes / 1e6);
  }
  return 0;
}
