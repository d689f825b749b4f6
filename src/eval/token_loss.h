// Per-token next-token losses of a text under a model, for Rho-1 token scoring (amalgam score).
#pragma once

#include <cstdint>
#include <vector>

#include "infer/model.h"

namespace amalgam::eval {

// loss[i] = -log P(ids[i + 1] | ids[0..i]) for i in [0, n - 1), in fp64 from fp32 logits.
std::vector<double> token_losses(const infer::Model& model, const std::vector<int32_t>& ids);

}  // namespace amalgam::eval
