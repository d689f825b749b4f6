// mergekit-moe's configuration (MoEMergeConfig), unchanged, plus amalgam's `gate_mode: calibrated`
// and its `calibration_data:` / `calibration:` keys. Parsing checks types and keys; validate()
// applies mergekit's rules (spec mergekit-compat.md section 5) that need no weights.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace amalgam::moe {

enum class GateMode { kHidden, kCheapEmbed, kRandom, kUniformRandom, kCalibrated };

// The checkpoint written: Mixtral (no shared expert) or Qwen2-MoE (one shared expert behind a
// sigmoid gate), chosen as mergekit-moe chooses (moe/config.cc).
enum class OutputArch { kMixtral, kQwen2Moe };

std::string_view gate_mode_name(GateMode mode);

struct ExpertConfig {
  std::string source_model;
  std::vector<std::string> positive_prompts;
  std::vector<std::string> negative_prompts;
  std::optional<double> noise_scale;     // N(0, noise_scale^2) added to the expert's MLP weights
  std::optional<double> residual_scale;  // multiplies down_proj
  std::string calibration_data;          // calibrated: text / JSON / JSONL file (else the prompts)
};

struct CalibrationConfig {
  // L2 penalty (lambda / 2) ||W||^2 added to the mean token cross-entropy of each layer's fit.
  double l2 = 1e-4;
  // Every 1/holdout-th sample of each expert is held out to measure the router's accuracy.
  double holdout = 0.2;
  int64_t max_iterations = 500;
  // bos: auto: choose where BOS goes per layer by held-out nll (moe/calibrate.h); bos: none
  // (default): BOS states are left out of the fit.
  bool bos_auto = false;
  // bos: N: BOS states labelled with expert N (its index under `experts`) in every layer;
  // bos: [N0, N1, ...]: expert N_l in layer l (one entry per layer).
  std::vector<int32_t> bos_experts;
  // bos_expert: [w0, w1, ...]: one more routed expert (index = the number of experts) whose MLP
  // is sum_e w_e * expert e's MLP. No calibration text is labelled with it; `bos` may name it.
  // A BOS state shared by every task can then take a mix of the experts' computation, which
  // one-expert-per-token routing cannot otherwise express (docs/moe.md).
  std::vector<double> bos_expert;
};

struct MoeConfig {
  std::string where;  // the file, for messages
  std::string base_model;
  std::string architecture;  // "", or a prefix of mergekit's "mixtral" / "qwen moe"
  GateMode gate_mode = GateMode::kHidden;
  std::string dtype;  // torch name; "" = the base's
  int64_t experts_per_token = 2;
  std::vector<ExpertConfig> experts;
  std::vector<ExpertConfig> shared_experts;
  CalibrationConfig calibration;
};

// Experts the router chooses from: the listed experts, then calibration.bos_expert's mix.
int64_t routed_experts(const MoeConfig& c);

MoeConfig parse_moe_config(const std::string& text, const std::string& where);
MoeConfig read_moe_config(const std::string& path);

// mergekit's rules: experts present, 1 <= experts_per_token <= experts, prompts for every expert
// unless gate_mode is random, prompt sets not all identical, experts not all the same model
// (unless allow_same_model), and the output architectures amalgam writes: Mixtral without
// shared experts, Qwen MoE with exactly one shared expert that has prompts (unless random).
void validate(const MoeConfig& config, bool allow_same_model);

// The output architecture of a valid config: `architecture:` when given (mergekit matches it as
// a case-insensitive prefix of "Mixtral", "Qwen MoE"), else Qwen MoE when a shared expert is
// listed, else Mixtral.
OutputArch output_arch(const MoeConfig& config);

}  // namespace amalgam::moe
