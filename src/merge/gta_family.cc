// The generalized task arithmetic family, one configuration per method (mergekit's registry):
// sparsifier, consensus, and the normalize / rescale defaults.
#include "merge/gta.h"
#include "merge/registry.h"

namespace amalgam::merge {

namespace {
constexpr const char* kTies = "https://arxiv.org/abs/2306.01708";
constexpr const char* kDare = "https://arxiv.org/abs/2311.03099";
constexpr const char* kBreadcrumbs = "https://arxiv.org/abs/2312.06795";
constexpr const char* kDella = "https://arxiv.org/abs/2406.11617";
using S = Sparsifier;
using C = Consensus;
}  // namespace

// clang-format off
std::unique_ptr<MergeMethod> make_task_arithmetic() { return make_gta({"task_arithmetic", "Task Arithmetic", "https://arxiv.org/abs/2212.04089", "adds the weighted task vectors to the base", S::kNone, C::kNone, false, false}); }
std::unique_ptr<MergeMethod> make_ties() { return make_gta({"ties", "TIES", kTies, "top-k task vectors, sign consensus, mean of the agreeing", S::kMagnitude, C::kSum, true, false}); }
std::unique_ptr<MergeMethod> make_dare_ties() { return make_gta({"dare_ties", "DARE TIES", kDare, "random drop and L1 rescale of task vectors, TIES sign consensus", S::kRandom, C::kSum, false, true}); }
std::unique_ptr<MergeMethod> make_dare_linear() { return make_gta({"dare_linear", "DARE", kDare, "random drop and L1 rescale of task vectors, summed", S::kRandom, C::kNone, false, true}); }
std::unique_ptr<MergeMethod> make_breadcrumbs() { return make_gta({"breadcrumbs", "Model Breadcrumbs", kBreadcrumbs, "drops the largest and smallest task-vector entries", S::kMagnitudeOutliers, C::kNone, false, false}); }
std::unique_ptr<MergeMethod> make_breadcrumbs_ties() { return make_gta({"breadcrumbs_ties", "Model Breadcrumbs with TIES", kBreadcrumbs, "breadcrumbs with TIES sign consensus", S::kMagnitudeOutliers, C::kSum, false, false}); }
std::unique_ptr<MergeMethod> make_della() { return make_gta({"della", "DELLA", kDella, "magnitude-ranked random drop (MAGPRUNE), sign consensus", S::kRankSampling, C::kSum, true, true}); }
std::unique_ptr<MergeMethod> make_della_linear() { return make_gta({"della_linear", "DELLA", kDella, "magnitude-ranked random drop (MAGPRUNE), summed", S::kRankSampling, C::kNone, false, true}); }
// clang-format on

}  // namespace amalgam::merge
