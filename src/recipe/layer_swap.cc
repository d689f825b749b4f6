#include "recipe/layer_swap.h"

#include <fmt/format.h>

#include <vector>

#include "core/error.h"
#include "io/hf_config.h"
#include "recipe/diagnostics.h"
#include "recipe/yaml_reader.h"

namespace amalgam::recipe {

namespace fs = std::filesystem;

namespace {

// Tensors outside the layers always come from the base: its weight is 1 on them, the donor's 0.
std::string weight_setting(double layer_weight, bool donor) {
  const double outside = donor ? 0.0 : 1.0;
  return fmt::format(
      "[{{filter: embed_tokens, value: {0}}}, {{filter: lm_head, value: {0}}}, "
      "{{filter: model.norm, value: {0}}}, {{value: {1}}}]",
      outside, layer_weight);
}

struct Zone {
  int64_t begin, end;
  double donor_weight;  // 0: base only, 1: donor only, else a linear average
  std::string what;
};

}  // namespace

bool is_layer_swap(const std::string& yaml_text) {
  try {
    const yaml::Node root = yaml::load(yaml_text, "recipe");
    return root.is_map() && root["layer_swap"];
  } catch (const Error&) {  // malformed: not this form (the recipe parser reports it)
    return false;
  }
}

std::string expand_layer_swap(const std::string& yaml_text, const std::string& where,
                              const fs::path& base_dir) {
  const yaml::Node root = yaml::load(yaml_text, where);
  YamlReader r(where);
  const auto top_entries = r.entries(root, "the recipe");
  r.check_keys(top_entries, {"layer_swap", "dtype", "out_dtype", "tokenizer_source"},
               "a layer_swap recipe");
  std::string base, donor;
  int64_t bottom = -1, top = -1, transition = 0;
  double transition_weight = 0.5;
  std::string passthrough_keys;
  for (const auto& [key, value, at] : top_entries) {
    if (key != "layer_swap") {
      passthrough_keys += fmt::format("{}: {}\n", key, r.string(value, key));
      continue;
    }
    const auto entries = r.entries(value, key);
    r.check_keys(entries, {"base", "donor", "bottom", "top", "transition", "transition_weight"},
                 key);
    for (const auto& [k, v, a] : entries) {
      const std::string p = "layer_swap." + k;
      if (k == "base") base = r.string(v, p);
      if (k == "donor") donor = r.string(v, p);
      if (k == "bottom") bottom = r.integer(v, p);
      if (k == "top") top = r.integer(v, p);
      if (k == "transition") transition = r.integer(v, p);
      if (k == "transition_weight") {
        const std::string s = r.string(v, p);
        char* end = nullptr;
        transition_weight = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size() || !(transition_weight >= 0) ||
            transition_weight > 1) {
          fail_at(where, a, "{} must be a number in [0, 1]", p);
        }
      }
      if ((k == "bottom" || k == "top" || k == "transition") && r.integer(v, p) < 0) {
        fail_at(where, a, "{} must not be negative", p);
      }
    }
  }
  if (base.empty()) fail("{}: layer_swap.base is required", where);
  if (donor.empty()) fail("{}: layer_swap.donor is required", where);
  if (bottom < 0) fail("{}: layer_swap.bottom is required", where);
  if (top < 0) fail("{}: layer_swap.top is required", where);
  auto path = [&](const std::string& m) {
    const fs::path p(m);
    return p.is_absolute() ? p : base_dir / p;
  };
  const io::ModelConfig bc = io::read_model_config(path(base));
  const io::ModelConfig dc = io::read_model_config(path(donor));
  const int64_t L = bc.num_layers;
  if (dc.num_layers != L) {
    fail("{}: the donor '{}' has {} layers, the base '{}' {}; layer swapping needs equal depths",
         where, donor, dc.num_layers, base, L);
  }
  const int64_t tb = bottom > 0 ? transition : 0, tt = top > 0 ? transition : 0;
  if (bottom + top + tb + tt > L) {
    fail("{}: bottom {} + top {} + transition layers {} exceed the model's {} layers", where,
         bottom, top, tb + tt, L);
  }
  std::vector<Zone> zones = {
      {0, bottom, 1.0, "donor's bottom layers"},
      {bottom, bottom + tb, transition_weight, "transition"},
      {bottom + tb, L - top - tt, 0.0, "base"},
      {L - top - tt, L - top, transition_weight, "transition"},
      {L - top, L, 1.0, "donor's top layers"},
  };
  std::string out = fmt::format(
      "# Expanded from layer_swap: donor '{}' layers [0, {}) and [{}, {}), base '{}' between, "
      "{} transition layer(s) per swapped zone at donor weight {}; embed_tokens, model.norm and "
      "lm_head from the base.\nmerge_method: linear\nbase_model: {}\n{}slices:\n",
      donor, bottom, L - top, L, base, transition, transition_weight, base, passthrough_keys);
  for (const Zone& z : zones) {
    if (z.end <= z.begin) continue;
    out += fmt::format("  # {}\n  - sources:\n", z.what);
    if (z.donor_weight > 0) {
      out += fmt::format(
          "      - model: {}\n        layer_range: [{}, {}]\n        parameters:\n"
          "          weight: {}\n",
          donor, z.begin, z.end, weight_setting(z.donor_weight, true));
    }
    out += fmt::format(
        "      - model: {}\n        layer_range: [{}, {}]\n        parameters:\n"
        "          weight: {}\n",
        base, z.begin, z.end, weight_setting(1.0 - z.donor_weight, false));
  }
  return out;
}

}  // namespace amalgam::recipe
