#include "moe/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/yaml.h"
#include "recipe/diagnostics.h"
#include "recipe/yaml_reader.h"

namespace amalgam::moe {

namespace {

using recipe::fail_at;
using recipe::YamlReader;

double number(const YamlReader& r, const yaml::Node& node, const std::string& path) {
  if (node.is_scalar()) {
    const std::string& s = node.scalar();
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(v)) return v;
  }
  fail_at(r.where(), YamlReader::location(node), "{} must be a number", path);
}

std::vector<std::string> strings(const YamlReader& r, const yaml::Node& node,
                                 const std::string& path) {
  std::vector<std::string> out;
  if (node.is_null()) return out;
  const auto items = r.sequence(node, path, "a list of prompts");
  for (size_t i = 0; i < items.size(); ++i) {
    out.push_back(r.string(items[i], fmt::format("{}[{}]", path, i)));
  }
  return out;
}

ExpertConfig parse_expert(const YamlReader& r, const yaml::Node& node, const std::string& path) {
  ExpertConfig e;
  const auto entries = r.entries(node, path);
  r.check_keys(entries,
               {"source_model", "positive_prompts", "negative_prompts", "noise_scale",
                "residual_scale", "calibration_data"},
               path);
  bool has_source = false;
  for (const auto& [key, value, at] : entries) {
    const std::string p = path + "." + key;
    if (key == "source_model") {
      e.source_model = r.string(value, p);
      has_source = true;
    } else if (key == "positive_prompts") {
      e.positive_prompts = strings(r, value, p);
    } else if (key == "negative_prompts") {
      e.negative_prompts = strings(r, value, p);
    } else if (key == "noise_scale") {
      e.noise_scale = number(r, value, p);
      if (*e.noise_scale < 0) fail_at(r.where(), at, "{} must not be negative", p);
    } else if (key == "residual_scale") {
      e.residual_scale = number(r, value, p);
    } else if (key == "calibration_data") {
      e.calibration_data = r.string(value, p);
    }
  }
  if (!has_source || e.source_model.empty()) {
    fail_at(r.where(), YamlReader::location(node), "{} needs a source_model", path);
  }
  return e;
}

GateMode parse_gate_mode(const YamlReader& r, const yaml::Node& node) {
  const std::string s = r.string(node, "gate_mode");
  if (s == "hidden") return GateMode::kHidden;
  if (s == "cheap_embed") return GateMode::kCheapEmbed;
  if (s == "random") return GateMode::kRandom;
  if (s == "uniform_random") return GateMode::kUniformRandom;
  if (s == "calibrated") return GateMode::kCalibrated;
  fail_at(
      r.where(), YamlReader::location(node),
      "gate_mode '{}' is not one of hidden, cheap_embed, random, uniform_random, "
      "calibrated{}",
      s,
      recipe::did_you_mean(s, {"hidden", "cheap_embed", "random", "uniform_random", "calibrated"}));
}

}  // namespace

std::string_view gate_mode_name(GateMode mode) {
  switch (mode) {
    case GateMode::kHidden:
      return "hidden";
    case GateMode::kCheapEmbed:
      return "cheap_embed";
    case GateMode::kRandom:
      return "random";
    case GateMode::kUniformRandom:
      return "uniform_random";
    case GateMode::kCalibrated:
      return "calibrated";
  }
  return "?";
}

MoeConfig parse_moe_config(const std::string& text, const std::string& where) {
  const yaml::Node root = yaml::load(text, where);
  YamlReader r(where);
  MoeConfig c;
  c.where = where;
  const auto entries = r.entries(root, "the MoE config");
  r.check_keys(entries,
               {"base_model", "architecture", "gate_mode", "dtype", "experts_per_token", "experts",
                "shared_experts", "calibration"},
               "the MoE config");
  bool has_base = false;
  for (const auto& [key, value, at] : entries) {
    if (key == "base_model") {
      c.base_model = r.string(value, key);
      has_base = true;
    } else if (key == "architecture") {
      c.architecture = value.is_null() ? "" : r.string(value, key);
    } else if (key == "gate_mode") {
      c.gate_mode = parse_gate_mode(r, value);
    } else if (key == "dtype") {
      c.dtype = value.is_null() ? "" : r.string(value, key);
    } else if (key == "experts_per_token") {
      c.experts_per_token = r.integer(value, key);
    } else if (key == "experts" || key == "shared_experts") {
      if (value.is_null()) continue;
      const auto items = r.sequence(value, key, "a list of experts");
      auto& list = key == "experts" ? c.experts : c.shared_experts;
      for (size_t i = 0; i < items.size(); ++i) {
        list.push_back(parse_expert(r, items[i], fmt::format("{}[{}]", key, i)));
      }
    } else if (key == "calibration") {
      const auto cal = r.entries(value, key);
      r.check_keys(cal, {"l2", "holdout", "max_iterations", "bos", "bos_expert"}, key);
      for (const auto& [k, v, a] : cal) {
        const std::string p = key + "." + k;
        if (k == "l2") {
          c.calibration.l2 = number(r, v, p);
          if (c.calibration.l2 < 0) fail_at(where, a, "{} must not be negative", p);
        } else if (k == "holdout") {
          c.calibration.holdout = number(r, v, p);
          if (c.calibration.holdout < 0 || c.calibration.holdout >= 1) {
            fail_at(where, a, "{} must be in [0, 1)", p);
          }
        } else if (k == "bos") {
          auto index = [&](const yaml::Node& n, const std::string& path) {
            const int64_t e = n.is_scalar() && n.scalar() != "auto" && n.scalar() != "none"
                                  ? r.integer(n, path)
                                  : -1;
            if (e < 0 || e > 9999) {
              fail_at(where, YamlReader::location(n),
                      "{} must be auto, none, an expert's index or "
                      "a list of indices (one per layer)",
                      p);
            }
            return static_cast<int32_t>(e);
          };
          if (v.is_sequence()) {
            const auto items = r.sequence(v, p, "a list of expert indices");
            for (size_t i = 0; i < items.size(); ++i) {
              c.calibration.bos_experts.push_back(index(items[i], fmt::format("{}[{}]", p, i)));
            }
          } else if (v.is_scalar() && (v.scalar() == "auto" || v.scalar() == "none")) {
            c.calibration.bos_auto = v.scalar() == "auto";
          } else {
            c.calibration.bos_experts.push_back(index(v, p));
          }
        } else if (k == "bos_expert") {
          const auto items = r.sequence(v, p, "a list of weights, one per expert");
          for (size_t i = 0; i < items.size(); ++i) {
            c.calibration.bos_expert.push_back(number(r, items[i], fmt::format("{}[{}]", p, i)));
          }
        } else if (k == "max_iterations") {
          c.calibration.max_iterations = r.integer(v, p);
          if (c.calibration.max_iterations < 1) fail_at(where, a, "{} must be positive", p);
        }
      }
    }
  }
  if (!has_base || c.base_model.empty()) fail("{}: base_model is required", where);
  return c;
}

MoeConfig read_moe_config(const std::string& path) {
  return parse_moe_config(core::read_text_file(path), path);
}

namespace {

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// mergekit's output architectures, in its order, and whether `architecture:` names each.
bool names(const MoeConfig& c, std::string_view arch_name) {
  return lower(std::string(arch_name)).starts_with(lower(c.architecture));
}

}  // namespace

int64_t routed_experts(const MoeConfig& c) {
  return static_cast<int64_t>(c.experts.size()) + (c.calibration.bos_expert.empty() ? 0 : 1);
}

OutputArch output_arch(const MoeConfig& c) {
  if (!c.architecture.empty() && !names(c, "mixtral")) return OutputArch::kQwen2Moe;
  if (c.architecture.empty() && !c.shared_experts.empty()) return OutputArch::kQwen2Moe;
  return OutputArch::kMixtral;
}

void validate(const MoeConfig& c, bool allow_same_model) {
  const std::string& w = c.where;
  if (c.experts.empty()) fail("{}: no experts: list at least one under 'experts'", w);
  const std::vector<double>& mix = c.calibration.bos_expert;
  if (!mix.empty()) {
    if (c.gate_mode != GateMode::kCalibrated) {
      fail("{}: calibration.bos_expert needs gate_mode calibrated (its router row is fitted)", w);
    }
    if (mix.size() != c.experts.size()) {
      fail("{}: calibration.bos_expert lists {} weights for {} experts", w, mix.size(),
           c.experts.size());
    }
    if (std::all_of(mix.begin(), mix.end(), [](double x) { return x == 0.0; })) {
      fail("{}: calibration.bos_expert: every weight is 0", w);
    }
  }
  for (int32_t e : c.calibration.bos_experts) {
    if (e >= routed_experts(c)) {
      fail("{}: calibration.bos names expert {} but the experts are numbered 0 to {}{}", w, e,
           routed_experts(c) - 1, mix.empty() ? "" : " (the last one is bos_expert)");
    }
  }
  if (c.experts_per_token < 1) {
    fail("{}: experts_per_token must be at least 1, got {}", w, c.experts_per_token);
  }
  if (static_cast<int64_t>(c.experts.size()) < c.experts_per_token) {
    fail("{}: experts_per_token is {} but only {} experts are listed", w, c.experts_per_token,
         c.experts.size());
  }
  // mergekit's output architectures are Mixtral, DeepSeek MoE, Qwen MoE and Qwen3 MoE;
  // amalgam writes the first and the third.
  if (!c.architecture.empty() && !names(c, "mixtral") && !names(c, "qwen moe")) {
    fail(
        "{}: architecture '{}': amalgam writes 'mixtral' (no shared experts) and 'qwen' (Qwen MoE, "
        "one shared expert); mergekit's DeepSeek and Qwen3 MoE outputs are not written",
        w, c.architecture);
  }
  if (output_arch(c) == OutputArch::kMixtral && !c.shared_experts.empty()) {
    fail("{}: architecture '{}': Mixtral has no shared experts (use architecture: qwen)", w,
         c.architecture);
  }
  if (output_arch(c) == OutputArch::kQwen2Moe) {
    if (c.shared_experts.size() != 1) {
      fail("{}: the Qwen MoE output needs exactly one entry under shared_experts, got {}", w,
           c.shared_experts.size());
    }
    // mergekit's Qwen MoE refuses a shared expert without prompts (unless gate_mode random) and
    // then picks its DeepSeek output, which amalgam does not write.
    const ExpertConfig& s = c.shared_experts[0];
    if (c.gate_mode != GateMode::kRandom && s.positive_prompts.empty()) {
      fail(
          "{}: shared_experts[0] ({}) has no positive_prompts; the Qwen MoE's shared-expert gate "
          "needs them (gate_mode {})",
          w, s.source_model, gate_mode_name(c.gate_mode));
    }
    if (!s.calibration_data.empty()) {
      fail(
          "{}: shared_experts[0].calibration_data: the shared expert is always active; its gate "
          "comes from its prompts",
          w);
    }
  }
  // mergekit exempts only `random`; calibrated may take its text from calibration_data instead.
  if (c.gate_mode != GateMode::kRandom) {
    for (size_t i = 0; i < c.experts.size(); ++i) {
      const ExpertConfig& e = c.experts[i];
      const bool calibrated_file =
          c.gate_mode == GateMode::kCalibrated && !e.calibration_data.empty();
      if (e.positive_prompts.empty() && !calibrated_file) {
        fail("{}: experts[{}] ({}) has no positive_prompts; gate_mode {} needs them", w, i,
             e.source_model, gate_mode_name(c.gate_mode));
      }
    }
  }
  if (c.experts.size() > 1 && c.gate_mode != GateMode::kRandom &&
      c.gate_mode != GateMode::kCalibrated) {
    bool all_same = true;
    for (const ExpertConfig& e : c.experts) {
      all_same = all_same && e.positive_prompts == c.experts[0].positive_prompts &&
                 e.negative_prompts == c.experts[0].negative_prompts;
    }
    if (all_same) {
      fail("{}: every expert has the same prompts; the router could not tell them apart", w);
    }
  }
  if (c.experts.size() > 1 && !allow_same_model) {
    std::set<std::string> models;
    for (const ExpertConfig& e : c.experts) models.insert(e.source_model);
    if (models.size() == 1) {
      fail(
          "{}: every expert is the same model ({}); this is not useful without training "
          "(pass --i-understand-this-is-not-useful-without-training to build it anyway)",
          w, c.experts[0].source_model);
    }
  }
}

}  // namespace amalgam::moe
