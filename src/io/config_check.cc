#include "io/config_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "core/error.h"

namespace amalgam::io {

namespace {

// Larger than any real model's count of anything config.json states (vocabularies reach 2^18,
// hidden sizes 2^15), small enough that sizing a vector by it cannot exhaust memory.
constexpr int64_t kMaxCount = int64_t{1} << 24;

// "model.layers.12.mlp.up_proj.weight" -> {"model.layers.", 12, ".mlp.up_proj.weight"}.
struct LayerName {
  std::string prefix;
  int64_t index = 0;
  std::string rest;
};

std::optional<LayerName> split_layer(const std::string& name) {
  static const std::string kMarks[] = {"layers.", "h.", "blocks.", "layer."};
  for (const auto& mark : kMarks) {
    for (size_t at = name.find(mark); at != std::string::npos; at = name.find(mark, at + 1)) {
      if (at > 0 && name[at - 1] != '.') continue;
      size_t digits = at + mark.size(), end = digits;
      while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
      if (end == digits || end - digits > 9 || end >= name.size() || name[end] != '.') continue;
      return LayerName{name.substr(0, digits), std::stoll(name.substr(digits, end - digits)),
                       name.substr(end)};
    }
  }
  return std::nullopt;
}

const std::string* find_suffix(const std::vector<std::string>& names, const std::string& suffix) {
  for (const auto& n : names) {
    if (n == suffix || (n.size() > suffix.size() && n.ends_with("." + suffix))) return &n;
  }
  return nullptr;
}

}  // namespace

std::optional<std::string> config_tensor_mismatch(const ModelConfig& c,
                                                  const TensorShapes& tensors) {
  const std::pair<const char*, int64_t> counts[] = {
      {"num_hidden_layers", c.num_layers},
      {"hidden_size", c.hidden_size},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"intermediate_size", c.intermediate_size},
      {"vocab_size", c.vocab_size},
      {"num_local_experts", c.num_experts},
      {"num_experts_per_tok", c.experts_per_token},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"shared_expert_intermediate_size", c.shared_expert_intermediate_size}};
  for (const auto& [key, value] : counts) {
    if (value < 0 || value > kMaxCount) {
      return fmt::format("{} = {} is out of range (0 to {})", key, value, kMaxCount);
    }
  }
  for (const auto& n : tensors.names) {
    if (n.empty()) return std::string("a tensor has an empty name");
  }

  // Layers: the count must match the indices the tensors carry (layers are numbered from 0).
  std::set<int64_t> layers;
  std::map<int64_t, std::set<std::string>> layer0_experts;
  for (const auto& n : tensors.names) {
    if (auto s = split_layer(n)) layers.insert(s->index);
  }
  if (!layers.empty() && c.num_layers > 0) {
    const int64_t present = *layers.rbegin() + 1;
    if (present != c.num_layers || static_cast<int64_t>(layers.size()) != present) {
      return fmt::format(
          "num_hidden_layers = {} but the checkpoint has tensors for {} layer(s) (indices {} to "
          "{})",
          c.num_layers, layers.size(), *layers.begin(), *layers.rbegin());
    }
  }

  if (layers.empty() && c.num_layers > 0 && find_suffix(tensors.names, "embed_tokens.weight")) {
    return fmt::format("num_hidden_layers = {} but the checkpoint has no layer tensors",
                       c.num_layers);
  }

  auto shape_of = [&](const std::string* name) { return tensors.shape(*name); };
  if (const std::string* embed = find_suffix(tensors.names, "embed_tokens.weight")) {
    const tensor::Shape s = shape_of(embed);
    if (s.size() != 2) {
      return fmt::format("tensor '{}' has shape {}, expected [vocab, hidden]", *embed,
                         tensor::shape_string(s));
    }
    if (s[0] != c.vocab_size) {
      return fmt::format("vocab_size = {} but tensor '{}' has {} rows", c.vocab_size, *embed,
                         s[0]);
    }
    if (s[1] != c.hidden_size) {
      return fmt::format("hidden_size = {} but tensor '{}' has {} columns", c.hidden_size, *embed,
                         s[1]);
    }
  }
  // Attention and MLP widths in every layer (slices of models of different widths show here).
  struct Width {
    const char* suffix;
    const char* what;
    int64_t rows;
  };
  const Width widths[] = {
      {".self_attn.q_proj.weight", "num_attention_heads x head_dim", c.num_heads * c.head_dim},
      {".self_attn.k_proj.weight", "num_key_value_heads x head_dim", c.num_kv_heads * c.head_dim},
      {".mlp.gate_proj.weight", "intermediate_size", c.intermediate_size},
      {".mlp.up_proj.weight", "intermediate_size", c.intermediate_size},
  };
  for (const auto& n : tensors.names) {
    auto s = split_layer(n);
    if (!s) continue;
    for (const auto& w : widths) {
      if (s->rest != w.suffix) continue;
      const tensor::Shape shape = tensors.shape(n);
      if (shape.size() != 2 || shape[0] != w.rows) {
        return fmt::format("{} = {} but tensor '{}' has shape {}", w.what, w.rows, n,
                           tensor::shape_string(shape));
      }
      if (shape[1] != c.hidden_size) {
        return fmt::format("hidden_size = {} but tensor '{}' has shape {}", c.hidden_size, n,
                           tensor::shape_string(shape));
      }
    }
  }
  // Experts: per-expert names (Mixtral) or a stacked first dimension (transformers 5).
  if (c.num_experts > 0) {
    std::set<int64_t> experts;
    int64_t stacked = -1;
    const int64_t first = layers.empty() ? -1 : *layers.begin();
    for (const auto& n : tensors.names) {
      auto s = split_layer(n);
      if (!s || s->index != first) continue;
      const size_t at = s->rest.find(".experts.");
      if (at == std::string::npos) continue;
      size_t digits = at + 9, end = digits;
      while (end < s->rest.size() && std::isdigit(static_cast<unsigned char>(s->rest[end]))) ++end;
      if (end > digits && end - digits <= 9) {
        experts.insert(std::stoll(s->rest.substr(digits, end - digits)));
      } else {
        const tensor::Shape shape = tensors.shape(n);
        if (!shape.empty()) stacked = shape[0];
      }
    }
    const int64_t present = !experts.empty() ? static_cast<int64_t>(experts.size()) : stacked;
    if (present >= 0 && present != c.num_experts) {
      return fmt::format("{} = {} but the first layer holds {} expert(s)",
                         c.model_type == "qwen2_moe" ? "num_experts" : "num_local_experts",
                         c.num_experts, present);
    }
  }
  return std::nullopt;
}

void check_config_against_tensors(const ModelConfig& config, const TensorShapes& tensors,
                                  const std::string& where) {
  if (auto problem = config_tensor_mismatch(config, tensors)) {
    fail("{}: {}; config.json and the weights disagree", where, *problem);
  }
}

}  // namespace amalgam::io
