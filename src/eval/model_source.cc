#include "eval/model_source.h"

#include "core/error.h"
#include "core/fs.h"
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

LoadedModel ModelLoader::load(const fs::path& model_or_recipe) {
  if (!fs::exists(model_or_recipe)) {
    const std::string ref = model_or_recipe.string();
    if (io::split_lora_reference(ref)) {
      // BASE+LORA: the adapter is applied as the base is copied into RAM (a passthrough plan).
      const std::string recipe = fmt::format("merge_method: passthrough\nmodels:\n  - model: {}\n",
                                             nlohmann::json(ref).dump());
      return from_plan(recipe::plan_from_yaml(recipe, ref, {}), ref);
    }
    const std::string why = io::explain_lora_reference(ref);
    fail("{}: no such model directory or recipe file{}{}", ref, why.empty() ? "" : ": ", why);
  }
  if (is_recipe_path(model_or_recipe)) {
    return from_plan(recipe::plan_from_file(model_or_recipe, {}), model_or_recipe.string());
  }
  const std::string ext = model_or_recipe.extension().string();
  if (fs::is_regular_file(model_or_recipe) && ext != ".safetensors" && ext != ".bin") {
    fail("{}: expected a model directory or a recipe (.yaml)", model_or_recipe.string());
  }
  // The checkpoint stays mapped in the input set, shared with any recipe that uses it.
  const io::Checkpoint& checkpoint = inputs_.open(model_or_recipe);
  io::ModelConfig config = io::read_model_config(checkpoint.directory());
  LoadedModel out{model_or_recipe.string(), nullptr, tokenizer_of(checkpoint.directory())};
  infer::WeightMap weights = infer::checkpoint_weights(checkpoint);
  if (infer::check_finite_on_load()) infer::check_finite_weights(weights, model_or_recipe.string());
  try {
    out.model = std::make_unique<infer::Model>(std::move(config), std::move(weights));
  } catch (const Error& e) {
    fail("{}: {}", model_or_recipe.string(), e.what());
  }
  return out;
}

LoadedModel ModelLoader::from_plan(const merge::Plan& plan, const std::string& name) {
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
  // A vocabulary the recipe built (tokenizer merging) exists only in the plan.
  LoadedModel out{name, nullptr,
                  plan.built_tokenizer
                      ? tokenizer::Tokenizer::from_json(plan.built_tokenizer->tokenizer_json,
                                                        name + ": merged tokenizer.json")
                      : tokenizer_of(tokenizer_dir)};
  try {
    out.model = std::make_unique<infer::Model>(std::move(config), sink->views(), sink);
  } catch (const Error& e) {
    fail("{}: merged model: {}", name, e.what());
  }
  return out;
}

}  // namespace amalgam::eval
