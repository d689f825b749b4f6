// NaN/Inf weights make every logit NaN without any error further on; the engine refuses them when
// a model is loaded (one vectorised pass over the weights, about as fast as reading them, done
// in parallel) and names the tensor and element. `--no-check-finite` skips it.
#pragma once

#include <string>

#include "infer/model.h"

namespace amalgam::infer {

// Process-wide default for models loaded from files (set by the CLI's --no-check-finite).
void set_check_finite_on_load(bool check);
bool check_finite_on_load();

// Throws "WHERE: tensor 'T' element i is NaN|Inf" for the first non-finite float weight.
void check_finite_weights(const WeightMap& weights, const std::string& where);
// The same for matrices in a GGUF block type (their values, dequantised row by row).
void check_finite_quantized(const QuantizedMap& quantized, const std::string& where);

}  // namespace amalgam::infer
