#include "recipe/params.h"

#include "core/log.h"

namespace amalgam::recipe {

namespace {

bool has_param(const std::vector<merge::ParamSpec>& specs, const std::string& name) {
  for (const auto& s : specs) {
    if (s.name == name) return true;
  }
  return false;
}

std::vector<std::string> names_of(const std::vector<merge::ParamSpec>& a,
                                  const std::vector<merge::ParamSpec>& b) {
  std::vector<std::string> out;
  for (const auto& s : a) out.push_back(s.name);
  for (const auto& s : b) out.push_back(s.name);
  return out;
}

// One precedence level: where it is (for messages) and its settings.
struct Level {
  std::string path;
  const ParamMap* params;
};

struct Lookup {
  std::optional<double> value;
  std::vector<std::string> unmatched;  // levels that set the parameter but whose filters missed
};

Lookup look_up(const std::vector<Level>& levels, const std::string& name, const std::string& tensor,
               double t) {
  Lookup out;
  for (const auto& level : levels) {
    auto it = level.params->find(name);
    if (it == level.params->end()) continue;
    out.value = it->second.evaluate(tensor, t);
    if (out.value) return out;
    if (!it->second.conditions.empty()) out.unmatched.push_back(level.path);
  }
  return out;
}

std::string filter_hint(const std::vector<std::string>& unmatched, const std::string& tensor) {
  if (unmatched.empty()) return "";
  return fmt::format(
      " (the filters of {} match nothing in '{}'; add a last item without a "
      "filter as the fallback)",
      join(unmatched, " and "), tensor);
}

}  // namespace

ParamResolver::ParamResolver(const Recipe& recipe, const merge::MergeMethod& method,
                             const ModelSet& models)
    : recipe_(recipe),
      method_(method),
      models_(models),
      global_(method.params(merge::ParamScope::kGlobal)),
      tensor_(method.params(merge::ParamScope::kTensor)) {
  const std::vector<std::string> known = names_of(global_, tensor_);
  const std::string known_text = known.empty() ? "none" : join(known);
  auto check = [&](const ParamMap& params, const std::string& path, bool per_model) {
    for (const auto& [name, setting] : params) {
      if (!has_param(global_, name) && !has_param(tensor_, name)) {
        core::warn("{}{}.{}: {} does not take a parameter '{}' (it takes: {}); ignored{}",
                   prefix(recipe_.where, setting.at), path, name, method.name(), name, known_text,
                   did_you_mean(name, known));
      } else if (per_model && has_param(global_, name)) {
        core::warn(
            "{}{}.{}: '{}' is a global parameter of {} (one value per tensor), so it is "
            "ignored under a model; move it to the top-level or slice parameters",
            prefix(recipe_.where, setting.at), path, name, name, method.name());
      }
    }
  };
  check(recipe.parameters, "parameters", false);
  for (size_t i = 0; i < recipe.models.size(); ++i) {
    check(recipe.models[i].parameters, fmt::format("models[{}].parameters", i), true);
  }
  for (size_t i = 0; i < recipe.slices.size(); ++i) {
    check(recipe.slices[i].parameters, fmt::format("slices[{}].parameters", i), false);
    for (size_t j = 0; j < recipe.slices[i].sources.size(); ++j) {
      check(recipe.slices[i].sources[j].parameters,
            fmt::format("slices[{}].sources[{}].parameters", i, j), true);
    }
  }
}

merge::Params ParamResolver::global(const NormalSlice& slice, const std::string& output_tensor,
                                    double t) const {
  const std::vector<Level> levels = {{slice.path + ".parameters", slice.parameters},
                                     {"parameters", &recipe_.parameters}};
  merge::Params out;
  for (const auto& spec : global_) {
    Lookup found = look_up(levels, spec.name, output_tensor, t);
    if (found.value) {
      out[spec.name] = *found.value;
    } else if (spec.default_value) {
      out[spec.name] = *spec.default_value;
    } else {
      fail_at(recipe_.where, recipe_.merge_method_at,
              "missing required parameter '{}' of {} for tensor '{}': set it in the top-level "
              "parameters (e.g. parameters: {{{}: 0.5}}){}",
              spec.name, method_.name(), output_tensor, spec.name,
              filter_hint(found.unmatched, output_tensor));
    }
  }
  return out;
}

merge::Params ParamResolver::tensor(const NormalSlice& slice, const NormalSource& source,
                                    const std::string& input_tensor, double t) const {
  const std::vector<Level> levels = {{source.path + ".parameters", source.parameters},
                                     {slice.path + ".parameters", slice.parameters},
                                     {"parameters", &recipe_.parameters}};
  const bool is_base = slice.base == source.model;
  const InputModel& model = models_[source.model];
  merge::Params out;
  for (const auto& spec : tensor_) {
    Lookup found = look_up(levels, spec.name, input_tensor, t);
    if (found.value) {
      out[spec.name] = *found.value;
    } else if (spec.default_value) {
      out[spec.name] = *spec.default_value;
    } else if (is_base && method_.info().base != merge::BaseRole::kInput) {
      continue;  // e.g. the base's weight in task arithmetic is never used
    } else if (is_base) {
      fail_at(recipe_.where, source.at,
              "{} uses base model '{}' as an ordinary input (the base has no special role in "
              "{}), so it needs a '{}' like the other models: add parameters: {{{}: ...}} to it "
              "under models:, or set a top-level default{}",
              method_.name(), model.name, method_.name(), spec.name, spec.name,
              filter_hint(found.unmatched, input_tensor));
    } else {
      fail_at(recipe_.where, source.at,
              "missing required parameter '{}' for model '{}' ({}) at tensor '{}': add "
              "parameters: {{{}: ...}} to that model, or a slice or top-level default{}",
              spec.name, model.name, source.path, input_tensor, spec.name,
              filter_hint(found.unmatched, input_tensor));
    }
  }
  return out;
}

}  // namespace amalgam::recipe
