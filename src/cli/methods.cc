// amalgam methods [NAME] [--json]: the merge method catalogue, read from the registry (every
// method's parameters, kinds, defaults, ranges, whether a search may vary them, and its summary).
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "merge/method.h"

namespace amalgam::cli {

namespace {

struct MethodsArgs {
  std::string name;
  bool json = false;
};

std::string kind_name(merge::ParamKind k) {
  switch (k) {
    case merge::ParamKind::kBool:
      return "bool";
    case merge::ParamKind::kInt:
      return "int";
    case merge::ParamKind::kReal:
      return "real";
  }
  return "?";
}

std::string base_role(merge::BaseRole r) {
  switch (r) {
    case merge::BaseRole::kRequired:
      return "required";
    case merge::BaseRole::kOptional:
      return "optional";
    case merge::BaseRole::kInput:
      return "ordinary input";
  }
  return "?";
}

std::string bound(double v) {
  return std::isinf(v) ? (v < 0 ? "-inf" : "inf") : fmt::format("{}", v);
}

std::string default_text(const merge::ParamSpec& p) {
  if (!p.default_value) return "required";
  if (p.kind == merge::ParamKind::kBool) return *p.default_value != 0 ? "true" : "false";
  return fmt::format("{}", *p.default_value);
}

nlohmann::ordered_json to_json(const merge::MethodInfo& m) {
  nlohmann::ordered_json params = nlohmann::ordered_json::array();
  for (const auto& p : m.params) {
    nlohmann::ordered_json j = {
        {"name", p.name},
        {"scope", p.scope == merge::ParamScope::kGlobal ? "global" : "per-model"},
        {"kind", kind_name(p.kind)},
        {"default", p.default_value ? nlohmann::ordered_json(*p.default_value) : nullptr},
        {"min", bound(p.min)},
        {"max", bound(p.max)},
        {"searchable", p.searchable},
        {"help", p.help}};
    if (p.searchable) j["search_range"] = {p.search_min, p.search_max};
    params.push_back(j);
  }
  return {{"name", m.name},
          {"title", m.title},
          {"reference", m.reference},
          {"summary", m.summary},
          {"base_model", base_role(m.base)},
          {"random", m.random},
          {"inputs", m.inputs ? nlohmann::ordered_json(*m.inputs) : nullptr},
          {"parameters", params}};
}

void run_methods(const MethodsArgs& args) {
  std::vector<const merge::MergeMethod*> methods;
  if (!args.name.empty()) {
    methods.push_back(&merge::method_or_fail(args.name));
  } else {
    for (const auto& n : merge::method_names()) methods.push_back(merge::find_method(n));
  }
  if (args.json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const auto* m : methods) out.push_back(to_json(m->info()));
    std::puts(out.dump(2).c_str());
    return;
  }
  for (const auto* m : methods) {
    const merge::MethodInfo& info = m->info();
    std::string head = fmt::format("{:<17} {}", info.name, info.summary);
    std::string notes = fmt::format("base model: {}", base_role(info.base));
    if (info.inputs) notes += fmt::format("; exactly {} inputs", *info.inputs);
    if (info.random) notes += "; random (--random-seed)";
    std::printf("%s\n%18s%s\n", head.c_str(), "", notes.c_str());
    for (const auto& p : info.params) {
      std::string range;
      if (!std::isinf(p.min) || !std::isinf(p.max)) {
        range = fmt::format(" in [{}, {}]", bound(p.min), bound(p.max));
      }
      std::printf("%18s%-12s %-9s %-5s %-9s%s%s\n", "", p.name.c_str(),
                  p.scope == merge::ParamScope::kGlobal ? "global" : "per-model",
                  kind_name(p.kind).c_str(), default_text(p).c_str(), range.c_str(),
                  p.searchable ? " (searchable)" : "");
    }
  }
}

}  // namespace

void register_methods(CLI::App& app) {
  auto args = std::make_shared<MethodsArgs>();
  auto* cmd = app.add_subcommand("methods", "List the merge methods and their parameters");
  cmd->add_option("name", args->name, "One method only");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->callback([args] { run_methods(*args); });
}

}  // namespace amalgam::cli
