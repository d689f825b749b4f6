#include "moe/assemble.h"

#include <fmt/format.h>

#include <functional>
#include <random>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "tensor/tensor.h"

namespace amalgam::moe {

namespace fs = std::filesystem;

namespace {

constexpr const char* kProjections[] = {"gate_proj", "up_proj", "down_proj"};

bool is_dense_mlp(const std::string& name) {
  // model.layers.L.mlp.{gate,up,down}_proj.*
  const auto mlp = name.find(".mlp.");
  return name.rfind("model.layers.", 0) == 0 && mlp != std::string::npos;
}

std::string mlp_name(int64_t layer, const std::string& proj) {
  return fmt::format("model.layers.{}.mlp.{}.weight", layer, proj);
}

// mergekit: Mixtral experts come from llama / mistral models; Qwen MoE also takes qwen2, with
// every input of the base's model_type.
void check_dense_source(const io::ModelConfig& c, const std::string& where, OutputArch arch,
                        const std::string& base_type) {
  if (arch == OutputArch::kMixtral) {
    if (c.model_type != "llama" && c.model_type != "mistral") {
      fail("{}: model_type '{}': Mixtral experts come from llama or mistral models", where,
           c.model_type);
    }
    return;
  }
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    fail("{}: model_type '{}': Qwen MoE experts come from llama, mistral or qwen2 models", where,
         c.model_type);
  }
  if (c.model_type != base_type) {
    fail("{}: model_type '{}' differs from the base's '{}'; Qwen MoE needs one architecture", where,
         c.model_type, base_type);
  }
}

std::string tokenizer_text(const fs::path& dir) {
  const fs::path p = dir / "tokenizer.json";
  return fs::exists(p) ? core::read_text_file(p) : std::string();
}

void put(merge::TensorSink& sink, size_t index, uint64_t offset, const float* data, size_t n,
         tensor::DType dtype) {
  std::vector<uint8_t> bytes(n * tensor::dtype_size(dtype));
  tensor::from_f32(data, dtype, bytes.data(), n);
  sink.write(index, offset, bytes.data(), bytes.size());
}

}  // namespace

std::unique_ptr<io::Checkpoint> MoeAssembler::open_expert(const ExpertConfig& e,
                                                          const std::string& what) const {
  const std::string base_where = (base_->directory() / "config.json").string();
  auto ck = std::make_unique<io::Checkpoint>(e.source_model);
  const io::ModelConfig c = io::read_model_config(ck->directory());
  const std::string where = (ck->directory() / "config.json").string();
  check_dense_source(c, where + " (" + what + ")", arch_, base_config_.model_type);
  if (c.vocab_size != base_config_.vocab_size) {
    fail("{}: vocabulary of {} tokens differs from the base's {} ({})", where, c.vocab_size,
         base_config_.vocab_size, base_where);
  }
  const std::string tok = tokenizer_text(ck->directory());
  const std::string base_tokenizer = tokenizer_text(base_->directory());
  if (!tok.empty() && !base_tokenizer.empty() && tok != base_tokenizer) {
    fail("{}: tokenizer.json differs from the base's ({}); experts must share the vocabulary",
         (ck->directory() / "tokenizer.json").string(), base_->directory().string());
  }
  const int64_t L = base_config_.num_layers, D = base_config_.hidden_size,
                I = base_config_.intermediate_size;
  if (c.num_layers != L || c.hidden_size != D || c.intermediate_size != I) {
    fail("{}: {} layers, hidden {}, intermediate {}; the base has {}, {}, {}", where, c.num_layers,
         c.hidden_size, c.intermediate_size, L, D, I);
  }
  for (int64_t l = 0; l < L; ++l) {
    for (const char* p : kProjections) {
      const std::string name = mlp_name(l, p);
      if (!ck->has(name)) fail("{}: missing tensor '{}'", ck->path().string(), name);
      const tensor::Shape want =
          std::string(p) == "down_proj" ? tensor::Shape{D, I} : tensor::Shape{I, D};
      const io::TensorInfo& info = ck->info(name);
      if (info.shape != want || !tensor::is_float_dtype(info.dtype)) {
        fail("{}: tensor '{}' is {} {}, expected a float tensor of shape {}", ck->path().string(),
             name, tensor::dtype_name(info.dtype), tensor::shape_string(info.shape),
             tensor::shape_string(want));
      }
    }
  }
  return ck;
}

MoeAssembler::MoeAssembler(const MoeConfig& config, const AssembleOptions& options)
    : config_(config), options_(options), arch_(moe::output_arch(config)) {
  base_ = std::make_unique<io::Checkpoint>(config.base_model);
  base_config_ = io::read_model_config(base_->directory());
  const std::string base_where = (base_->directory() / "config.json").string();
  check_dense_source(base_config_, base_where, arch_, base_config_.model_type);
  if (!config.dtype.empty()) {
    auto d = tensor::parse_torch_dtype(config.dtype);
    if (!d || !tensor::is_float_dtype(*d)) {
      fail("{}: dtype '{}' is not a float type (bfloat16, float16, float32)", config.where,
           config.dtype);
    }
    dtype_ = *d;
  } else if (auto d = tensor::parse_torch_dtype(base_config_.dtype); d && is_float_dtype(*d)) {
    dtype_ = *d;
  }
  for (size_t i = 0; i < config.experts.size(); ++i) {
    experts_.push_back(open_expert(config.experts[i], fmt::format("experts[{}]", i)));
  }
  if (arch_ == OutputArch::kQwen2Moe) {
    AMALGAM_CHECK(config.shared_experts.size() == 1, "internal: Qwen MoE without a shared expert");
    shared_ = open_expert(config.shared_experts[0], "shared_experts[0]");
  }
  // Output tensors: the base's non-MLP tensors, then per layer the router and the experts.
  for (const std::string& name : base_->names()) {
    if (is_dense_mlp(name)) continue;
    const io::TensorInfo& info = base_->info(name);
    if (!tensor::is_float_dtype(info.dtype)) {
      fail("{}: tensor '{}' has dtype {}", base_->path().string(), name,
           tensor::dtype_name(info.dtype));
    }
    if (arch_ == OutputArch::kQwen2Moe && name.ends_with(".self_attn.o_proj.bias")) {
      fail("{}: tensor '{}': Qwen2-MoE attention has no o_proj bias", base_->path().string(), name);
    }
    base_names_.push_back(name);
    specs_.push_back({name, dtype_, info.shape});
  }
  const int64_t L = base_config_.num_layers;
  if (arch_ == OutputArch::kQwen2Moe) {
    // mergekit gives Qwen2's always-present q/k/v biases zeros when the base has none.
    const int64_t q = base_config_.num_heads * base_config_.head_dim,
                  kv = base_config_.num_kv_heads * base_config_.head_dim;
    for (int64_t l = 0; l < L; ++l) {
      const std::pair<const char*, int64_t> biases[] = {
          {"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}};
      for (const auto& [proj, rows] : biases) {
        const std::string name = fmt::format("model.layers.{}.self_attn.{}.bias", l, proj);
        if (base_->has(name)) continue;
        zero_index_.push_back(specs_.size());
        specs_.push_back({name, dtype_, {rows}});
      }
    }
  }
  for (int64_t l = 0; l < L; ++l) add_layer_specs(l);
}

void MoeAssembler::add_layer_specs(int64_t l) {
  const int64_t E = experts(), D = base_config_.hidden_size, I = base_config_.intermediate_size;
  const bool qwen = arch_ == OutputArch::kQwen2Moe;
  router_index_.push_back(specs_.size());
  if (options_.fused || qwen) {
    const std::string p = fmt::format("model.layers.{}.mlp", l);
    specs_.push_back({p + ".gate.weight", dtype_, {E, D}});
    if (qwen) specs_.push_back({p + ".shared_expert_gate.weight", dtype_, {1, D}});
    if (options_.fused) {
      specs_.push_back({p + ".experts.gate_up_proj", dtype_, {E, 2 * I, D}});
      specs_.push_back({p + ".experts.down_proj", dtype_, {E, D, I}});
    } else {
      for (int64_t e = 0; e < E; ++e) {
        for (const char* proj : kProjections) {
          const bool down = std::string(proj) == "down_proj";
          specs_.push_back({fmt::format("{}.experts.{}.{}.weight", p, e, proj), dtype_,
                            down ? tensor::Shape{D, I} : tensor::Shape{I, D}});
        }
      }
    }
    if (qwen) {
      for (const char* proj : kProjections) {
        const bool down = std::string(proj) == "down_proj";
        specs_.push_back({fmt::format("{}.shared_expert.{}.weight", p, proj), dtype_,
                          down ? tensor::Shape{D, I} : tensor::Shape{I, D}});
      }
    }
    return;
  }
  const std::string p = fmt::format("model.layers.{}.block_sparse_moe", l);
  specs_.push_back({p + ".gate.weight", dtype_, {E, D}});
  for (int64_t e = 0; e < E; ++e) {
    specs_.push_back({fmt::format("{}.experts.{}.w1.weight", p, e), dtype_, {I, D}});
    specs_.push_back({fmt::format("{}.experts.{}.w2.weight", p, e), dtype_, {D, I}});
    specs_.push_back({fmt::format("{}.experts.{}.w3.weight", p, e), dtype_, {I, D}});
  }
}

nlohmann::ordered_json MoeAssembler::output_config() const {
  nlohmann::ordered_json j = base_config_.raw;
  if (arch_ == OutputArch::kQwen2Moe) {
    // mergekit: Qwen2MoeConfig(**base) with these set; experts as wide as the base's MLP.
    j["architectures"] = {"Qwen2MoeForCausalLM"};
    j["model_type"] = "qwen2_moe";
    j["num_experts"] = experts();
    j["num_experts_per_tok"] = config_.experts_per_token;
    j["decoder_sparse_step"] = 1;
    j["norm_topk_prob"] = true;
    j["sliding_window"] = nullptr;
    j["use_sliding_window"] = false;
    j["shared_expert_intermediate_size"] = base_config_.intermediate_size;
    j["moe_intermediate_size"] = base_config_.intermediate_size;
    j["mlp_only_layers"] = nlohmann::ordered_json::array();
    j.erase("attention_bias");  // a Llama key; Qwen2-MoE's q/k/v always have biases
  } else {
    j["architectures"] = {"MixtralForCausalLM"};
    j["model_type"] = "mixtral";
    j["num_local_experts"] = experts();
    j["num_experts_per_tok"] = config_.experts_per_token;
    j["sliding_window"] = nullptr;
  }
  j["output_router_logits"] = false;
  if (!j.contains("router_aux_loss_coef")) j["router_aux_loss_coef"] = 0.001;
  j.erase("mlp_bias");
  j.erase("pretraining_tp");
  const std::string dtype(tensor::torch_dtype_name(dtype_));
  if (j.contains("dtype") || !j.contains("torch_dtype")) j["dtype"] = dtype;
  if (j.contains("torch_dtype")) j["torch_dtype"] = dtype;
  return j;
}

io::ModelConfig MoeAssembler::output_model_config() const {
  return io::parse_model_config(output_config(), "the MoE's config.json");
}

std::vector<float> MoeAssembler::expert_tensor(int64_t expert, int64_t layer,
                                               const std::string& proj) const {
  const bool shared = expert == experts();
  const std::vector<double>& mix = config_.calibration.bos_expert;
  if (!shared && !mix.empty() && expert == experts() - 1) {
    std::vector<double> sum;
    for (size_t e = 0; e < mix.size(); ++e) {
      if (mix[e] == 0.0) continue;
      const std::vector<float> t = expert_tensor(static_cast<int64_t>(e), layer, proj);
      sum.resize(t.size(), 0.0);
      for (size_t i = 0; i < t.size(); ++i) sum[i] += mix[e] * t[i];
    }
    return std::vector<float>(sum.begin(), sum.end());
  }
  const ExpertConfig& ec =
      shared ? config_.shared_experts[0] : config_.experts[static_cast<size_t>(expert)];
  tensor::Tensor t = (shared ? *shared_ : *experts_[expert]).load_f32(mlp_name(layer, proj));
  if (ec.noise_scale && *ec.noise_scale > 0) {
    // One stream per (seed, expert, tensor): the noise does not depend on the writing order.
    std::seed_seq seq{static_cast<uint64_t>(options_.seed), static_cast<uint64_t>(expert),
                      static_cast<uint64_t>(std::hash<std::string>{}(mlp_name(layer, proj)))};
    std::mt19937_64 rng(seq);
    std::normal_distribution<double> noise(0.0, *ec.noise_scale);
    for (float& v : t.data) v = static_cast<float>(v + noise(rng));
  }
  if (proj == "down_proj" && ec.residual_scale) {
    for (float& v : t.data) v = static_cast<float>(v * *ec.residual_scale);
  }
  return std::move(t.data);
}

void MoeAssembler::write_routers(const GateVectors& gates, merge::TensorSink& sink) const {
  AMALGAM_CHECK(gates.layers == base_config_.num_layers && gates.experts == gate_rows() &&
                    gates.hidden == base_config_.hidden_size,
                "internal: router rows of the wrong shape");
  for (int64_t l = 0; l < gates.layers; ++l) {
    put(sink, router_index(l), 0, gates.row(l, 0), static_cast<size_t>(experts() * gates.hidden),
        dtype_);
    if (shared_) {
      put(sink, router_index(l) + 1, 0, gates.row(l, experts()), static_cast<size_t>(gates.hidden),
          dtype_);
    }
  }
}

void MoeAssembler::write(const GateVectors& gates, merge::TensorSink& sink) const {
  sink.begin(specs_);
  core::ProgressBar progress("moe", specs_.size(), "tensors");
  for (size_t i = 0; i < base_names_.size(); ++i) {
    tensor::Tensor t = base_->load_f32(base_names_[i]);
    put(sink, i, 0, t.data.data(), t.data.size(), dtype_);
    progress.advance(1, t.data.size() * 4);
  }
  for (size_t i : zero_index_) {
    const std::vector<float> zeros(static_cast<size_t>(specs_[i].shape[0]), 0.0f);
    put(sink, i, 0, zeros.data(), zeros.size(), dtype_);
    progress.advance(1);
  }
  write_routers(gates, sink);
  const int64_t L = base_config_.num_layers, E = experts(), D = base_config_.hidden_size,
                I = base_config_.intermediate_size;
  const size_t elem = tensor::dtype_size(dtype_);
  const bool qwen = arch_ == OutputArch::kQwen2Moe;
  for (int64_t l = 0; l < L; ++l) {
    // Index of this layer's first expert tensor, after the router (and the shared gate).
    const size_t r = router_index(l), first = r + (qwen ? 2 : 1);
    progress.advance(qwen ? 2 : 1);
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<float> gate = expert_tensor(e, l, "gate_proj");
      const std::vector<float> up = expert_tensor(e, l, "up_proj");
      const std::vector<float> down = expert_tensor(e, l, "down_proj");
      if (options_.fused) {
        const uint64_t gu = static_cast<uint64_t>(e) * 2 * I * D * elem;
        put(sink, first, gu, gate.data(), gate.size(), dtype_);
        put(sink, first, gu + static_cast<uint64_t>(I * D) * elem, up.data(), up.size(), dtype_);
        put(sink, first + 1, static_cast<uint64_t>(e) * D * I * elem, down.data(), down.size(),
            dtype_);
      } else if (qwen) {
        // gate_proj, up_proj, down_proj (kProjections order)
        const size_t at = first + static_cast<size_t>(3 * e);
        put(sink, at, 0, gate.data(), gate.size(), dtype_);
        put(sink, at + 1, 0, up.data(), up.size(), dtype_);
        put(sink, at + 2, 0, down.data(), down.size(), dtype_);
        progress.advance(3);
      } else {
        // w1 (gate), w2 (down), w3 (up)
        const size_t at = first + static_cast<size_t>(3 * e);
        put(sink, at, 0, gate.data(), gate.size(), dtype_);
        put(sink, at + 1, 0, down.data(), down.size(), dtype_);
        put(sink, at + 2, 0, up.data(), up.size(), dtype_);
        progress.advance(3);
      }
    }
    if (options_.fused) progress.advance(2);
    if (qwen) {
      const size_t at = first + (options_.fused ? 2 : static_cast<size_t>(3 * E));
      for (size_t k = 0; k < 3; ++k) {
        const std::vector<float> t = expert_tensor(E, l, kProjections[k]);
        put(sink, at + k, 0, t.data(), t.size(), dtype_);
      }
      progress.advance(3);
    }
  }
  sink.finish();
  progress.finish();
}

}  // namespace amalgam::moe
