#include "eval/token_loss.h"

#include <algorithm>
#include <cmath>

namespace amalgam::eval {

std::vector<double> token_losses(const infer::Model& model, const std::vector<int32_t>& ids) {
  std::vector<double> out;
  if (ids.size() < 2) return out;
  infer::KVCache cache = model.new_cache();
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  const infer::ForwardResult r = model.forward(batch, cache);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const auto z = r.row(i);
    const float zmax = *std::max_element(z.begin(), z.end());
    double total = 0.0;
    for (float v : z) total += std::exp(static_cast<double>(v) - zmax);
    out.push_back(std::log(total) + zmax - z[ids[i + 1]]);
  }
  return out;
}

}  // namespace amalgam::eval
