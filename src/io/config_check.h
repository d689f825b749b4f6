// config.json against the tensors it describes. Every count a loader sizes something by (layers,
// hidden size, heads, vocabulary, experts) is compared with the tensors present before anything
// is allocated, so a config claiming 10^9 layers fails at once with both numbers named instead
// of allocating per claimed layer.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "tensor/tensor.h"

namespace amalgam::io {

struct TensorShapes {
  std::vector<std::string> names;
  std::function<tensor::Shape(const std::string&)> shape;  // for a name in `names`
};

// Throws naming `where` (the config file) and the key and tensor that disagree.
void check_config_against_tensors(const ModelConfig& config, const TensorShapes& tensors,
                                  const std::string& where);

// The same check, returning the problem instead of throwing (inspect reports it as a check).
std::optional<std::string> config_tensor_mismatch(const ModelConfig& config,
                                                  const TensorShapes& tensors);

}  // namespace amalgam::io
