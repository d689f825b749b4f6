// The built-in merge methods. Each lives in its own file and exposes one factory, listed once in
// methods.def (an explicit list: self-registration is dropped by static linking).
#pragma once

#include <memory>
#include <string>

#include "merge/method.h"

namespace amalgam::merge {

#define AMALGAM_METHOD(name) std::unique_ptr<MergeMethod> make_##name();
#include "merge/methods.def"
#undef AMALGAM_METHOD

// Parameter specs shared by several methods.
// A per-model weight: required, any real value; searched in [0, 1].
ParamSpec weight_spec();
// A per-model keep fraction in [0, 1] (default 1: keep everything); searched in [0, 1].
ParamSpec density_spec();
// A global on/off switch.
ParamSpec flag_spec(std::string name, bool default_value, std::string help);
// A global real parameter.
ParamSpec real_spec(std::string name, std::optional<double> default_value, double min, double max,
                    std::string help);

// The chunk merger that copies input `input` unchanged (a tensor only one model has, nothing
// selected, ...).
std::unique_ptr<ChunkMerger> copy_input(size_t input);

// Shared checks for method implementations.
// Index into entry.sources of the base model's tensor; throws if the plan has none.
size_t require_base(const PlanEntry& entry, std::string_view method);
void require_inputs(const PlanEntry& entry, std::string_view method, size_t at_least);

}  // namespace amalgam::merge
