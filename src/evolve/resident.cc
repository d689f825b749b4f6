#include "evolve/resident.h"

#include <fmt/format.h>

#include <chrono>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "io/hf_config.h"
#include "merge/finalize.h"
#include "merge/method.h"

namespace amalgam::evolve {

namespace fs = std::filesystem;

namespace {

// Everything that determines an output tensor's bytes.
std::string signature(const merge::Plan& plan, const merge::PlanEntry& e, uint64_t seed) {
  std::string s = fmt::format("{}|{}|{}|{}|{}|", plan.method, static_cast<int>(e.out_dtype),
                              plan.compute_dtype ? static_cast<int>(*plan.compute_dtype) : -1, seed,
                              tensor::shape_string(e.shape));
  s += fmt::format("b{}|", e.base ? static_cast<int64_t>(*e.base) : -1);
  for (const auto& [k, v] : e.global) s += fmt::format("{}={:a},", k, v);
  for (const auto& src : e.sources) {
    s += fmt::format("|{}:{}", plan.models[src.model].string(), src.tensor);
    if (auto a = plan.adapters.find(src.model); a != plan.adapters.end()) {
      s += fmt::format("+{}", a->second.string());
    }
    for (const auto& [k, v] : src.params) s += fmt::format(",{}={:a}", k, v);
  }
  return s;
}

fs::path model_directory(const fs::path& model) {
  return fs::is_regular_file(model) ? model.parent_path() : model;
}

}  // namespace

ResidentModel::ResidentModel(merge::InputSet& inputs, unsigned threads, uint64_t seed)
    : inputs_(inputs) {
  options_.threads = threads;
  options_.progress = false;
  options_.seed = seed;
  options_.release_input_pages = false;  // every candidate reads the inputs again
}

const std::string& ResidentModel::donor_config(const fs::path& model) {
  auto it = configs_.find(model);
  if (it == configs_.end()) {
    it =
        configs_.emplace(model, core::read_text_file(model_directory(model) / "config.json")).first;
  }
  return it->second;
}

std::unique_ptr<infer::Model> ResidentModel::update(const merge::Plan& plan) {
  const auto start = std::chrono::steady_clock::now();
  last_ = {};
  merge::Plan changed = plan;  // the entries to merge
  changed.entries.clear();
  infer::WeightMap views;
  std::set<std::string> computed_names;
  const merge::MergeMethod& method = merge::method_or_fail(plan.method);
  for (const auto& e : plan.entries) {
    if (e.sources.size() == 1) {
      const size_t model = e.sources[0].model;
      const tensor::TensorView v = inputs_.open(plan.models[model]).view(e.sources[0].tensor);
      if (merge::is_byte_copy(plan, method, e, v, plan.adapters.count(model) > 0)) {
        views.emplace(e.name, v);
        ++last_.aliased;
        continue;
      }
    }
    computed_names.insert(e.name);
    std::string sig = signature(plan, e, options_.seed);
    auto it = signatures_.find(e.name);
    if (it != signatures_.end() && it->second == sig) {
      ++last_.reused;
      continue;
    }
    signatures_[e.name] = std::move(sig);
    changed.entries.push_back(e);
  }
  sink_.retain(computed_names);
  for (auto it = signatures_.begin(); it != signatures_.end();) {
    it = computed_names.count(it->first) ? std::next(it) : signatures_.erase(it);
  }
  if (!changed.entries.empty()) {
    try {
      merge::execute(changed, inputs_, sink_, options_);
    } catch (...) {
      // The buffers of a failed merge hold nothing reliable.
      for (const auto& e : changed.entries) signatures_.erase(e.name);
      throw;
    }
  }
  last_.computed = changed.entries.size();
  for (const auto& [name, t] : sink_.tensors()) views.emplace(name, t.view());

  const fs::path donor = plan.models.at(plan.donor);
  const std::string config_text = merge::output_config_json(
      plan, donor_config(donor), (model_directory(donor) / "config.json").string());
  io::ModelConfig config =
      io::parse_model_config(nlohmann::ordered_json::parse(config_text), "candidate");
  // The same stop tokens as eval and generate of the written model (generation_config.json).
  io::add_generation_config_eos(config, model_directory(donor));
  auto model = std::make_unique<infer::Model>(std::move(config), std::move(views));
  last_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return model;
}

}  // namespace amalgam::evolve
