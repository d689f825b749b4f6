// Recipes -> plans on the zoo models and small synthetic checkpoints: parameter resolution
// (precedence, filters, gradients), slices and frankenmerges, donors, dtypes, and every
// validation error (which must name the recipe file and the key, model or tensor at fault).
#include "recipe/recipe.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "synthetic_checkpoint.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::FakeTensor;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::TinyModel;
using testing::zoo;

const merge::PlanEntry& entry(const merge::Plan& plan, const std::string& name) {
  for (const auto& e : plan.entries) {
    if (e.name == name) return e;
  }
  throw std::runtime_error("no plan entry " + name);
}

bool has_entry(const merge::Plan& plan, const std::string& name) {
  for (const auto& e : plan.entries) {
    if (e.name == name) return true;
  }
  return false;
}

std::string layer(int i, const std::string& rest) {
  return "model.layers." + std::to_string(i) + "." + rest;
}

fs::path resolved(const fs::path& p) { return fs::weakly_canonical(p); }

class RecipeTest : public ::testing::Test {
 protected:
  // Replaces $base, $add, $rev, $sort, $large (zoo models) and $tmp (this test's directory).
  std::string fill(std::string text) const {
    const std::vector<std::pair<std::string, std::string>> vars = {
        {"$base", zoo("base").string()},        {"$add", zoo("add-expert").string()},
        {"$rev", zoo("rev-expert").string()},   {"$sort", zoo("sort-expert").string()},
        {"$large", zoo("base-large").string()}, {"$tmp", dir_.path().string()}};
    for (const auto& [var, value] : vars) {
      for (size_t p = text.find(var); p != std::string::npos; p = text.find(var, p + 1)) {
        text.replace(p, var.size(), value);
      }
    }
    return text;
  }

  fs::path write(const std::string& text) {
    fs::path path = dir_ / "recipe.yaml";
    testing::write_file(path, fill(text));
    return path;
  }

  merge::Plan plan(const std::string& text, recipe::PlanOptions options = {}) {
    return recipe::plan_from_file(write(text), options);
  }

  // The error message of a recipe that must fail; it must name the recipe file.
  std::string error(const std::string& text, recipe::PlanOptions options = {}) {
    try {
      plan(text, options);
    } catch (const Error& e) {
      std::string message = e.what();
      EXPECT_THAT(message, HasSubstr("recipe.yaml")) << message;
      return message;
    }
    ADD_FAILURE() << "recipe accepted:\n" << fill(text);
    return "";
  }

  size_t model_index(const merge::Plan& plan, const fs::path& path) const {
    for (size_t i = 0; i < plan.models.size(); ++i) {
      if (plan.models[i] == resolved(path)) return i;
    }
    ADD_FAILURE() << "model not in plan: " << path;
    return 0;
  }

  fs::path tmp(const std::string& name) const { return dir_ / name; }

  TempDir dir_;
};

constexpr int kLlamaLayerWeights = 9;  // zoo models: 4 attention, 3 MLP, 2 norms

TEST_F(RecipeTest, ModelsSyntaxAddsBaseAndResolvesDefaults) {
  const std::string text = R"(merge_method: task_arithmetic
base_model: $base
models:
  - model: $add
    parameters: {weight: 0.7}
  - model: $rev
    parameters: {weight: 0.3}
)";
  merge::Plan p = plan(text);
  EXPECT_EQ(p.method, "task_arithmetic");
  ASSERT_EQ(p.models.size(), 3u);
  EXPECT_EQ(p.models[0], resolved(zoo("add-expert")));
  EXPECT_EQ(p.models[1], resolved(zoo("rev-expert")));
  EXPECT_EQ(p.models[2], resolved(zoo("base")));
  EXPECT_EQ(p.base_model, 2u);
  EXPECT_EQ(p.donor, 2u);
  EXPECT_EQ(p.num_layers, 4);
  EXPECT_FALSE(p.compute_dtype.has_value());
  EXPECT_EQ(p.out_dtype, tensor::DType::kBF16);  // the donor's config.json dtype
  EXPECT_FALSE(p.tokenizer_source.has_value());
  EXPECT_EQ(p.recipe_text, fill(text));
  ASSERT_EQ(p.entries.size(), 1u + 4 * kLlamaLayerWeights + 2);
  EXPECT_EQ(p.entries.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(p.entries[1].name, layer(0, "input_layernorm.weight"));
  EXPECT_EQ(p.entries[p.entries.size() - 2].name, "model.norm.weight");
  EXPECT_EQ(p.entries.back().name, "lm_head.weight");
  EXPECT_TRUE(p.entries.front().is_embed);
  EXPECT_TRUE(p.entries.back().is_embed);
  for (const auto& e : p.entries) {
    ASSERT_EQ(e.sources.size(), 3u) << e.name;
    EXPECT_EQ(e.base, 2u) << e.name;  // the base is appended after the listed models
    EXPECT_EQ(e.out_dtype, tensor::DType::kBF16);
    EXPECT_FALSE(e.passthrough_bytes);
    for (size_t s = 0; s < 3; ++s) {
      EXPECT_EQ(e.sources[s].model, s);
      EXPECT_EQ(e.sources[s].tensor, e.name);
    }
    EXPECT_EQ(e.sources[0].params, (merge::Params{{"weight", 0.7}, {"density", 1.0}}));
    EXPECT_EQ(e.sources[1].params, (merge::Params{{"weight", 0.3}, {"density", 1.0}}));
    // The base needs no weight in task arithmetic; defaults still apply.
    EXPECT_EQ(e.sources[2].params, (merge::Params{{"density", 1.0}}));
    EXPECT_EQ(
        e.global,
        (merge::Params{{"int8_mask", 0.0}, {"normalize", 0.0}, {"rescale", 0.0}, {"lambda", 1.0}}));
  }
  EXPECT_EQ(entry(p, layer(1, "self_attn.k_proj.weight")).shape, (tensor::Shape{64, 128}));
}

// Anchors, aliases and merge keys read as PyYAML (so mergekit) reads them.
TEST_F(RecipeTest, AnchorsAliasesAndMergeKeysExpandAsInPyYaml) {
  const merge::Plan shared = plan(R"(merge_method: ties
base_model: &base $base
models:
  - model: $add
    parameters: &p {weight: 0.7, density: 0.5}
  - model: $rev
    parameters:
      <<: *p
      weight: 0.3
  - model: *base
)");
  const merge::Plan spelled = plan(R"(merge_method: ties
base_model: $base
models:
  - model: $add
    parameters: {weight: 0.7, density: 0.5}
  - model: $rev
    parameters: {density: 0.5, weight: 0.3}
  - model: $base
)");
  ASSERT_EQ(shared.entries.size(), spelled.entries.size());
  EXPECT_EQ(shared.models, spelled.models);
  for (size_t i = 0; i < shared.entries.size(); ++i) {
    ASSERT_EQ(shared.entries[i].sources.size(), spelled.entries[i].sources.size());
    for (size_t s = 0; s < shared.entries[i].sources.size(); ++s) {
      EXPECT_EQ(shared.entries[i].sources[s].params, spelled.entries[i].sources[s].params)
          << shared.entries[i].name;
    }
  }
  EXPECT_EQ(entry(shared, "lm_head.weight").sources[1].params,
            (merge::Params{{"weight", 0.3}, {"density", 0.5}}));
}

TEST_F(RecipeTest, GradientsInterpolateAcrossLayersAndPrePostWeightsUseFirstAnchor) {
  merge::Plan p = plan(R"(merge_method: linear
models:
  - model: $add
    parameters:
      weight: [0, 1]
  - model: $rev
    parameters:
      weight: [0, 1, 0.5]
)");
  // t = idx / (L - 1): 0, 1/3, 2/3, 1. Two anchors: the value is t itself.
  const double expected_add[] = {0.0, 1.0 / 3, 2.0 / 3, 1.0};
  // Three anchors [0, 1, 0.5]: x = 2t: 0 -> 0, 2/3 -> 2/3, 4/3 -> 1 + (0.5 - 1)/3, 2 -> 0.5.
  const double expected_rev[] = {0.0, 2.0 / 3, 1.0 - 0.5 / 3, 0.5};
  for (int l = 0; l < 4; ++l) {
    for (const char* w : {"self_attn.q_proj.weight", "mlp.down_proj.weight"}) {
      const auto& e = entry(p, layer(l, w));
      EXPECT_DOUBLE_EQ(e.sources[0].params.at("weight"), expected_add[l]) << e.name;
      EXPECT_DOUBLE_EQ(e.sources[1].params.at("weight"), expected_rev[l]) << e.name;
      EXPECT_EQ(e.global.at("normalize"), 1.0);
      EXPECT_FALSE(e.base.has_value());
    }
  }
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
    EXPECT_EQ(entry(p, name).sources[0].params.at("weight"), 0.0) << name;
    EXPECT_EQ(entry(p, name).sources[1].params.at("weight"), 0.0) << name;
  }
  EXPECT_EQ(p.donor, 0u);  // no base_model: the first model listed
  EXPECT_FALSE(p.base_model.has_value());
}

TEST_F(RecipeTest, StepFunctionsSingleLayerSlicesAndWildcardFilters) {
  merge::Plan p = plan(R"(merge_method: linear
slices:
  - sources:
      - {model: $add, layer_range: [0, 3]}
      - {model: $rev, layer_range: [0, 3]}
  - sources:
      - {model: $add, layer_range: [3, 4]}
      - {model: $rev, layer_range: [3, 4]}
parameters:
  normalize: [true, true, false]
  weight:
    - filter: "*"
      value: [0.2, 0.8]
)");
  // Booleans are a step function: setting[int(t * (len - 1))] with t = 0, 1/2, 1 in slice 0.
  EXPECT_EQ(entry(p, layer(0, "mlp.up_proj.weight")).global.at("normalize"), 1.0);
  EXPECT_EQ(entry(p, layer(1, "mlp.up_proj.weight")).global.at("normalize"), 1.0);
  EXPECT_EQ(entry(p, layer(2, "mlp.up_proj.weight")).global.at("normalize"), 0.0);
  EXPECT_DOUBLE_EQ(entry(p, layer(1, "mlp.up_proj.weight")).sources[0].params.at("weight"), 0.5);
  // A slice of one layer sits at t = 1, the last anchor.
  EXPECT_EQ(entry(p, layer(3, "mlp.up_proj.weight")).global.at("normalize"), 0.0);
  EXPECT_EQ(entry(p, layer(3, "mlp.up_proj.weight")).sources[1].params.at("weight"), 0.8);
  EXPECT_EQ(entry(p, "lm_head.weight").sources[1].params.at("weight"), 0.2);
}

TEST_F(RecipeTest, FiltersMatchSubstringsAndTheFirstMatchWins) {
  merge::Plan p = plan(R"(merge_method: slerp
base_model: $base
models:
  - model: $base
  - model: $add
parameters:
  t:
    - filter: self_attn
      value: 0.2
    - filter: mlp
      value: [0, 1]
    - filter: layers.1.
      value: 0.9
    - filter: self_attn.q_proj
      value: 0.7
    - value: 0.5
)");
  ASSERT_EQ(p.models.size(), 2u);
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(entry(p, layer(l, "self_attn.q_proj.weight")).global.at("t"), 0.2);  // first wins
    EXPECT_DOUBLE_EQ(entry(p, layer(l, "mlp.up_proj.weight")).global.at("t"), l / 3.0);
  }
  EXPECT_EQ(entry(p, layer(1, "input_layernorm.weight")).global.at("t"), 0.9);
  EXPECT_EQ(entry(p, layer(2, "input_layernorm.weight")).global.at("t"), 0.5);
  EXPECT_EQ(entry(p, "model.embed_tokens.weight").global.at("t"), 0.5);
  const auto& q = entry(p, layer(0, "self_attn.q_proj.weight"));
  EXPECT_EQ(q.base, 0u);
  EXPECT_EQ(q.sources.size(), 2u);
  EXPECT_TRUE(q.sources[0].params.empty());  // slerp has no per-model parameters
}

TEST_F(RecipeTest, PrecedenceIsModelThenSliceThenTopLevelAndUnmatchedFiltersFallThrough) {
  merge::Plan p = plan(R"(merge_method: linear
parameters:
  weight: 0.1
  normalize: false
slices:
  - sources:
      - model: $add
        layer_range: [0, 2]
        parameters:
          weight: [{filter: mlp, value: 0.9}]
      - model: $rev
        layer_range: [0, 2]
    parameters:
      weight: [{filter: self_attn, value: 0.5}]
      normalize: true
  - sources:
      - {model: $add, layer_range: [2, 4]}
      - {model: $rev, layer_range: [2, 4]}
)");
  auto weights = [&](const std::string& name) {
    const auto& e = entry(p, name);
    return std::make_pair(e.sources[0].params.at("weight"), e.sources[1].params.at("weight"));
  };
  EXPECT_EQ(weights(layer(0, "mlp.up_proj.weight")), std::make_pair(0.9, 0.1));
  EXPECT_EQ(weights(layer(1, "self_attn.q_proj.weight")), std::make_pair(0.5, 0.5));
  EXPECT_EQ(weights(layer(0, "input_layernorm.weight")), std::make_pair(0.1, 0.1));
  EXPECT_EQ(weights(layer(2, "mlp.up_proj.weight")), std::make_pair(0.1, 0.1));
  EXPECT_EQ(weights("model.embed_tokens.weight"), std::make_pair(0.1, 0.1));
  EXPECT_EQ(entry(p, layer(1, "mlp.up_proj.weight")).global.at("normalize"), 1.0);
  EXPECT_EQ(entry(p, layer(2, "mlp.up_proj.weight")).global.at("normalize"), 0.0);
  // Pre-weights take the first slice's parameters, post-weights the last slice's.
  EXPECT_EQ(entry(p, "model.embed_tokens.weight").global.at("normalize"), 1.0);
  EXPECT_EQ(entry(p, "lm_head.weight").global.at("normalize"), 0.0);
}

TEST_F(RecipeTest, GlobalFiltersSeeOutputNamesAndModelFiltersSeeInputNames) {
  // Output layers 0..1 come from input layers 2..3.
  merge::Plan p = plan(R"(merge_method: task_arithmetic
base_model: $base
slices:
  - sources:
      - model: $base
        layer_range: [2, 4]
      - model: $add
        layer_range: [2, 4]
        parameters:
          weight: [{filter: layers.2., value: 0.25}, {value: 1}]
parameters:
  lambda: [{filter: layers.0., value: 2}, {value: 1}]
)");
  EXPECT_EQ(p.num_layers, 2);
  const auto& l0 = entry(p, layer(0, "mlp.up_proj.weight"));
  EXPECT_EQ(l0.sources[0].tensor, layer(2, "mlp.up_proj.weight"));
  EXPECT_EQ(l0.sources[1].tensor, layer(2, "mlp.up_proj.weight"));
  EXPECT_EQ(l0.global.at("lambda"), 2.0);
  EXPECT_EQ(l0.sources[1].params.at("weight"), 0.25);
  const auto& l1 = entry(p, layer(1, "mlp.up_proj.weight"));
  EXPECT_EQ(l1.sources[1].tensor, layer(3, "mlp.up_proj.weight"));
  EXPECT_EQ(l1.global.at("lambda"), 1.0);
  EXPECT_EQ(l1.sources[1].params.at("weight"), 1.0);
  EXPECT_FALSE(has_entry(p, layer(2, "mlp.up_proj.weight")));
}

TEST_F(RecipeTest, FrankenmergeRenumbersLayersAndTakesPrePostWeightsFromFirstAndLastSlice) {
  merge::Plan p = plan(R"(merge_method: passthrough
slices:
  - sources:
      - model: $base
        layer_range: [0, 2]
  - sources:
      - model: $rev
        layer_range: [1, 4]
        parameters:
          scale: [{filter: o_proj, value: 0.5}, {value: 1}]
)");
  ASSERT_EQ(p.models.size(), 2u);
  const size_t base = model_index(p, zoo("base"));
  const size_t rev = model_index(p, zoo("rev-expert"));
  EXPECT_EQ(p.num_layers, 5);
  EXPECT_EQ(p.donor, base);
  EXPECT_FALSE(p.base_model.has_value());
  ASSERT_EQ(p.entries.size(), 1u + 5 * kLlamaLayerWeights + 2);
  const std::pair<size_t, int> expected[] = {{base, 0}, {base, 1}, {rev, 1}, {rev, 2}, {rev, 3}};
  for (int out = 0; out < 5; ++out) {
    for (const char* w : {"self_attn.o_proj.weight", "mlp.gate_proj.weight"}) {
      const auto& e = entry(p, layer(out, w));
      ASSERT_EQ(e.sources.size(), 1u);
      EXPECT_EQ(e.sources[0].model, expected[out].first) << e.name;
      EXPECT_EQ(e.sources[0].tensor, layer(expected[out].second, w)) << e.name;
      const double scale = out >= 2 && std::string(w) == "self_attn.o_proj.weight" ? 0.5 : 1.0;
      EXPECT_EQ(e.sources[0].params.at("scale"), scale) << e.name;
    }
  }
  EXPECT_EQ(entry(p, "model.embed_tokens.weight").sources[0].model, base);
  EXPECT_EQ(entry(p, "model.norm.weight").sources[0].model, rev);
  EXPECT_EQ(entry(p, "lm_head.weight").sources[0].model, rev);
  EXPECT_FALSE(has_entry(p, layer(5, "mlp.up_proj.weight")));
}

TEST_F(RecipeTest, DuplicatedLayersAndZeroLengthSliceChooseTheHeadDonor) {
  merge::Plan p = plan(R"(merge_method: passthrough
slices:
  - sources: [{model: $base, layer_range: [0, 3]}]
  - sources: [{model: $base, layer_range: [1, 4]}]
  - sources: [{model: $add, layer_range: [0, 0]}]
)");
  EXPECT_EQ(p.num_layers, 6);
  const int input_of[] = {0, 1, 2, 1, 2, 3};
  for (int out = 0; out < 6; ++out) {
    EXPECT_EQ(entry(p, layer(out, "mlp.up_proj.weight")).sources[0].tensor,
              layer(input_of[out], "mlp.up_proj.weight"));
  }
  const size_t add = model_index(p, zoo("add-expert"));
  EXPECT_EQ(entry(p, "lm_head.weight").sources[0].model, add);
  EXPECT_EQ(entry(p, "model.norm.weight").sources[0].model, add);
  EXPECT_NE(entry(p, "model.embed_tokens.weight").sources[0].model, add);
}

TEST_F(RecipeTest, DtypesTokenizerAndRelativePaths) {
  merge::Plan a = plan(R"(merge_method: linear
models:
  - {model: add-expert, parameters: {weight: 1}}
  - {model: rev-expert, parameters: {weight: 1}}
dtype: float16
tokenizer_source: rev-expert
)",
                       recipe::PlanOptions{zoo(""), false});
  EXPECT_EQ(a.compute_dtype, tensor::DType::kF16);
  EXPECT_EQ(a.out_dtype, tensor::DType::kF16);
  EXPECT_EQ(a.tokenizer_source, 1u);
  EXPECT_EQ(a.models[1], resolved(zoo("rev-expert")));
  EXPECT_EQ(entry(a, "model.norm.weight").out_dtype, tensor::DType::kF16);

  merge::Plan b = plan(R"(merge_method: task_arithmetic
base_model: {model: {path: $base}}
models: [{model: $add, parameters: {weight: 1}}]
dtype: bfloat16
out_dtype: torch.float32
tokenizer_source: base
)");
  EXPECT_EQ(b.compute_dtype, tensor::DType::kBF16);
  EXPECT_EQ(b.out_dtype, tensor::DType::kF32);
  EXPECT_EQ(b.tokenizer_source, b.base_model);
  EXPECT_EQ(b.models[*b.base_model], resolved(zoo("base")));
}

TEST_F(RecipeTest, LinearBaseNeedsAWeightButTaskArithmeticBaseDoesNot) {
  std::string e = error(R"(merge_method: linear
base_model: $base
models:
  - model: $add
    parameters: {weight: 1}
)");
  EXPECT_THAT(e, HasSubstr("ordinary input"));
  EXPECT_THAT(e, HasSubstr("'weight'"));
  EXPECT_THAT(e, HasSubstr(zoo("base").string()));
  // A top-level weight covers the base.
  merge::Plan p = plan(R"(merge_method: linear
base_model: $base
models:
  - model: $add
parameters: {weight: 0.5}
)");
  EXPECT_EQ(entry(p, "model.norm.weight").sources[1].params.at("weight"), 0.5);
}

TEST_F(RecipeTest, MissingRequiredParameterNamesModelTensorAndFilters) {
  std::string e = error(R"(merge_method: linear
models:
  - model: $add
    parameters: {weight: 1}
  - model: $rev
)");
  EXPECT_THAT(e, HasSubstr("recipe.yaml:5:12"));
  EXPECT_THAT(e, HasSubstr("missing required parameter 'weight' for model"));
  EXPECT_THAT(e, HasSubstr("rev-expert"));
  EXPECT_THAT(e, HasSubstr("model.embed_tokens.weight"));

  e = error(R"(merge_method: slerp
base_model: $base
models: [{model: $add}]
parameters:
  t: [{filter: self_attn, value: 0.5}]
)");
  EXPECT_THAT(e, HasSubstr("missing required parameter 't'"));
  EXPECT_THAT(e, HasSubstr("match nothing in 'model.embed_tokens.weight'"));
}

TEST_F(RecipeTest, IgnoredParametersAreWarnedAbout) {
  ::testing::internal::CaptureStderr();
  merge::Plan p = plan(R"(merge_method: linear
models:
  - model: $add
    parameters: {weight: 1, normalize: false}
  - model: $rev
    parameters: {weight: 1}
parameters:
  densty: 0.5
)");
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("'normalize' is a global parameter"));
  EXPECT_THAT(err, HasSubstr("does not take a parameter 'densty'"));
  EXPECT_EQ(entry(p, "model.norm.weight").global.at("normalize"), 1.0);  // the default
}

TEST_F(RecipeTest, SchemaErrorsNameTheKeyAndLine) {
  EXPECT_THAT(
      error("merge_method: linaer\nmodels: [{model: $add, parameters: {weight: 1}}]\n"),
      ::testing::AllOf(HasSubstr("recipe.yaml:1:15"), HasSubstr("unknown merge_method 'linaer'"),
                       HasSubstr("did you mean 'linear'"), HasSubstr("task_arithmetic")));
  EXPECT_THAT(error("merge_method: linear\nbase_modle: $base\nmodels: [{model: $add}]\n"),
              ::testing::AllOf(HasSubstr("recipe.yaml:2:1"), HasSubstr("unknown key 'base_modle'"),
                               HasSubstr("did you mean 'base_model'")));
  EXPECT_THAT(error("models: [{model: $add}]\n"), HasSubstr("missing 'merge_method'"));
  EXPECT_THAT(error("merge_method: linear\n"), HasSubstr("add a non-empty 'models:'"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add}]\n"
                    "slices: [{sources: [{model: $add, layer_range: [0, 4]}]}]\n"),
              HasSubstr("not both"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add\n"),
              ::testing::AllOf(HasSubstr("recipe.yaml:3:1"), HasSubstr("malformed YAML")));
  EXPECT_THAT(error("merge_method: linear\nmodels: 5\n"),
              ::testing::AllOf(HasSubstr("recipe.yaml:2:9"), HasSubstr("models must be a list")));
  EXPECT_THAT(
      error("merge_method: linear\nmodels:\n  - model: $add\n    parameters:\n"
            "      weight: \"0.5\"\n"),
      ::testing::AllOf(HasSubstr("recipe.yaml:5:15"), HasSubstr("models[0].parameters.weight"),
                       HasSubstr("quoted string"), HasSubstr("write 0.5 without quotes")));
  EXPECT_THAT(
      error("merge_method: linear\nmodels:\n  - model: $add\n    parameters: {weight: abc}\n"),
      HasSubstr("'abc' is not a number"));
  EXPECT_THAT(
      error(
          "merge_method: linear\nmodels:\n  - model: $add\n    parameters: {weight: [1, true]}\n"),
      HasSubstr("mixes numbers and true/false"));
  EXPECT_THAT(
      error("merge_method: passthrough\nslices:\n  - sources:\n"
            "      - {model: $add, layer_range: [0]}\n"),
      ::testing::AllOf(HasSubstr("slices[0].sources[0].layer_range"), HasSubstr("two integers")));
  EXPECT_THAT(error("merge_method: passthrough\nslices:\n  - sources:\n      - {model: $add}\n"),
              HasSubstr("missing 'layer_range"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add, weight: 1}]\n"),
              ::testing::AllOf(HasSubstr("unknown key 'weight' in models[0]"),
                               HasSubstr("model, parameters")));
  EXPECT_THAT(error("merge_method: linear\nmerge_method: ties\nmodels: [{model: $add}]\n"),
              HasSubstr("'merge_method' is given twice"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add}]\ndtype: int8\n"),
              HasSubstr("dtype: 'int8' is not a merge dtype"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add}]\n---\nmerge_method: ties\n"),
              HasSubstr("multi-stage"));
}

TEST_F(RecipeTest, UnsupportedFeaturesSayWhatToDoInstead) {
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add@main}]\n"),
              HasSubstr("revisions (path@revision) are not supported"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add+some/lora}]\n"),
              HasSubstr("the LoRA adapter directory 'some/lora' of BASE+LORA does not exist"));
  EXPECT_THAT(
      error("merge_method: linear\nmodels: [{model: {model: {path: $add, revision: v2}}}]\n"),
      HasSubstr("revisions are not supported"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: {model: $add, lora: x}}]\n"),
              HasSubstr("no such LoRA adapter directory"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add, parameters: {weight: 1}}]\n"
                    "tokenizer_source: $rev\n"),
              HasSubstr("is not one of the recipe's models"));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $add, parameters: {weight: 1}}]\n"
                    "tokenizer_source: base\n"),
              HasSubstr("tokenizer_source: base needs a base_model"));
}

TEST_F(RecipeTest, MissingModelsAndFiles) {
  std::string e = error("merge_method: linear\nmodels:\n  - model: org/not-here\n");
  EXPECT_THAT(e, ::testing::AllOf(HasSubstr("recipe.yaml:3:12"),
                                  HasSubstr("model 'org/not-here' not found"),
                                  HasSubstr("download it first")));
  fs::create_directories(tmp("empty"));
  testing::write_file(tmp("empty") / "config.json", "{}");
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $tmp/empty}]\n"),
              HasSubstr("no model.safetensors"));
  testing::write_tiny_model(tmp("noconfig"), TinyModel{});
  fs::remove(tmp("noconfig") / "config.json");
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: $tmp/noconfig}]\n"),
              HasSubstr("missing config.json"));
}

TEST_F(RecipeTest, LayerRangesAndSliceShapes) {
  EXPECT_THAT(error(R"(merge_method: passthrough
slices:
  - sources: [{model: $base, layer_range: [2, 5]}]
)"),
              ::testing::AllOf(HasSubstr("recipe.yaml:3:15"), HasSubstr("out of bounds"),
                               HasSubstr("has 4 layers")));
  EXPECT_THAT(error(R"(merge_method: linear
slices:
  - sources:
      - {model: $base, layer_range: [0, 2], parameters: {weight: 1}}
      - {model: $add, layer_range: [0, 3], parameters: {weight: 1}}
)"),
              ::testing::AllOf(HasSubstr("slices[0]"),
                               HasSubstr("All inputs to a slice must contain the same number of "
                                         "layers")));
  EXPECT_THAT(
      error(R"(merge_method: linear
models:
  - {model: $base, parameters: {weight: 1}}
  - {model: $large, parameters: {weight: 1}}
)"),
      ::testing::AllOf(HasSubstr("has 6"), HasSubstr("has 4"), HasSubstr("same number of layers")));
  EXPECT_THAT(error(R"(merge_method: passthrough
slices:
  - sources:
      - {model: $base, layer_range: [0, 2]}
      - {model: $add, layer_range: [0, 2]}
)"),
              ::testing::AllOf(HasSubstr("passthrough copies exactly one model per slice"),
                               HasSubstr("slices[0]")));
  EXPECT_THAT(error("merge_method: passthrough\nbase_model: $base\nmodels: [{model: $add}]\n"),
              HasSubstr("the base model counts"));
}

TEST_F(RecipeTest, BaseModelRequirements) {
  EXPECT_THAT(
      error("merge_method: slerp\nmodels: [{model: $base}, {model: $add}]\n"
            "parameters: {t: 0.5}\n"),
      ::testing::AllOf(HasSubstr("recipe.yaml:1:15"), HasSubstr("slerp needs a base model")));
  EXPECT_THAT(error("merge_method: slerp\nbase_model: $base\n"
                    "models: [{model: $add}, {model: $rev}]\nparameters: {t: 0.5}\n"),
              HasSubstr("merges exactly 2 models"));
  EXPECT_THAT(error("merge_method: ties\nmodels: [{model: $add, parameters: {weight: 1}}]\n"),
              HasSubstr("ties needs a base model"));
  EXPECT_THAT(
      error(R"(merge_method: task_arithmetic
base_model: $base
slices:
  - sources:
      - {model: $add, layer_range: [0, 4], parameters: {weight: 1}}
)"),
      ::testing::AllOf(HasSubstr("slices[0]"), HasSubstr("is not among this slice's sources")));
  // A slice-level base_model overrides the recipe's.
  merge::Plan p = plan(R"(merge_method: task_arithmetic
base_model: $base
slices:
  - sources:
      - {model: $base, layer_range: [0, 2]}
      - {model: $add, layer_range: [0, 2], parameters: {weight: 1}}
  - base_model: $rev
    sources:
      - {model: $add, layer_range: [2, 4], parameters: {weight: 1}}
      - {model: $rev, layer_range: [2, 4]}
)");
  EXPECT_EQ(entry(p, layer(0, "mlp.up_proj.weight")).base, 0u);
  EXPECT_EQ(entry(p, layer(2, "mlp.up_proj.weight")).base, 1u);
  EXPECT_EQ(entry(p, "lm_head.weight").base, 1u);
  EXPECT_FALSE(entry(p, layer(3, "mlp.up_proj.weight")).sources[1].params.count("weight"));
}

// Synthetic checkpoints for what the zoo cannot show.
class SyntheticRecipeTest : public RecipeTest {
 protected:
  std::string two_models(const std::string& method, const std::string& a, const std::string& b,
                         bool base = false) {
    std::string text = "merge_method: " + method + "\n";
    if (base) text += "base_model: $tmp/" + a + "\n";
    text += "models:\n  - {model: $tmp/" + a + ", parameters: {weight: 1}}\n";
    text += "  - {model: $tmp/" + b + ", parameters: {weight: 1}}\n";
    return text;
  }
};

TEST_F(SyntheticRecipeTest, ArchitecturesMustAgreeUnlessCrimesAreAllowed) {
  testing::write_tiny_model(tmp("llama"), TinyModel{});
  testing::write_tiny_model(tmp("mistral"), TinyModel{.architecture = "MistralForCausalLM"});
  const std::string text = two_models("linear", "llama", "mistral");
  EXPECT_THAT(error(text),
              ::testing::AllOf(HasSubstr("MistralForCausalLM"), HasSubstr("LlamaForCausalLM"),
                               HasSubstr("--allow-crimes")));
  merge::Plan p = plan(text, recipe::PlanOptions{".", true});
  EXPECT_EQ(p.num_layers, 2);
}

TEST_F(SyntheticRecipeTest, RequiredTensorMissingIsNamed) {
  testing::write_tiny_model(tmp("full"), TinyModel{});
  auto tensors = testing::tiny_tensors(TinyModel{});
  std::erase_if(tensors,
                [](const FakeTensor& t) { return t.name == layer(1, "mlp.down_proj.weight"); });
  testing::write_checkpoint(tmp("holed"), testing::tiny_config(TinyModel{}), tensors);
  std::string e = error(two_models("linear", "full", "holed"));
  EXPECT_THAT(e, ::testing::AllOf(HasSubstr("recipe.yaml:4:"),
                                  HasSubstr("tensor 'model.layers.1.mlp.down_proj.weight' missing "
                                            "in model"),
                                  HasSubstr("holed")));
}

TEST_F(SyntheticRecipeTest, TiedHeadsFallBackToEmbeddingsOrAreSkipped) {
  testing::write_tiny_model(tmp("tied"), TinyModel{.tied = true});
  testing::write_tiny_model(tmp("tied2"), TinyModel{.tied = true});
  testing::write_tiny_model(tmp("untied"), TinyModel{});
  merge::Plan mixed = plan(two_models("linear", "tied", "untied"));
  const auto& head = entry(mixed, "lm_head.weight");
  ASSERT_EQ(head.sources.size(), 2u);
  EXPECT_EQ(head.sources[0].tensor, "model.embed_tokens.weight");
  EXPECT_EQ(head.sources[1].tensor, "lm_head.weight");
  merge::Plan all_tied = plan(two_models("linear", "tied", "tied2"));
  EXPECT_FALSE(has_entry(all_tied, "lm_head.weight"));
  EXPECT_TRUE(has_entry(all_tied, "model.embed_tokens.weight"));
}

TEST_F(SyntheticRecipeTest, OptionalBiasesAreMergedWhenSomeModelsHaveThem) {
  testing::write_tiny_model(tmp("plain"), TinyModel{});
  testing::write_tiny_model(tmp("biased"), TinyModel{.qkv_bias = true});
  merge::Plan p = plan(two_models("linear", "plain", "biased"));
  const auto& bias = entry(p, layer(0, "self_attn.q_proj.bias"));
  ASSERT_EQ(bias.sources.size(), 1u);  // only the model that has it
  EXPECT_EQ(bias.sources[0].model, 1u);
  EXPECT_FALSE(has_entry(p, layer(0, "self_attn.o_proj.bias")));  // nobody has it
}

TEST_F(SyntheticRecipeTest, NonEmbeddingShapeMismatch) {
  testing::write_tiny_model(tmp("a"), TinyModel{});
  auto tensors = testing::tiny_tensors(TinyModel{});
  for (auto& t : tensors) {
    if (t.name == layer(1, "mlp.down_proj.weight")) t.shape = {8, 12};  // config.json states no width for this one
  }
  testing::write_checkpoint(tmp("b"), testing::tiny_config(TinyModel{}), tensors);
  EXPECT_THAT(error(two_models("linear", "a", "b")),
              ::testing::AllOf(HasSubstr("tensor 'model.layers.1.mlp.down_proj.weight'"),
                               HasSubstr("[8, 12]"), HasSubstr("[8, 16]"),
                               HasSubstr("linear needs the same shapes")));
  // Task arithmetic leaves the odd model out of that tensor, with a warning.
  ::testing::internal::CaptureStderr();
  merge::Plan p = plan(two_models("task_arithmetic", "a", "b", /*base=*/true));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("left out of this tensor"));
  const auto& e = entry(p, layer(1, "mlp.down_proj.weight"));
  ASSERT_EQ(e.sources.size(), 1u);
  EXPECT_EQ(e.base, 0u);
  EXPECT_EQ(e.shape, (tensor::Shape{8, 16}));
  EXPECT_EQ(entry(p, layer(0, "mlp.down_proj.weight")).sources.size(), 2u);
}

TEST_F(SyntheticRecipeTest, VocabularyMismatchCropsAsMergekitDoes) {
  testing::write_tiny_model(tmp("v32"), TinyModel{.vocab = 32});
  testing::write_tiny_model(tmp("v40"), TinyModel{.vocab = 40});
  testing::write_tiny_model(tmp("v24"), TinyModel{.vocab = 24});
  // linear / slerp: the common sub-matrix.
  ::testing::internal::CaptureStderr();
  merge::Plan lin = plan(two_models("linear", "v32", "v40"));
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), HasSubstr("common [32, 8]"));
  EXPECT_EQ(entry(lin, "model.embed_tokens.weight").shape, (tensor::Shape{32, 8}));
  EXPECT_EQ(entry(lin, "lm_head.weight").shape, (tensor::Shape{32, 8}));
  merge::Plan lin2 = plan(two_models("linear", "v40", "v24"));
  EXPECT_EQ(entry(lin2, "model.embed_tokens.weight").shape, (tensor::Shape{24, 8}));
  // Task arithmetic: cropped to the base when the others are larger...
  merge::Plan ta = plan(two_models("task_arithmetic", "v32", "v40", /*base=*/true));
  const auto& embed = entry(ta, "model.embed_tokens.weight");
  EXPECT_EQ(embed.shape, (tensor::Shape{32, 8}));
  EXPECT_EQ(embed.sources.size(), 2u);
  EXPECT_TRUE(embed.is_embed);
  // ... and refused when one is smaller.
  EXPECT_THAT(error(two_models("task_arithmetic", "v32", "v24", /*base=*/true)),
              ::testing::AllOf(HasSubstr("[24, 8]"), HasSubstr("[32, 8]"), HasSubstr("v24"),
                               HasSubstr("smallest vocabulary as base_model"),
                               HasSubstr("tokenizer_source")));
}

TEST_F(SyntheticRecipeTest, UnknownArchitectureIsInferredFromTensorNames) {
  auto config = [](int64_t vocab) {
    return nlohmann::ordered_json{
        {"architectures", {"TinyNetForCausalLM"}}, {"vocab_size", vocab}, {"num_hidden_layers", 3}};
  };
  auto tensors = [](bool with_head) {
    std::vector<FakeTensor> t = {{"net.wte.weight", {32, 8}},
                                 {"net.pos_ids", {16}, tensor::DType::kI64},
                                 {"net.ln_f.weight", {8}}};
    if (with_head) t.push_back({"lm_head.weight", {32, 8}});
    for (int l = 0; l < 3; ++l) {
      t.push_back({"net.blocks." + std::to_string(l) + ".attn.weight", {8, 8}});
      t.push_back({"net.blocks." + std::to_string(l) + ".ln.weight", {8}});
    }
    return t;
  };
  testing::write_checkpoint(tmp("a"), config(32), tensors(true));
  testing::write_checkpoint(tmp("b"), config(32), tensors(false));
  merge::Plan p = plan(R"(merge_method: linear
slices:
  - sources:
      - {model: $tmp/a, layer_range: [0, 2]}
      - {model: $tmp/b, layer_range: [1, 3]}
  - sources:
      - {model: $tmp/b, layer_range: [2, 3]}
      - {model: $tmp/a, layer_range: [0, 1]}
parameters: {weight: 1}
)");
  std::vector<std::string> names;
  for (const auto& e : p.entries) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"net.pos_ids", "net.wte.weight",
                                             "net.blocks.0.attn.weight", "net.blocks.0.ln.weight",
                                             "net.blocks.1.attn.weight", "net.blocks.1.ln.weight",
                                             "net.blocks.2.attn.weight", "net.blocks.2.ln.weight",
                                             "net.ln_f.weight", "lm_head.weight"}));
  EXPECT_EQ(p.num_layers, 3);
  const auto& ids = entry(p, "net.pos_ids");
  EXPECT_TRUE(ids.passthrough_bytes);
  EXPECT_EQ(ids.out_dtype, tensor::DType::kI64);
  ASSERT_EQ(ids.sources.size(), 1u);
  EXPECT_EQ(ids.sources[0].model, 0u);
  EXPECT_TRUE(entry(p, "net.wte.weight").is_embed);
  EXPECT_FALSE(entry(p, "net.ln_f.weight").is_embed);
  const auto& l1 = entry(p, "net.blocks.1.attn.weight");
  EXPECT_EQ(l1.sources[0].tensor, "net.blocks.1.attn.weight");
  EXPECT_EQ(l1.sources[1].tensor, "net.blocks.2.attn.weight");
  const auto& l2 = entry(p, "net.blocks.2.attn.weight");
  EXPECT_EQ(l2.sources[0].model, 1u);
  EXPECT_EQ(l2.sources[0].tensor, "net.blocks.2.attn.weight");
  EXPECT_EQ(l2.sources[1].tensor, "net.blocks.0.attn.weight");
  // The head comes from the last slice (b first, which is tied to its embeddings).
  const auto& head = entry(p, "lm_head.weight");
  EXPECT_TRUE(head.is_embed);
  ASSERT_EQ(head.sources.size(), 2u);
  EXPECT_EQ(head.sources[0].tensor, "net.wte.weight");
  EXPECT_EQ(head.sources[1].tensor, "lm_head.weight");
}

}  // namespace
}  // namespace amalgam
