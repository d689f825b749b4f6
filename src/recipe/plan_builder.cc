// Recipe -> Plan: one entry per output tensor (pre-weights from the first slice's models, the
// layers of every slice in order, post-weights from the last slice's models), each with its
// input tensors found in the checkpoints' headers, shapes checked, parameters resolved.
#include <algorithm>

#include "core/fs.h"
#include "core/log.h"
#include "merge/method.h"
#include "recipe/layer_swap.h"
#include "recipe/model_set.h"
#include "recipe/params.h"
#include "recipe/recipe.h"
#include "recipe/slices.h"
#include "recipe/tokenizer_merge.h"

namespace amalgam::recipe {

namespace {

using tensor::shape_string;

// One input tensor located in its checkpoint.
struct Input {
  const NormalSource* source;
  std::string requested;  // the architecture's name (filters match this one)
  std::string name;       // the name actually read (may be an alias or a tied tensor)
  const io::TensorInfo* info;
};

class PlanBuilder {
 public:
  PlanBuilder(const Recipe& recipe, const PlanOptions& options)
      : recipe_(recipe), options_(options) {}

  merge::Plan build();

 private:
  void add_entry(const NormalSlice& slice, const arch::WeightSpec& out,
                 const std::vector<arch::WeightSpec>& in, double t, const std::string& context);
  std::vector<Input> find_inputs(const NormalSlice& slice, const arch::WeightSpec& out,
                                 const std::vector<arch::WeightSpec>& in,
                                 const std::string& context) const;
  void check_shapes(const arch::WeightSpec& out, std::vector<Input>& inputs,
                    std::optional<size_t> base, tensor::Shape& shape) const;
  tensor::DType default_out_dtype(size_t donor) const;
  void choose_tokenizer(std::optional<size_t> base, size_t donor);
  void map_embedding_rows(const arch::WeightSpec& out, std::vector<Input>& inputs,
                          merge::PlanEntry& entry) const;

  const Recipe& recipe_;
  PlanOptions options_;
  const merge::MergeMethod* method_ = nullptr;
  std::unique_ptr<ModelSet> models_;
  std::unique_ptr<ParamResolver> params_;
  std::unique_ptr<VocabMerge> vocab_;  // set when the recipe maps embeddings to a new vocabulary
  merge::Plan plan_;
};

const merge::MergeMethod& find_method_or_fail(const Recipe& recipe) {
  if (const merge::MergeMethod* m = merge::find_method(recipe.merge_method)) return *m;
  const std::vector<std::string> known = merge::method_names();
  fail_at(recipe.where, recipe.merge_method_at, "unknown merge_method '{}'{}; known methods: {}",
          recipe.merge_method, did_you_mean(recipe.merge_method, known), join(known));
}

std::vector<Input> PlanBuilder::find_inputs(const NormalSlice& slice, const arch::WeightSpec& out,
                                            const std::vector<arch::WeightSpec>& in,
                                            const std::string& context) const {
  std::vector<Input> inputs;
  bool any_present = false;  // under its own name or an alias; tied tensors do not count
  for (size_t i = 0; i < slice.sources.size(); ++i) {
    const NormalSource& src = slice.sources[i];
    const InputModel& model = (*models_)[src.model];
    const io::Checkpoint& ckpt = *model.checkpoint;
    const arch::WeightSpec& spec = in[i];
    std::optional<std::string> name;
    if (ckpt.has(spec.name)) name = spec.name;
    for (const auto& alias : spec.aliases) {
      if (!name && ckpt.has(alias)) name = alias;
    }
    any_present = any_present || name.has_value();
    for (const auto& tied : spec.tied_names) {
      if (!name && ckpt.has(tied)) name = tied;
    }
    if (!name) {
      if (out.optional) continue;  // this model simply does not contribute
      fail_at(recipe_.where, src.at,
              "tensor '{}' missing in model '{}' ({}{}); {} checkpoints must have it, so this "
              "model does not look like a {} checkpoint",
              spec.name, model.name, src.path, context, models_->architecture().name,
              models_->architecture().name);
    }
    inputs.push_back(Input{&src, spec.name, *name, &ckpt.info(*name)});
  }
  if (!any_present) inputs.clear();  // an optional weight no model has: not written
  return inputs;
}

// Computes the output shape; drops the inputs the method leaves out.
void PlanBuilder::check_shapes(const arch::WeightSpec& out, std::vector<Input>& inputs,
                               std::optional<size_t> base, tensor::Shape& shape) const {
  const std::string& where = recipe_.where;
  auto name_of = [&](const Input& x) { return (*models_)[x.source->model].name; };
  const Input& ref = base ? inputs[*base] : inputs[0];
  shape = ref.info->shape;
  bool all_same = true;
  bool all_2d = true;
  for (const auto& x : inputs) {
    all_same = all_same && x.info->shape == shape;
    all_2d = all_2d && x.info->shape.size() == 2;
  }
  if (all_same) return;
  const bool to_base = method_->info().embed == merge::EmbedRule::kCropToBase;
  if (out.is_embed && all_2d) {
    if (to_base) {
      for (const auto& x : inputs) {
        if (x.info->shape[0] < shape[0] || x.info->shape[1] < shape[1]) {
          fail_at(where, x.source->at,
                  "tensor '{}': model '{}' has shape {} but base model '{}' has {}; {} needs "
                  "every model's embeddings at least as large as the base's (mergekit fails here "
                  "too). Use the model with the smallest vocabulary as base_model, or a method "
                  "that keeps the common rows (linear, slerp), or map every model to one "
                  "vocabulary with tokenizer_source: union (or base)",
                  x.requested, name_of(x), shape_string(x.info->shape), name_of(ref),
                  shape_string(shape), method_->name());
        }
      }
      core::warn(
          "{}tensor '{}': vocabulary sizes differ; larger models are cropped to base "
          "model '{}' {}",
          prefix(where, {}), out.name, name_of(ref), shape_string(shape));
      return;
    }
    for (const auto& x : inputs) {
      shape[0] = std::min(shape[0], x.info->shape[0]);
      shape[1] = std::min(shape[1], x.info->shape[1]);
    }
    core::warn(
        "{}tensor '{}': vocabulary sizes differ; every model is cropped to the common "
        "{} (the output config.json vocab_size must match it)",
        prefix(where, {}), out.name, shape_string(shape));
    return;
  }
  if (!to_base) {
    for (const auto& x : inputs) {
      if (x.info->shape != shape) {
        fail_at(where, x.source->at,
                "tensor '{}': shape {} in model '{}' differs from {} in model '{}'; {} needs the "
                "same shapes in every model (only embeddings may differ)",
                x.requested, shape_string(x.info->shape), name_of(x), shape_string(shape),
                name_of(ref), method_->name());
      }
    }
  }
  // Task-arithmetic family: leave out the models that differ from the base, as mergekit does.
  std::vector<Input> kept;
  for (const auto& x : inputs) {
    if (x.info->shape == shape) {
      kept.push_back(x);
    } else {
      core::warn(
          "{}tensor '{}': shape {} in model '{}' differs from the base's {}; that model "
          "is left out of this tensor",
          prefix(where, x.source->at), x.requested, shape_string(x.info->shape), name_of(x),
          shape_string(shape));
    }
  }
  inputs = std::move(kept);
}

void PlanBuilder::add_entry(const NormalSlice& slice, const arch::WeightSpec& out,
                            const std::vector<arch::WeightSpec>& in, double t,
                            const std::string& context) {
  std::vector<Input> inputs = find_inputs(slice, out, in, context);
  if (inputs.empty()) return;
  auto base_position = [&]() -> std::optional<size_t> {
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].source->model == slice.base) return i;
    }
    return std::nullopt;
  };
  if (method_->requires_base() && !base_position()) {
    fail_at(recipe_.where, slice.at,
            "tensor '{}' is missing in base model '{}' but present in other models; {} needs the "
            "base's tensor",
            in[0].name, (*models_)[*slice.base].name, method_->name());
  }

  merge::PlanEntry entry;
  entry.name = out.name;
  entry.is_embed = out.is_embed;
  const Input* other = nullptr;
  const Input* floating = nullptr;
  for (const auto& x : inputs) {
    (tensor::is_float_dtype(x.info->dtype) ? floating : other) = &x;
  }
  if (other) {
    if (floating) {
      fail_at(recipe_.where, other->source->at,
              "tensor '{}' is {} in model '{}' but {} in model '{}'; they cannot be merged",
              other->requested, tensor::dtype_name(other->info->dtype),
              (*models_)[other->source->model].name, tensor::dtype_name(floating->info->dtype),
              (*models_)[floating->source->model].name);
    }
    // Integer tensors (position ids, ...) are copied from the first model unchanged.
    inputs.resize(1);
    entry.passthrough_bytes = true;
    entry.out_dtype = inputs[0].info->dtype;
    entry.shape = inputs[0].info->shape;
  } else {
    entry.out_dtype = plan_.out_dtype;
    if (!(vocab_ && out.is_embed)) check_shapes(out, inputs, base_position(), entry.shape);
  }
  entry.global = params_->global(slice, out.name, t);
  for (const auto& x : inputs) {
    entry.sources.push_back(merge::SourceTensor{x.source->model, x.name,
                                                params_->tensor(slice, *x.source, x.requested, t)});
  }
  if (vocab_ && out.is_embed && !entry.passthrough_bytes) map_embedding_rows(out, inputs, entry);
  entry.base = base_position();
  plan_.entries.push_back(std::move(entry));
}

tensor::DType PlanBuilder::default_out_dtype(size_t donor) const {
  const InputModel& d = (*models_)[donor];
  if (auto dtype = tensor::parse_torch_dtype(d.config.dtype)) {
    if (tensor::is_float_dtype(*dtype)) return *dtype;
  }
  for (const auto& name : d.checkpoint->names()) {
    const tensor::DType dtype = d.checkpoint->info(name).dtype;
    if (tensor::is_float_dtype(dtype)) return dtype;
  }
  return tensor::DType::kBF16;
}

void PlanBuilder::choose_tokenizer(std::optional<size_t> base, size_t donor) {
  size_t source = base.value_or(donor);
  switch (recipe_.tokenizer) {
    case TokenizerChoice::kDonor:
      return;
    case TokenizerChoice::kUnion:
      break;
    case TokenizerChoice::kBase:
      if (!base) {
        fail_at(recipe_.where, recipe_.tokenizer_at,
                "tokenizer_source: base needs a base_model; add one or name a model's path");
      }
      break;
    case TokenizerChoice::kModel: {
      const std::optional<size_t> found = models_->find(*recipe_.tokenizer_model);
      if (!found) {
        fail_at(recipe_.where, recipe_.tokenizer_at,
                "tokenizer source '{}' is not one of the recipe's models; name one of them (or "
                "base, or union)",
                recipe_.tokenizer_model->path);
      }
      source = *found;
      break;
    }
  }
  plan_.tokenizer_source = source;
  vocab_ = std::make_unique<VocabMerge>(recipe_, *models_, base, donor, source);
  if (!vocab_->changes_embeddings()) {
    vocab_.reset();  // every model already has the output vocabulary: nothing to map
    return;
  }
  plan_.built_tokenizer = vocab_->built_tokenizer();
}

// The entry takes the output vocabulary's rows; each source reads its rows through a map.
void PlanBuilder::map_embedding_rows(const arch::WeightSpec& out, std::vector<Input>& inputs,
                                     merge::PlanEntry& entry) const {
  std::vector<size_t> models;
  std::vector<int64_t> rows;
  for (const auto& x : inputs) {
    const tensor::Shape& shape = x.info->shape;
    if (shape.size() != 2 || shape[1] != inputs[0].info->shape[1]) {
      fail_at(recipe_.where, x.source->at,
              "tensor '{}' of model '{}' has shape {} but model '{}' has {}; embeddings mapped "
              "to a merged vocabulary must be matrices of the same width",
              x.requested, (*models_)[x.source->model].name, shape_string(shape),
              (*models_)[inputs[0].source->model].name, shape_string(inputs[0].info->shape));
    }
    models.push_back(x.source->model);
    rows.push_back(shape[0]);
  }
  entry.shape = {vocab_->rows(), inputs[0].info->shape[1]};
  auto maps = vocab_->row_maps(models, rows, out.name);
  for (size_t i = 0; i < entry.sources.size(); ++i) entry.sources[i].rows = std::move(maps[i]);
}

merge::Plan PlanBuilder::build() {
  method_ = &find_method_or_fail(recipe_);
  models_ = std::make_unique<ModelSet>(recipe_, options_);
  std::optional<size_t> base;
  if (recipe_.base_model) base = models_->index(*recipe_.base_model);
  const ModelRef& first =
      recipe_.models.empty() ? recipe_.slices[0].sources[0].model : recipe_.models[0].model;
  const size_t donor = base.value_or(models_->index(first));
  models_->resolve_architecture(donor, options_.allow_crimes);
  params_ = std::make_unique<ParamResolver>(recipe_, *method_, *models_);
  const std::vector<NormalSlice> slices = normalize_slices(recipe_, *models_, base, *method_);

  plan_.method = std::string(method_->name());
  for (size_t i = 0; i < models_->size(); ++i) {
    plan_.models.push_back((*models_)[i].path);
    if (!(*models_)[i].lora.empty()) plan_.adapters[i] = (*models_)[i].lora;
  }
  plan_.base_model = base;
  plan_.donor = donor;
  plan_.compute_dtype = recipe_.dtype;
  plan_.out_dtype = recipe_.out_dtype ? *recipe_.out_dtype
                    : recipe_.dtype   ? *recipe_.dtype
                                      : default_out_dtype(donor);
  plan_.recipe_text = recipe_.text;
  choose_tokenizer(base, donor);

  const arch::Architecture& arch = models_->architecture();
  const InputModel& donor_model = (*models_)[donor];
  auto same_for_every_source = [](const NormalSlice& s, const arch::WeightSpec& w) {
    return std::vector<arch::WeightSpec>(s.sources.size(), w);
  };
  for (const auto& w : arch.pre_weights) {
    add_entry(slices.front(), w, same_for_every_source(slices.front(), w), 0.0, "");
  }
  int64_t out_layer = 0;
  for (const auto& slice : slices) {
    for (int64_t idx = 0; idx < slice.length; ++idx, ++out_layer) {
      const double t = slice.length > 1 ? static_cast<double>(idx) / (slice.length - 1) : 1.0;
      const std::vector<arch::WeightSpec> outs =
          arch::layer_weights(arch.layouts[donor_model.layout], out_layer, donor_model.num_experts);
      std::vector<std::vector<arch::WeightSpec>> ins;
      for (const auto& src : slice.sources) {
        const InputModel& m = (*models_)[src.model];
        ins.push_back(arch::layer_weights(arch.layouts[m.layout], src.start + idx, m.num_experts));
        AMALGAM_CHECK(ins.back().size() == outs.size(), "{}model '{}' has a different layer layout",
                      prefix(recipe_.where, src.at), m.name);
      }
      for (size_t w = 0; w < outs.size(); ++w) {
        std::vector<arch::WeightSpec> in;
        for (size_t s = 0; s < ins.size(); ++s) in.push_back(ins[s][w]);
        add_entry(slice, outs[w], in, t,
                  fmt::format(", for output layer {} of {}", out_layer, slice.path));
      }
    }
  }
  for (const auto& w : arch.post_weights) {
    add_entry(slices.back(), w, same_for_every_source(slices.back(), w), 0.0, "");
  }
  for (const auto& slice : slices) plan_.num_layers += slice.length;
  return std::move(plan_);
}

}  // namespace

merge::Plan plan_from_recipe(const Recipe& recipe, const PlanOptions& options) {
  return PlanBuilder(recipe, options).build();
}

merge::Plan plan_from_yaml(const std::string& yaml_text, const std::string& where,
                           const PlanOptions& options) {
  if (is_layer_swap(yaml_text)) {
    return plan_from_recipe(
        parse_recipe(expand_layer_swap(yaml_text, where, options.base_dir), where), options);
  }
  return plan_from_recipe(parse_recipe(yaml_text, where), options);
}

merge::Plan plan_from_file(const std::filesystem::path& recipe_path, const PlanOptions& options) {
  return plan_from_yaml(core::read_text_file(recipe_path), recipe_path.string(), options);
}

}  // namespace amalgam::recipe
