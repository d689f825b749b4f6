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

void check_dense_source(const io::ModelConfig& c, const std::string& where) {
  if (c.model_type != "llama" && c.model_type != "mistral") {
    fail("{}: model_type '{}': Mixtral experts come from llama or mistral models", where,
         c.model_type);
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

MoeAssembler::MoeAssembler(const MoeConfig& config, const AssembleOptions& options)
    : config_(config), options_(options) {
  base_ = std::make_unique<io::Checkpoint>(config.base_model);
  base_config_ = io::read_model_config(base_->directory());
  const std::string base_where = (base_->directory() / "config.json").string();
  check_dense_source(base_config_, base_where);
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
  const int64_t L = base_config_.num_layers, D = base_config_.hidden_size,
                I = base_config_.intermediate_size;
  const std::string base_tokenizer = tokenizer_text(base_->directory());
  for (const ExpertConfig& e : config.experts) {
    auto ck = std::make_unique<io::Checkpoint>(e.source_model);
    const io::ModelConfig c = io::read_model_config(ck->directory());
    const std::string where = (ck->directory() / "config.json").string();
    check_dense_source(c, where);
    if (c.vocab_size != base_config_.vocab_size) {
      fail("{}: vocabulary of {} tokens differs from the base's {} ({})", where, c.vocab_size,
           base_config_.vocab_size, base_where);
    }
    const std::string tok = tokenizer_text(ck->directory());
    if (!tok.empty() && !base_tokenizer.empty() && tok != base_tokenizer) {
      fail("{}: tokenizer.json differs from the base's ({}); experts must share the vocabulary",
           (ck->directory() / "tokenizer.json").string(), base_->directory().string());
    }
    if (c.num_layers != L || c.hidden_size != D || c.intermediate_size != I) {
      fail("{}: {} layers, hidden {}, intermediate {}; the base has {}, {}, {}", where,
           c.num_layers, c.hidden_size, c.intermediate_size, L, D, I);
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
    experts_.push_back(std::move(ck));
  }
  // Output tensors: the base's non-MLP tensors, then per layer the router and the experts.
  for (const std::string& name : base_->names()) {
    if (is_dense_mlp(name)) continue;
    const io::TensorInfo& info = base_->info(name);
    if (!tensor::is_float_dtype(info.dtype)) {
      fail("{}: tensor '{}' has dtype {}", base_->path().string(), name,
           tensor::dtype_name(info.dtype));
    }
    base_names_.push_back(name);
    specs_.push_back({name, dtype_, info.shape});
  }
  const int64_t E = experts();
  for (int64_t l = 0; l < L; ++l) {
    if (options_.fused) {
      const std::string p = fmt::format("model.layers.{}.mlp", l);
      router_index_.push_back(specs_.size());
      specs_.push_back({p + ".gate.weight", dtype_, {E, D}});
      specs_.push_back({p + ".experts.gate_up_proj", dtype_, {E, 2 * I, D}});
      specs_.push_back({p + ".experts.down_proj", dtype_, {E, D, I}});
    } else {
      const std::string p = fmt::format("model.layers.{}.block_sparse_moe", l);
      router_index_.push_back(specs_.size());
      specs_.push_back({p + ".gate.weight", dtype_, {E, D}});
      for (int64_t e = 0; e < E; ++e) {
        specs_.push_back({fmt::format("{}.experts.{}.w1.weight", p, e), dtype_, {I, D}});
        specs_.push_back({fmt::format("{}.experts.{}.w2.weight", p, e), dtype_, {D, I}});
        specs_.push_back({fmt::format("{}.experts.{}.w3.weight", p, e), dtype_, {I, D}});
      }
    }
  }
}

nlohmann::ordered_json MoeAssembler::output_config() const {
  nlohmann::ordered_json j = base_config_.raw;
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["num_local_experts"] = experts();
  j["num_experts_per_tok"] = config_.experts_per_token;
  j["sliding_window"] = nullptr;
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
  const ExpertConfig& ec = config_.experts[static_cast<size_t>(expert)];
  tensor::Tensor t = experts_[expert]->load_f32(mlp_name(layer, proj));
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
  AMALGAM_CHECK(gates.layers == base_config_.num_layers && gates.experts == experts() &&
                    gates.hidden == base_config_.hidden_size,
                "internal: router rows of the wrong shape");
  for (int64_t l = 0; l < gates.layers; ++l) {
    put(sink, router_index(l), 0, gates.row(l, 0),
        static_cast<size_t>(gates.experts * gates.hidden), dtype_);
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
  write_routers(gates, sink);
  const int64_t L = base_config_.num_layers, E = experts(), D = base_config_.hidden_size,
                I = base_config_.intermediate_size;
  const size_t elem = tensor::dtype_size(dtype_);
  for (int64_t l = 0; l < L; ++l) {
    const size_t r = router_index(l);
    progress.advance(1);
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<float> gate = expert_tensor(e, l, "gate_proj");
      const std::vector<float> up = expert_tensor(e, l, "up_proj");
      const std::vector<float> down = expert_tensor(e, l, "down_proj");
      if (options_.fused) {
        const uint64_t gu = static_cast<uint64_t>(e) * 2 * I * D * elem;
        put(sink, r + 1, gu, gate.data(), gate.size(), dtype_);
        put(sink, r + 1, gu + static_cast<uint64_t>(I * D) * elem, up.data(), up.size(), dtype_);
        put(sink, r + 2, static_cast<uint64_t>(e) * D * I * elem, down.data(), down.size(), dtype_);
      } else {
        const size_t first = r + 1 + static_cast<size_t>(3 * e);
        put(sink, first, 0, gate.data(), gate.size(), dtype_);
        put(sink, first + 1, 0, down.data(), down.size(), dtype_);
        put(sink, first + 2, 0, up.data(), up.size(), dtype_);
        progress.advance(3);
      }
    }
    if (options_.fused) progress.advance(2);
  }
  sink.finish();
  progress.finish();
}

}  // namespace amalgam::moe
