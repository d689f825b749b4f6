#include "recipe/model_set.h"

#include <cctype>
#include <set>

#include "core/log.h"
#include "io/config_check.h"
#include "io/lora.h"

namespace amalgam::recipe {

namespace fs = std::filesystem;

ModelSet::ModelSet(const Recipe& recipe, const PlanOptions& options)
    : recipe_(recipe), options_(options) {
  for (const auto& m : recipe.models) open(m.model);
  for (const auto& slice : recipe.slices) {
    for (const auto& s : slice.sources) open(s.model);
  }
  if (recipe.base_model) open(*recipe.base_model);
  for (const auto& slice : recipe.slices) {
    if (slice.base_model) open(*slice.base_model);
  }
}

std::pair<fs::path, fs::path> ModelSet::resolve(const ModelRef& ref) const {
  auto absolute = [&](const std::string& path) {
    fs::path p(path);
    if (p.is_relative()) p = options_.base_dir / p;
    std::error_code ec;
    fs::path canonical = fs::weakly_canonical(fs::absolute(p), ec);
    return ec ? fs::absolute(p).lexically_normal() : canonical;
  };
  if (ref.lora) return {absolute(ref.path), absolute(*ref.lora)};
  if (auto split = io::split_lora_reference(ref.path, options_.base_dir)) {
    return {absolute(split->first), absolute(split->second)};
  }
  return {absolute(ref.path), {}};
}

std::optional<size_t> ModelSet::find(const ModelRef& ref) const {
  const auto [path, lora] = resolve(ref);
  for (size_t i = 0; i < models_.size(); ++i) {
    if (models_[i].path == path && models_[i].lora == lora) return i;
  }
  return std::nullopt;
}

size_t ModelSet::index(const ModelRef& ref) const {
  auto i = find(ref);
  AMALGAM_CHECK(i.has_value(), "{}model '{}' was not opened", prefix(recipe_.where, ref.at),
                ref.path);
  return *i;
}

void ModelSet::open(const ModelRef& ref) {
  const std::string& where = recipe_.where;
  const auto [path, lora] = resolve(ref);
  if (!fs::exists(path)) {
    const std::string lora_problem =
        ref.lora ? "" : io::explain_lora_reference(ref.path, options_.base_dir);
    if (!lora_problem.empty() && ref.path.find('@') == std::string::npos) {
      fail_at(where, ref.at, "model '{}' not found: {}", ref.path, lora_problem);
    }
    if (ref.path.find('@') != std::string::npos) {
      fail_at(where, ref.at,
              "model '{}': revisions (path@revision) are not supported; amalgam reads local "
              "checkpoints only: download that revision and give its directory",
              ref.path);
    }
    const std::string& r = ref.path;
    if (r.size() > 2 && std::isalpha(static_cast<unsigned char>(r[0])) && r[1] == ':' &&
        r[2] == '/') {
      fail_at(where, ref.at,
              "model '{}' not found: it is a Windows drive path; give the model's path on this "
              "machine",
              r);
    }
    fail_at(where, ref.at,
            "model '{}' not found (looked for {}); amalgam reads local checkpoints only: if it is "
            "a Hugging Face hub id, download it first (huggingface-cli download {} --local-dir "
            "DIR) and give DIR",
            ref.path, path.string(), ref.path);
  }
  if (find(ref)) return;
  InputModel m;
  m.path = path;
  m.lora = lora;
  m.name = ref.lora ? ref.path + "+" + *ref.lora : ref.path;
  m.at = ref.at;
  try {
    m.checkpoint = options_.inputs ? options_.inputs->share(path)
                                   : std::make_shared<const io::Checkpoint>(path);
  } catch (const Error& e) {
    fail_at(where, ref.at, "model '{}': {}", ref.path, e.what());
  }
  if (!lora.empty()) {
    // Checked here, before any weight is read; the executor applies it.
    try {
      io::LoraAdapter(lora).check_base(*m.checkpoint);
    } catch (const Error& e) {
      fail_at(where, ref.at, "model '{}': {}", m.name, e.what());
    }
  }
  try {
    m.config = options_.inputs ? options_.inputs->config(m.checkpoint->directory())
                               : io::read_model_config(m.checkpoint->directory());
    const io::Checkpoint* ckpt = m.checkpoint.get();
    io::check_config_against_tensors(
        m.config,
        {ckpt->names(), [ckpt](const std::string& n) { return ckpt->info(n).shape; }},
        (m.checkpoint->directory() / "config.json").string());
  } catch (const Error& e) {
    fail_at(where, ref.at, "model '{}': {}", ref.path, e.what());
  }
  m.architecture = ref.override_architecture.value_or(m.config.architecture);
  if (m.architecture.empty()) {
    fail_at(where, ref.at,
            "model '{}': config.json has no 'architectures' entry; add one, or give the model as "
            "{{model: {{path: ...}}, override_architecture: XForCausalLM}}",
            ref.path);
  }
  models_.push_back(std::move(m));
}

namespace {

// Tensors a checkpoint holds that the architecture does not list would be silently dropped from
// the output; say so. Rotary inverse frequencies are buffers, recomputed by every loader.
void warn_uncovered(const std::string& where, const arch::Architecture& arch, const InputModel& m) {
  std::set<std::string> covered;
  auto cover = [&](const arch::WeightSpec& w) {
    covered.insert(w.name);
    covered.insert(w.aliases.begin(), w.aliases.end());
  };
  for (const auto& w : arch.pre_weights) cover(w);
  for (const auto& w : arch.post_weights) cover(w);
  for (int64_t layer = 0; layer < m.num_layers; ++layer) {
    for (const auto& w : arch::layer_weights(arch.layouts[m.layout], layer, m.num_experts)) {
      cover(w);
    }
  }
  std::vector<std::string> left;
  for (const auto& name : m.checkpoint->names()) {
    if (covered.count(name) || name.ends_with("rotary_emb.inv_freq")) continue;
    left.push_back(name);
  }
  if (left.empty()) return;
  const size_t shown = std::min<size_t>(left.size(), 5);
  core::warn("{}model '{}' has {} tensor(s) that {} does not list; they are not merged: {}{}",
             prefix(where, {}), m.name, left.size(), arch.name,
             join({left.begin(), left.begin() + static_cast<std::ptrdiff_t>(shown)}),
             left.size() > shown ? ", ..." : "");
}

}  // namespace

void ModelSet::resolve_architecture(size_t donor, bool allow_crimes) {
  const std::string& where = recipe_.where;
  const InputModel& d = models_[donor];
  for (const auto& m : models_) {
    if (m.architecture != d.architecture && !allow_crimes) {
      fail_at(where, m.at,
              "model '{}' is a {} but '{}' is a {}; models of different architectures cannot be "
              "merged (pass --allow-crimes to try anyway)",
              m.name, m.architecture, d.name, d.architecture);
    }
  }
  if (const arch::Architecture* table = arch::find_architecture(d.architecture)) {
    arch_ = *table;
    for (auto& m : models_) {
      if (m.config.num_layers <= 0) {
        fail_at(where, m.at, "model '{}': config.json lacks num_hidden_layers", m.name);
      }
      m.num_layers = m.config.num_layers;
      m.num_experts = m.config.num_experts;
      const auto& ckpt = *m.checkpoint;
      m.layout = arch::detect_layout(
                     arch_, [&](const std::string& n) { return ckpt.has(n); }, m.num_experts)
                     .value_or(0);
      bool per_expert = false;
      for (const auto& w : arch_.layouts[m.layout].weights) {
        per_expert = per_expert || arch::has_expert_index(w.name);
      }
      if (per_expert && m.num_experts <= 0) {
        fail_at(where, m.at, "model '{}': config.json lacks num_local_experts (a {} needs it)",
                m.name, arch_.name);
      }
    }
    for (const auto& m : models_) {
      if (m.layout != d.layout) {
        fail_at(where, m.at,
                "model '{}' stores its layers as {} but '{}' as {}; convert one checkpoint so both "
                "use the same tensor names",
                m.name, arch_.layouts[m.layout].name, d.name, arch_.layouts[d.layout].name);
      }
      if (m.num_experts != d.num_experts) {
        fail_at(where, m.at, "model '{}' has {} experts but '{}' has {}; they cannot be merged",
                m.name, m.num_experts, d.name, d.num_experts);
      }
      warn_uncovered(where, arch_, m);
    }
    return;
  }
  std::vector<arch::InferenceInput> inputs;
  for (const auto& m : models_) {
    const io::Checkpoint* ckpt = m.checkpoint.get();
    inputs.push_back(arch::InferenceInput{
        ckpt->names(), [ckpt](const std::string& n) { return ckpt->info(n).shape; },
        m.config.vocab_size});
  }
  arch::InferredArchitecture inferred = arch::infer_architecture(d.architecture, inputs);
  arch_ = std::move(inferred.arch);
  for (size_t i = 0; i < models_.size(); ++i) models_[i].num_layers = inferred.num_layers[i];
  core::info(
      "{}no table for {}; inferred from tensor names: {} layers under '{}', {} weights per "
      "layer",
      prefix(where, {}), d.architecture, d.num_layers, inferred.layer_prefix,
      arch_.layouts[0].weights.size());
}

}  // namespace amalgam::recipe
