#include "eval/model_source.h"

#include "core/error.h"
#include "core/fs.h"
#include "eval/evaluate.h"
#include "gguf/import.h"
#include "gguf/reader.h"
#include "infer/finite.h"
#include "io/lora.h"
#include "merge/finalize.h"
#include "merge/sink.h"
#include "recipe/recipe.h"

namespace amalgam::eval {

namespace fs = std::filesystem;

namespace {

fs::path model_directory(const fs::path& model) {
  return fs::is_regular_file(model) ? model.parent_path() : model;
}

}  // namespace

const tokenizer::Tokenizer& LoadedModel::require_tokenizer() const {
  if (!tokenizer) fail("{}: no tokenizer.json; give token ids with --ids instead", name);
  return *tokenizer;
}

std::vector<int32_t> LoadedModel::stop_ids() const {
  return eval::stop_ids(*model, tokenizer ? &*tokenizer : nullptr);
}

bool is_recipe_path(const fs::path& path) {
  const std::string ext = path.extension().string();
  return fs::is_regular_file(path) && (ext == ".yaml" || ext == ".yml");
}

const tokenizer::Tokenizer& ModelLoader::tokenizer_of(const fs::path& model_dir) {
  auto it = tokenizers_.find(model_dir);
  if (it == tokenizers_.end()) {
    it = tokenizers_.emplace(model_dir, tokenizer::Tokenizer::from_directory(model_dir)).first;
  }
  return it->second;
}

LoadedModel ModelLoader::load(const fs::path& model_or_recipe, TokenizerNeed need) {
  const std::string name = model_or_recipe.string();
  if (!fs::exists(model_or_recipe)) {
    if (io::split_lora_reference(name)) {
      // BASE+LORA: the adapter is applied as the base is copied into RAM (a passthrough plan).
      const std::string recipe = fmt::format("merge_method: passthrough\nmodels:\n  - model: {}\n",
                                             nlohmann::json(name).dump());
      return from_plan(recipe::plan_from_yaml(recipe, name, {}), name, need);
    }
    const std::string why = io::explain_lora_reference(name);
    fail("{}: no such model directory, model file or recipe file{}{}", name,
         why.empty() ? "" : ": ", why);
  }
  if (is_recipe_path(model_or_recipe)) {
    return from_plan(recipe::plan_from_file(model_or_recipe, {}), name, need);
  }
  const bool is_file = fs::is_regular_file(model_or_recipe);
  if (is_file && gguf::is_gguf_file(model_or_recipe)) return load_gguf(model_or_recipe, need);
  const std::string ext = model_or_recipe.extension().string();
  if (is_file && ext != ".safetensors" && ext != ".bin") {
    fail("{}: expected a model directory, a .safetensors, .bin or .gguf file, or a recipe (.yaml)",
         name);
  }
  // The checkpoint stays mapped in the input set, shared with any recipe that uses it, and the
  // model holds it too, so it may outlive the loader.
  std::shared_ptr<const io::Checkpoint> checkpoint = inputs_.share(model_or_recipe);
  const fs::path dir = checkpoint->directory();
  io::ModelConfig config = io::read_model_config(dir);
  LoadedModel out{name, nullptr, std::nullopt};
  if (need == TokenizerNeed::kRequired || fs::exists(dir / "tokenizer.json")) {
    out.tokenizer = tokenizer_of(dir);
  }
  infer::WeightMap weights = infer::checkpoint_weights(*checkpoint);
  if (infer::check_finite_on_load()) infer::check_finite_weights(weights, name);
  std::shared_ptr<const void> storage = checkpoint;
  if (weights_in_memory_) weights = infer::copy_weights_into_memory(weights, nullptr, &storage);
  try {
    out.model = std::make_unique<infer::Model>(std::move(config), std::move(weights), storage);
  } catch (const Error& e) {
    fail("{}: {}", name, e.what());
  }
  return out;
}

LoadedModel ModelLoader::load_gguf(const fs::path& path, TokenizerNeed need) {
  const std::string name = path.string();
  // Run as stored: quantised matrices stay quantised and are dequantised block by block inside
  // the products, so the engine scores exactly the values the file holds.
  gguf::ImportedModel g = gguf::import_gguf(path, /*keep_stored_types=*/true);
  LoadedModel out{name, nullptr, std::nullopt};
  // The tokenizer comes from the file itself (rebuilt from its tokenizer.ggml.* keys), never
  // from files that happen to lie beside it.
  if (g.tokenizer_json) {
    out.tokenizer = tokenizer::Tokenizer::from_json(*g.tokenizer_json, name + ": tokenizer.ggml.*");
  } else if (need == TokenizerNeed::kRequired) {
    fail(
        "{}: its tokenizer (tokenizer.ggml.model and .pre) cannot be run by amalgam (byte-level "
        "BPE with a known pre-tokenizer only); generate and logits take token ids with --ids",
        name);
  }
  infer::WeightMap weights(g.views.begin(), g.views.end());
  if (infer::check_finite_on_load()) {
    infer::check_finite_weights(weights, name);
    infer::check_finite_quantized(g.quantized, name);
  }
  if (weights_in_memory_) {
    weights = infer::copy_weights_into_memory(weights, &g.quantized, &g.storage);
  }
  try {
    out.model = std::make_unique<infer::Model>(std::move(g.config), std::move(weights), g.storage,
                                               std::move(g.quantized));
  } catch (const Error& e) {
    fail("{}: {}", name, e.what());
  }
  return out;
}

LoadedModel ModelLoader::from_plan(const merge::Plan& plan, const std::string& name) {
  return from_plan(plan, name, TokenizerNeed::kRequired);
}

LoadedModel ModelLoader::from_plan(const merge::Plan& plan, const std::string& name,
                                   TokenizerNeed need) {
  AMALGAM_CHECK(plan.donor < plan.models.size(), "{}: the plan has no config donor", name);
  auto sink = std::make_shared<merge::MemorySink>();
  merge::ExecuteOptions options;
  options.threads = threads_;
  options.progress = false;
  options.release_input_pages = false;  // the inputs are read again by the next plan
  merge::execute(plan, inputs_, *sink, options);

  const fs::path donor = model_directory(plan.models[plan.donor]);
  const fs::path config_path = donor / "config.json";
  const std::string config_text =
      merge::output_config_json(plan, core::read_text_file(config_path), config_path.string());
  const nlohmann::ordered_json config_json = nlohmann::ordered_json::parse(config_text);
  io::ModelConfig config = io::parse_model_config(config_json, name);
  io::add_generation_config_eos(config, donor);
  const fs::path tokenizer_dir =
      plan.tokenizer_source ? model_directory(plan.models.at(*plan.tokenizer_source)) : donor;
  LoadedModel out{name, nullptr, std::nullopt};
  if (plan.built_tokenizer) {
    // A vocabulary the recipe built (tokenizer merging) exists only in the plan.
    out.tokenizer = tokenizer::Tokenizer::from_json(plan.built_tokenizer->tokenizer_json,
                                                    name + ": merged tokenizer.json");
  } else if (need == TokenizerNeed::kRequired || fs::exists(tokenizer_dir / "tokenizer.json")) {
    out.tokenizer = tokenizer_of(tokenizer_dir);
  }
  try {
    out.model = std::make_unique<infer::Model>(std::move(config), sink->views(), sink);
  } catch (const Error& e) {
    fail("{}: merged model: {}", name, e.what());
  }
  return out;
}

}  // namespace amalgam::eval
