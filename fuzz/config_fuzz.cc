// config.json on arbitrary bytes: strict JSON, the model config, and the check against a fixed
// set of tensors (the zoo's base model shapes).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/json.h"
#include "io/config_check.h"
#include "io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    amalgam::core::parse_json_strict(text, "config.json");
    const auto j = nlohmann::ordered_json::parse(text);
    const auto config = amalgam::io::parse_model_config(j, "config.json");
    amalgam::io::TensorShapes shapes;
    shapes.names = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                    "model.layers.1.block_sparse_moe.experts.0.w1.weight", "lm_head.weight"};
    shapes.shape = [](const std::string& n) -> amalgam::tensor::Shape {
      if (n.find("k_proj") != std::string::npos) return {64, 128};
      if (n.find("gate_proj") != std::string::npos || n.find("w1") != std::string::npos) {
        return {384, 128};
      }
      if (n.find("q_proj") != std::string::npos) return {128, 128};
      return {1024, 128};
    };
    (void)amalgam::io::config_tensor_mismatch(config, shapes);
  } catch (const amalgam::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
