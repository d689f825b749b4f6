// Generalized task arithmetic (mergekit GTATask): task vectors d_i = X_i - B, each sparsified by
// the method's sparsifier (and L1-rescaled when `rescale`), weighted D_i = w_i d_i, optionally
// combined by a sign consensus, normalised by the (agreeing) weights, scaled by lambda, added back
// to the base. task_arithmetic, ties, dare_*, breadcrumbs*, della* are configurations of it.
#pragma once

#include <memory>
#include <string>

#include "merge/method.h"

namespace amalgam::merge {

enum class Sparsifier {
  kNone,               // task arithmetic
  kMagnitude,          // TIES: the int(density n) largest magnitudes
  kMagnitudeOutliers,  // Model Breadcrumbs: drops the largest int(gamma n) and the smallest
  kRandom,             // DARE: Bernoulli(density)
  kRankSampling,       // DELLA: Bernoulli with a probability rising with the magnitude rank
};

enum class Consensus {
  kNone,
  kSum,    // TIES: the sign of sum_i D_i elects (a zero sum elects +)
  kCount,  // the sign held by more models elects (ties +)
};

struct GtaConfig {
  std::string name, title, reference, summary;
  Sparsifier sparsifier = Sparsifier::kNone;
  Consensus consensus = Consensus::kNone;
  bool normalize_default = false;
  bool rescale_default = false;
};

std::unique_ptr<MergeMethod> make_gta(GtaConfig config);

}  // namespace amalgam::merge
