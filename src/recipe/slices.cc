#include "recipe/slices.h"

#include <set>


namespace amalgam::recipe {

namespace {

const ParamMap kNoParameters;

std::vector<NormalSlice> from_models(const Recipe& recipe, const ModelSet& models,
                                     std::optional<size_t> base) {
  NormalSlice slice;
  slice.parameters = &kNoParameters;
  slice.path = "models";
  slice.at = recipe.inputs_at;
  slice.base = base;
  bool base_listed = false;
  for (size_t i = 0; i < recipe.models.size(); ++i) {
    const ModelDef& def = recipe.models[i];
    const size_t index = models.index(def.model);
    base_listed = base_listed || index == base;
    slice.sources.push_back(
        NormalSource{index, 0, &def.parameters, fmt::format("models[{}]", i), def.model.at});
  }
  if (base && !base_listed) {
    slice.sources.push_back(
        NormalSource{*base, 0, &kNoParameters, "base_model", recipe.base_model->at});
  }
  const InputModel& first = models[slice.sources[0].model];
  for (const auto& s : slice.sources) {
    const InputModel& m = models[s.model];
    if (m.num_layers != first.num_layers) {
      fail_at(recipe.where, s.at,
              "all inputs to a slice must contain the same number of layers: '{}' has {} but "
              "'{}' has {}; use slices: with explicit layer_range to combine them",
              m.name, m.num_layers, first.name, first.num_layers);
    }
  }
  slice.length = first.num_layers;
  return {std::move(slice)};
}

std::vector<NormalSlice> from_slices(const Recipe& recipe, const ModelSet& models,
                                     std::optional<size_t> base) {
  std::vector<NormalSlice> out;
  for (size_t i = 0; i < recipe.slices.size(); ++i) {
    const SliceDef& def = recipe.slices[i];
    NormalSlice slice;
    slice.parameters = &def.parameters;
    slice.path = fmt::format("slices[{}]", i);
    slice.at = def.at;
    slice.base = def.base_model ? std::optional(models.index(*def.base_model)) : base;
    for (size_t j = 0; j < def.sources.size(); ++j) {
      const SourceDef& src = def.sources[j];
      const std::string path = fmt::format("{}.sources[{}]", slice.path, j);
      const InputModel& m = models[models.index(src.model)];
      const auto [start, end] = src.layer_range;
      if (start < 0 || end < start || end > m.num_layers) {
        fail_at(recipe.where, src.at,
                "{}.layer_range [{}, {}) is out of bounds: model '{}' has {} layers (need 0 <= "
                "start <= end <= {}; end is excluded)",
                path, start, end, m.name, m.num_layers, m.num_layers);
      }
      const int64_t length = end - start;
      if (j == 0) {
        slice.length = length;
      } else if (length != slice.length) {
        const SourceDef& first = def.sources[0];
        fail_at(recipe.where, src.at,
                "{}: All inputs to a slice must contain the same number of layers: '{}' "
                "[{}, {}) has {} but '{}' [{}, {}) has {}",
                slice.path, src.model.path, start, end, length, first.model.path,
                first.layer_range[0], first.layer_range[1], slice.length);
      }
      slice.sources.push_back(
          NormalSource{models.index(src.model), start, &src.parameters, path, src.at});
    }
    out.push_back(std::move(slice));
  }
  return out;
}

void check_method_inputs(const Recipe& recipe, const ModelSet& models, const NormalSlice& slice,
                         const merge::MergeMethod& method) {
  const std::string name(method.name());
  if (method.requires_base()) {
    if (!slice.base) {
      fail_at(recipe.where, recipe.merge_method_at,
              "{} needs a base model: add base_model: <path> (the model the others were "
              "fine-tuned from)",
              name);
    }
    bool listed = false;
    for (const auto& s : slice.sources) listed = listed || s.model == *slice.base;
    if (!listed) {
      fail_at(recipe.where, slice.at,
              "{}: base model '{}' is not among this slice's sources; {} needs it: add it as a "
              "source with the same layer_range length",
              slice.path, models[*slice.base].name, name);
    }
  }
  const auto count = method.info().inputs;
  if (!count || slice.sources.size() == *count) return;
  if (*count == 1) {
    fail_at(recipe.where, slice.at,
            "{}: passthrough copies exactly one model per slice, but this slice has {} sources "
            "(the base model counts when models: is used); split it into one slice per source",
            slice.path, slice.sources.size());
  }
  std::set<size_t> distinct;
  for (const auto& s : slice.sources) distinct.insert(s.model);
  fail_at(recipe.where, slice.at,
          "{}: {} merges exactly {} models (the base and one other), but it has {} input(s) "
          "from {} model(s) (with models:, the base model counts as an input)",
          slice.path, name, *count, slice.sources.size(), distinct.size());
}

}  // namespace

std::vector<NormalSlice> normalize_slices(const Recipe& recipe, const ModelSet& models,
                                          std::optional<size_t> base,
                                          const merge::MergeMethod& method) {
  std::vector<NormalSlice> slices =
      recipe.models.empty() ? from_slices(recipe, models, base) : from_models(recipe, models, base);
  for (const auto& slice : slices) {
    check_method_inputs(recipe, models, slice, method);
    if (method.info().inputs == 2 && slice.sources[0].model == slice.sources[1].model) {
      fail_at(recipe.where, slice.at, "{}: {} needs two different models (the base and one other)",
              slice.path, method.name());
    }
  }
  return slices;
}

}  // namespace amalgam::recipe
