// amalgam moe: a MoE config -> a Mixtral model directory. Validates the config and every input
// header first, computes the routers with the engine (or fits them, gate_mode calibrated), and
// writes weights, config.json, the base's tokenizer files and the config into a staging directory
// renamed into place only when complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "moe/calibrate.h"
#include "moe/config.h"

namespace amalgam::moe {

struct BuildOptions {
  bool fused = false;
  bool allow_same_model = false;
  bool force = false;
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 5'000'000'000;
  std::string config_text;  // copied into the output as mergekit_moe_config.yml
};

struct BuildReport {
  std::vector<double> condition_numbers;      // hidden / cheap_embed: per layer
  std::vector<LayerCalibration> calibration;  // calibrated: per layer
  uint64_t weight_bytes = 0;
};

BuildReport build_moe(const MoeConfig& config, const std::filesystem::path& out,
                      const BuildOptions& options);

}  // namespace amalgam::moe
