// Sparsifiers of task vectors (mergekit sparsify.py) as masks applied while streaming: a mask
// sees one task vector chunk by chunk in ascending order (chunks hold whole rows of the last
// dimension) and zeroes the elements it drops. Masks that need whole-tensor statistics (top-k
// thresholds) are built from them beforehand; random masks draw from a counter-based generator,
// so a mask gives the same decisions however the tensor is chunked.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>

#include "merge/counter_rng.h"
#include "merge/sparsify.h"

namespace amalgam::merge {

class DeltaMask {
 public:
  virtual ~DeltaMask() = default;
  // delta holds elements [begin, begin + n) of the task vector; zeroes the dropped ones.
  virtual void apply(size_t begin, float* delta, size_t n) = 0;
  // d = mask(x - b) * scale: what the merge needs, fused where a mask can do it in one loop.
  virtual void apply_delta(size_t begin, const float* x, const float* b, float scale, float* d,
                           size_t n);
};

// Keeps everything (density >= 1).
std::unique_ptr<DeltaMask> keep_all_mask();
// TIES: the k largest magnitudes, as found by find_magnitude_cuts.
std::unique_ptr<DeltaMask> magnitude_mask(const MagnitudeCut& cut);
// Model Breadcrumbs: drops the `top` largest and the smallest magnitudes, keeping what `keep`
// keeps (the n - bottom largest) unless `top` keeps it too (nullopt: drop none at the top).
std::unique_ptr<DeltaMask> band_mask(const MagnitudeCut& keep, std::optional<MagnitudeCut> top);
// DARE: each element kept with probability density.
std::unique_ptr<DeltaMask> random_mask(CounterRng rng, double density);
// DELLA (MAGPRUNE): within each row of `cols` elements, the element of ascending magnitude rank r
// is kept with probability (density - epsilon) + 2 epsilon r / (cols - 1); p = density for rows
// of one element (where mergekit divides 0 by 0).
std::unique_ptr<DeltaMask> rank_sampling_mask(CounterRng rng, double density, double epsilon,
                                              size_t cols);

}  // namespace amalgam::merge
