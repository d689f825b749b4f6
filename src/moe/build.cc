#include "moe/build.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/log.h"
#include "infer/model.h"
#include "merge/sink.h"
#include "moe/assemble.h"
#include "moe/router.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::moe {

namespace fs = std::filesystem;

namespace {

// mergekit warns above this condition number of a layer's router matrix.
constexpr double kConditionWarning = 5.0;

constexpr const char* kCopiedFiles[] = {"tokenizer.json", "special_tokens_map.json",
                                        "tokenizer.model", "generation_config.json"};

void write_side_files(const MoeAssembler& a, const fs::path& dir, const BuildOptions& options) {
  core::write_text_file(dir / "config.json", a.output_config().dump(2) + "\n");
  const fs::path src = a.base().directory();
  for (const char* name : kCopiedFiles) {
    if (!fs::exists(src / name)) continue;
    std::error_code ec;
    fs::copy_file(src / name, dir / name, fs::copy_options::overwrite_existing, ec);
    if (ec) fail("{}: cannot copy to {}: {}", (src / name).string(), dir.string(), ec.message());
    core::fsync_path(dir / name);
  }
  // mergekit-moe saves the tokenizer with left padding (the side its router prompts used).
  if (fs::exists(src / "tokenizer_config.json")) {
    nlohmann::ordered_json tc = nlohmann::ordered_json::parse(
        core::read_text_file(src / "tokenizer_config.json"), nullptr, false);
    if (tc.is_discarded() || !tc.is_object()) {
      fail("{}: not a JSON object", (src / "tokenizer_config.json").string());
    }
    tc["padding_side"] = "left";
    core::write_text_file(dir / "tokenizer_config.json", tc.dump(2) + "\n");
  }
  if (!options.config_text.empty()) {
    core::write_text_file(dir / "mergekit_moe_config.yml", options.config_text);
  }
}

}  // namespace

BuildReport build_moe(const MoeConfig& config, const fs::path& out, const BuildOptions& options) {
  validate(config, options.allow_same_model);
  AssembleOptions ao;
  ao.fused = options.fused;
  ao.seed = options.seed;
  const MoeAssembler assembler(config, ao);
  const io::ModelConfig& bc = assembler.base_config();
  const int64_t L = bc.num_layers, E = assembler.experts(), D = bc.hidden_size;
  const bool qwen = assembler.output_arch() == OutputArch::kQwen2Moe;
  if (qwen && (E & (E - 1)) != 0) {
    core::warn("the Qwen MoE has {} experts, not a power of two; llama.cpp will not run it", E);
  }
  // Router rows: the routed experts, then the shared expert's gate (mergekit's order).
  std::vector<ExpertConfig> gated = config.experts;
  if (qwen) gated.push_back(config.shared_experts[0]);
  // Calibration files are read before any computation so that a bad one fails fast.
  if (config.gate_mode == GateMode::kCalibrated) {
    for (const ExpertConfig& e : config.experts) calibration_texts(e);
    const auto& bos = config.calibration.bos_experts;
    if (bos.size() > 1 && static_cast<int64_t>(bos.size()) != L) {
      fail("{}: calibration.bos lists {} experts for {} layers", config.where, bos.size(), L);
    }
  }
  BuildReport report;
  GateVectors gates(L, assembler.gate_rows(), D);
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (config.gate_mode != GateMode::kRandom && config.gate_mode != GateMode::kUniformRandom) {
    tok = std::make_unique<tokenizer::Tokenizer>(
        tokenizer::Tokenizer::from_directory(assembler.base().directory()));
  }
  if (config.gate_mode == GateMode::kHidden || config.gate_mode == GateMode::kCheapEmbed) {
    const std::unique_ptr<infer::Model> base = infer::load_model(config.base_model);
    gates = config.gate_mode == GateMode::kHidden ? hidden_gates(*base, *tok, gated)
                                                  : cheap_embed_gates(*base, *tok, gated);
    report.condition_numbers = condition_numbers(gates);
    for (int64_t l = 0; l < L; ++l) {
      if (report.condition_numbers[l] > kConditionWarning) {
        core::warn(
            "layer {}: router matrix has condition number {:.1f} (> {}); the prompts may "
            "be too similar to tell the experts apart",
            l, report.condition_numbers[l], kConditionWarning);
      }
    }
  } else if (config.gate_mode == GateMode::kRandom ||
             config.gate_mode == GateMode::kUniformRandom) {
    gates = random_gates(L, assembler.gate_rows(), D, config.gate_mode == GateMode::kUniformRandom,
                         options.seed);
  } else if (qwen) {
    // calibrated: the routed rows are fitted below; the shared expert's gate is `hidden`'s row.
    const std::unique_ptr<infer::Model> base = infer::load_model(config.base_model);
    const GateVectors shared = hidden_gates(*base, *tok, {config.shared_experts[0]});
    for (int64_t l = 0; l < L; ++l) {
      std::copy(shared.row(l, 0), shared.row(l, 0) + D, gates.row(l, E));
    }
  }
  core::StagedDirectory staged(out, options.force);
  merge::CheckpointSink disk(staged.path(), options.max_shard_bytes);
  if (config.gate_mode == GateMode::kCalibrated) {
    merge::MemorySink memory;
    assembler.write(gates, memory);
    std::vector<size_t> routers;
    for (int64_t l = 0; l < L; ++l) routers.push_back(assembler.router_index(l));
    report.calibration = calibrate_routers(assembler.output_model_config(), memory, routers,
                                           assembler.dtype(), *tok, config);
    disk.begin(assembler.specs());
    for (size_t i = 0; i < assembler.specs().size(); ++i) {
      const merge::MemoryTensor& t = memory.at(assembler.specs()[i].name);
      disk.write(i, 0, t.bytes.data(), t.bytes.size());
    }
    disk.finish();
  } else {
    assembler.write(gates, disk);
  }
  report.weight_bytes = disk.writer().total_bytes();
  write_side_files(assembler, staged.path(), options);
  staged.commit();
  return report;
}

}  // namespace amalgam::moe
