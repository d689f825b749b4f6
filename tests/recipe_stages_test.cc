// Multi-stage recipes (mergekit-multi documents) on the zoo models: the staged result equals
// running each stage by hand, finished stages are skipped on re-runs and changed ones re-run,
// bad graphs fail at the reference; the modules: {default: ...} form; YAML as people write it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include "merge/finalize.h"
#include "recipe/stages.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::zoo;

std::string bytes(const fs::path& p) { return core::read_text_file(p); }

class StagesTest : public ::testing::Test {
 protected:
  // Replaces $base, $add, $rev, $sort (zoo models).
  static std::string fill(std::string text) {
    const std::vector<std::pair<std::string, std::string>> vars = {
        {"$base", zoo("base").string()},
        {"$add", zoo("add-expert").string()},
        {"$rev", zoo("rev-expert").string()},
        {"$sort", zoo("sort-expert").string()}};
    for (const auto& [var, value] : vars) {
      for (size_t p = text.find(var); p != std::string::npos; p = text.find(var, p + 1)) {
        text.replace(p, var.size(), value);
      }
    }
    return text;
  }

  fs::path write(const std::string& text, const std::string& name = "recipe.yaml") {
    fs::path path = dir_ / name;
    testing::write_file(path, fill(text));
    return path;
  }

  static void write_plan(const merge::Plan& plan, const fs::path& out, bool force) {
    merge::InputSet inputs;
    merge::OutputOptions options;
    options.force = force;
    options.execute.threads = 2;
    options.execute.progress = false;
    merge::write_model(plan, inputs, out, options);
  }

  recipe::StagesReport run(const std::string& text, const fs::path& out,
                           recipe::StageOptions options = {}) {
    const fs::path path = write(text);
    return recipe::run_stages(core::read_text_file(path), path.string(), out, options,
                              [&](const merge::Plan& plan, const fs::path& o, bool intermediate) {
                                write_plan(plan, o, intermediate || options.force);
                              });
  }

  // A single recipe merged the ordinary way.
  void merge_single(const std::string& text, const fs::path& out) {
    const fs::path path = write(text, "single.yaml");
    write_plan(recipe::plan_from_file(path, {}), out, false);
  }

  // The error of a multi-stage recipe that must fail before anything is written.
  std::string error(const std::string& text, recipe::StageOptions options = {}) {
    try {
      run(text, dir_ / "err-out", options);
    } catch (const Error& e) {
      EXPECT_FALSE(fs::exists(dir_ / "err-out"));
      EXPECT_FALSE(fs::exists(dir_ / "err-out.stages"));
      return e.what();
    }
    ADD_FAILURE() << "recipe accepted:\n" << fill(text);
    return "";
  }

  testing::TempDir dir_;
};

const std::string kStageA = R"(name: experts
merge_method: linear
models:
  - model: $add
    parameters: {weight: 0.6}
  - model: $rev
    parameters: {weight: 0.4}
dtype: float32
)";
const std::string kFinal = R"(merge_method: task_arithmetic
base_model: $base
models:
  - model: experts
    parameters: {weight: 0.7}
dtype: float32
)";

TEST_F(StagesTest, TwoStagesEqualMergingEachStageByHand) {
  const recipe::StagesReport report = run(kStageA + "---\n" + kFinal, dir_ / "out");
  EXPECT_THAT(report.merged, ElementsAre("experts", "final"));
  EXPECT_TRUE(report.skipped.empty());
  EXPECT_FALSE(fs::exists(dir_ / "out.stages")) << "intermediates are removed by default";

  merge_single(kStageA, dir_ / "hand-a");
  std::string final_by_hand = kFinal;
  final_by_hand.replace(final_by_hand.find("experts"), 7, (dir_ / "hand-a").string());
  merge_single(final_by_hand, dir_ / "hand");
  EXPECT_EQ(bytes(dir_ / "out" / "model.safetensors"), bytes(dir_ / "hand" / "model.safetensors"));
  EXPECT_EQ(bytes(dir_ / "out" / "config.json"), bytes(dir_ / "hand" / "config.json"));
  EXPECT_EQ(bytes(dir_ / "out" / "mergekit_config.yml"), "---\n" + fill(kFinal))
      << "the output records the final stage's document";

  // And both equal the maths: base + 0.7 (0.6 add + 0.4 rev - base), in fp64.
  io::Checkpoint out(dir_ / "out"), base(zoo("base")), add(zoo("add-expert")),
      rev(zoo("rev-expert"));
  size_t checked = 0;
  for (const std::string name : {"model.layers.1.self_attn.q_proj.weight", "model.norm.weight",
                                 "model.embed_tokens.weight"}) {
    const auto o = out.load_f32(name), b = base.load_f32(name), a = add.load_f32(name),
               r = rev.load_f32(name);
    double worst = 0, scale = 0;
    bool differs_from_base = false;
    for (size_t i = 0; i < o.data.size(); ++i) {
      const double want = b.data[i] + 0.7 * (0.6 * a.data[i] + 0.4 * r.data[i] - b.data[i]);
      worst = std::max(worst, std::fabs(o.data[i] - want));
      scale = std::max(scale, std::fabs(want));
      differs_from_base = differs_from_base || o.data[i] != b.data[i];
    }
    EXPECT_LE(worst, 1e-6 * scale) << name;
    EXPECT_TRUE(differs_from_base) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 3u);
}

TEST_F(StagesTest, FinishedStagesAreSkippedAndChangedOnesRerun) {
  const std::string a = R"(name: a
merge_method: linear
models: [{model: $add, parameters: {weight: 0.5}}, {model: $rev, parameters: {weight: 0.5}}]
)";
  const std::string b = R"(---
name: b
merge_method: linear
models: [{model: a, parameters: {weight: 0.5}}, {model: $sort, parameters: {weight: 0.5}}]
)";
  const std::string c = R"(---
name: c
merge_method: linear
models: [{model: $sort, parameters: {weight: 0.3}}, {model: $rev, parameters: {weight: 0.7}}]
)";
  const std::string last = R"(---
merge_method: task_arithmetic
base_model: $base
models: [{model: b, parameters: {weight: 1.0}}, {model: c, parameters: {weight: 0.5}}]
)";
  recipe::StageOptions options;
  options.keep_intermediates = true;
  options.force = true;
  const fs::path out = dir_ / "out", stages = dir_ / "out.stages";
  EXPECT_THAT(run(a + b + c + last, out, options).merged, ElementsAre("a", "b", "c", "final"));
  ASSERT_TRUE(fs::exists(stages / "a" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(stages / "a.recipe-sha256"));
  const auto stamp_a = fs::last_write_time(stages / "a" / "model.safetensors");
  const auto stamp_c = fs::last_write_time(stages / "c" / "model.safetensors");
  const std::string first_output = bytes(out / "model.safetensors");

  recipe::StagesReport again = run(a + b + c + last, out, options);
  EXPECT_THAT(again.skipped, ElementsAre("a", "b", "c"));
  EXPECT_THAT(again.merged, ElementsAre("final"));
  EXPECT_EQ(fs::last_write_time(stages / "a" / "model.safetensors"), stamp_a);
  EXPECT_EQ(bytes(out / "model.safetensors"), first_output);

  // Changing a re-runs a and b, which reads it, but not c.
  std::string a2 = a;
  a2.replace(a2.find("0.5"), 3, "0.2");
  const std::string b_before = bytes(stages / "b" / "model.safetensors");
  recipe::StagesReport changed = run(a2 + b + c + last, out, options);
  EXPECT_THAT(changed.merged, ElementsAre("a", "b", "final"));
  EXPECT_THAT(changed.skipped, ElementsAre("c"));
  EXPECT_EQ(fs::last_write_time(stages / "c" / "model.safetensors"), stamp_c);
  EXPECT_NE(bytes(stages / "b" / "model.safetensors"), b_before);
  EXPECT_NE(bytes(out / "model.safetensors"), first_output);

  // A missing output (or a different seed) re-runs the stage even when its hash file is there.
  fs::remove_all(stages / "c");
  EXPECT_THAT(run(a2 + b + c + last, out, options).merged, ElementsAre("c", "final"));
  // Rebuilt from the same recipe, a writes the same bytes, so b (which reads it) stays current.
  const std::string a_bytes = bytes(stages / "a" / "model.safetensors");
  fs::remove_all(stages / "a");
  EXPECT_THAT(run(a2 + b + c + last, out, options).merged, ElementsAre("a", "final"));
  EXPECT_EQ(bytes(stages / "a" / "model.safetensors"), a_bytes);
  options.seed = 7;
  EXPECT_THAT(run(a2 + b + c + last, out, options).merged, ElementsAre("a", "b", "c", "final"));

  // Without --keep-intermediates they go once the output is written.
  options.keep_intermediates = false;
  EXPECT_THAT(run(a2 + b + c + last, out, options).skipped, ElementsAre("a", "b", "c"));
  EXPECT_FALSE(fs::exists(stages));
}

TEST_F(StagesTest, IntermediateDirectoryFinalStageChoiceAndUnusedStages) {
  recipe::StageOptions options;
  options.intermediate_dir = dir_ / "work";
  options.keep_intermediates = true;
  run(kStageA + "---\n" + kFinal, dir_ / "out", options);
  EXPECT_TRUE(fs::exists(dir_ / "work" / "experts" / "config.json"));
  EXPECT_FALSE(fs::exists(dir_ / "out.stages"));

  // All documents named: the last is the final one, unless --final names another.
  const std::string named = kStageA + "---\nname: last\n" + kFinal;
  EXPECT_THAT(run(named, dir_ / "out-last").merged, ElementsAre("experts", "last"));
  options = {};
  options.final_stage = "experts";
  EXPECT_THAT(run(named, dir_ / "out-experts", options).merged, ElementsAre("experts"));
  merge_single(kStageA, dir_ / "hand-a");
  EXPECT_EQ(bytes(dir_ / "out-experts" / "model.safetensors"),
            bytes(dir_ / "hand-a" / "model.safetensors"));
  options.final_stage = "expert";
  EXPECT_THAT(error(named, options),
              AllOf(HasSubstr("no stage is named 'expert'"), HasSubstr("did you mean 'experts'")));
  // An existing output is not replaced without --force, and nothing runs.
  fs::create_directories(dir_ / "busy");
  testing::write_file(dir_ / "busy" / "notes.txt", "mine");
  try {
    run(kStageA + "---\n" + kFinal, dir_ / "busy");
    ADD_FAILURE() << "an existing output was replaced";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("use --force"));
  }
  EXPECT_FALSE(fs::exists(dir_ / "busy.stages"));
  EXPECT_EQ(bytes(dir_ / "busy" / "notes.txt"), "mine");
}

TEST_F(StagesTest, GraphErrorsNameTheReference) {
  const std::string cycle = R"(name: a
merge_method: linear
models: [{model: b, parameters: {weight: 1}}]
---
name: b
merge_method: linear
models:
  - model: $add
    parameters: {weight: 1}
  - model: a
    parameters: {weight: 1}
---
merge_method: linear
models: [{model: a, parameters: {weight: 1}}]
)";
  EXPECT_THAT(error(cycle),
              AllOf(HasSubstr("recipe.yaml:10:12"), HasSubstr("a -> b -> a"), HasSubstr("cycle")));
  EXPECT_THAT(error("name: a\nmerge_method: linear\nmodels: [{model: a}]\n---\n"
                    "merge_method: linear\nmodels: [{model: a}]\n"),
              AllOf(HasSubstr("recipe.yaml:3:18"), HasSubstr("a -> a")));
  EXPECT_THAT(error(kStageA + "---\n" + "merge_method: linear\nmodels:\n  - model: expertz\n"),
              AllOf(HasSubstr("recipe.yaml:12:12"), HasSubstr("'expertz' is neither a stage"),
                    HasSubstr("did you mean 'experts'"), HasSubstr("stages: experts")));
  EXPECT_THAT(error(kStageA + "---\nmerge_method: task_arithmetic\nbase_model: basis\n"
                              "models: [{model: experts}]\n"),
              AllOf(HasSubstr("recipe.yaml:11:13"), HasSubstr("'basis' is neither")));
  EXPECT_THAT(error(kStageA + "---\n" + kStageA + "---\n" + kFinal),
              AllOf(HasSubstr("recipe.yaml:10:7"), HasSubstr("'experts' is used twice"),
                    HasSubstr("line 1")));
  EXPECT_THAT(error(kFinal + "---\n" + kFinal),
              AllOf(HasSubstr("recipe.yaml:8:15"), HasSubstr("a second document without 'name:'")));
  EXPECT_THAT(error("name: a/b\nmerge_method: linear\nmodels: [{model: $add}]\n---\n" + kFinal),
              AllOf(HasSubstr("recipe.yaml:1:7"), HasSubstr("without slashes")));
  // Schema errors keep their lines and did-you-mean in any document.
  EXPECT_THAT(error(kStageA + "---\nnmae: x\n" + kFinal),
              AllOf(HasSubstr("recipe.yaml:10:1"), HasSubstr("did you mean 'name'")));
  // The single-recipe path points multi-stage recipes to merge.
  EXPECT_THAT(
      [&] {
        try {
          recipe::plan_from_file(write(kStageA + "---\n" + kFinal), {});
        } catch (const Error& e) {
          return std::string(e.what());
        }
        return std::string();
      }(),
      AllOf(HasSubstr("recipe.yaml:10:1"), HasSubstr("multi-stage"), HasSubstr("amalgam merge")));
}

TEST_F(StagesTest, CommandLineRunsStagesAndSkipsFinishedOnes) {
  const fs::path recipe = write(kStageA + "---\n" + kFinal);
  const fs::path out = dir_ / "out";
  const std::string args = "merge " + recipe.string() + " -o " + out.string();
  auto first = testing::run_amalgam(args + " --keep-intermediates");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_THAT(first.output, HasSubstr("stage 'experts' (1 of 2): merging"));
  EXPECT_TRUE(fs::exists(dir_ / "out.stages" / "experts" / "model.safetensors"));
  auto second = testing::run_amalgam(args + " --force");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("stage 'experts': up to date"));
  EXPECT_FALSE(fs::exists(dir_ / "out.stages"));
  merge_single(kStageA, dir_ / "hand-a");
  std::string final_by_hand = kFinal;
  final_by_hand.replace(final_by_hand.find("experts"), 7, (dir_ / "hand-a").string());
  merge_single(final_by_hand, dir_ / "hand");
  EXPECT_EQ(bytes(out / "model.safetensors"), bytes(dir_ / "hand" / "model.safetensors"));
}

// Plans compared entry by entry: names, inputs and every resolved parameter.
void expect_same_plan(const merge::Plan& a, const merge::Plan& b) {
  EXPECT_EQ(a.models, b.models);
  EXPECT_EQ(a.method, b.method);
  ASSERT_EQ(a.entries.size(), b.entries.size());
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const merge::PlanEntry &x = a.entries[i], &y = b.entries[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.global, y.global) << x.name;
    ASSERT_EQ(x.sources.size(), y.sources.size()) << x.name;
    for (size_t k = 0; k < x.sources.size(); ++k) {
      EXPECT_EQ(x.sources[k].model, y.sources[k].model) << x.name;
      EXPECT_EQ(x.sources[k].tensor, y.sources[k].tensor) << x.name;
      EXPECT_EQ(x.sources[k].params, y.sources[k].params) << x.name;
    }
  }
}

const merge::PlanEntry& entry(const merge::Plan& plan, const std::string& name) {
  for (const auto& e : plan.entries) {
    if (e.name == name) return e;
  }
  throw std::runtime_error("no plan entry " + name);
}

class RecipeFormsTest : public StagesTest {
 protected:
  merge::Plan plan(const std::string& text, recipe::PlanOptions options = {}) {
    return recipe::plan_from_yaml(fill(text), "recipe.yaml", options);
  }
  std::string error(const std::string& text, recipe::PlanOptions options = {}) {
    try {
      plan(text, options);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "recipe accepted:\n" << fill(text);
    return "";
  }
};

const std::string kSlices = R"(
    - sources:
        - {model: $add, layer_range: [0, 4]}
        - {model: $rev, layer_range: [0, 4]}
)";

TEST_F(RecipeFormsTest, ModulesDefaultMeansTopLevelSlicesOrModels) {
  const merge::Plan top = plan("merge_method: linear\nslices:" + kSlices + R"(parameters:
  weight: [{filter: mlp, value: [0.2, 0.8]}, {filter: self_attn, value: 0.3}, {value: 0.5}]
)");
  // Module parameters rank above top-level ones; an unmatched module filter falls through.
  const merge::Plan modules =
      plan("merge_method: linear\nmodules:\n  default:\n    slices:" + kSlices + R"(    parameters:
      weight: [{filter: mlp, value: [0.2, 0.8]}]
parameters:
  weight: [{filter: self_attn, value: 0.3}, {value: 0.5}]
)");
  expect_same_plan(top, modules);
  EXPECT_DOUBLE_EQ(
      entry(modules, "model.layers.3.mlp.up_proj.weight").sources[0].params.at("weight"), 0.8);
  EXPECT_DOUBLE_EQ(
      entry(modules, "model.layers.0.mlp.up_proj.weight").sources[1].params.at("weight"), 0.2);
  EXPECT_DOUBLE_EQ(
      entry(modules, "model.layers.2.self_attn.k_proj.weight").sources[0].params.at("weight"), 0.3);
  EXPECT_DOUBLE_EQ(entry(modules, "model.norm.weight").sources[0].params.at("weight"), 0.5);

  expect_same_plan(
      plan("merge_method: linear\nmodels: [{model: $add, parameters: {weight: 0.3}}, "
           "{model: $rev, parameters: {weight: 0.7}}]\n"),
      plan("merge_method: linear\nmodules: {default: {models: [{model: $add, parameters: "
           "{weight: 0.3}}, {model: $rev, parameters: {weight: 0.7}}]}}\n"));

  EXPECT_THAT(error("merge_method: linear\nmodules:\n  vision_tower:\n    slices:" + kSlices),
              AllOf(HasSubstr("recipe.yaml:3:3"), HasSubstr("module 'vision_tower' is not "),
                    HasSubstr("'default'")));
  EXPECT_THAT(error("merge_method: linear\nmodules:\n  defualt:\n    slices:" + kSlices),
              HasSubstr("did you mean 'default'"));
  EXPECT_THAT(error("merge_method: linear\nmodules:\n  default:\n    slice:" + kSlices),
              AllOf(HasSubstr("recipe.yaml:4:5"),
                    HasSubstr("unknown key 'slice' in "
                              "modules.default"),
                    HasSubstr("did you mean 'slices'")));
  EXPECT_THAT(error("merge_method: linear\nslices:" + kSlices +
                    "modules:\n  default:\n    slices:" + kSlices),
              AllOf(HasSubstr("recipe.yaml:2:1"), HasSubstr("not both")));
  EXPECT_THAT(error("merge_method: linear\nmodules: {}\n"), HasSubstr("modules: is empty"));
  EXPECT_THAT(error("merge_method: linear\nmodules:\n  default:\n    slices:\n"
                    "      - sources: [{model: $add, layer_range: [0]}]\n"),
              HasSubstr("modules.default.slices[0].sources[0].layer_range"));
}

TEST_F(RecipeFormsTest, NumbersBooleansAndExponents) {
  auto normalize = [&](const std::string& v) {
    return entry(plan("merge_method: linear\nmodels: [{model: $add, parameters: {weight: 1}}]\n"
                      "parameters: {normalize: " +
                      v + "}\n"),
                 "model.norm.weight")
        .global.at("normalize");
  };
  EXPECT_EQ(normalize("1.0"), 1.0);
  EXPECT_EQ(normalize("0"), 0.0);
  EXPECT_EQ(normalize("0.0"), 0.0);
  EXPECT_EQ(normalize("yes"), 1.0);
  EXPECT_EQ(normalize("False"), 0.0);
  auto weight = [&](const std::string& v) {
    return entry(plan("merge_method: linear\nmodels: [{model: $add, parameters: {weight: " + v +
                      "}}]\n"),
                 "model.norm.weight")
        .sources[0]
        .params.at("weight");
  };
  EXPECT_EQ(weight("1e-5"), 1e-5);
  EXPECT_EQ(weight("2.5E-3"), 2.5e-3);
  EXPECT_EQ(weight(".5"), 0.5);
  EXPECT_EQ(weight("+0.25"), 0.25);
  EXPECT_EQ(weight("!!float 1e-5"), 1e-5);
  EXPECT_EQ(weight("true"), 1.0);
}

TEST_F(RecipeFormsTest, CommentsAnywhere) {
  const merge::Plan plain = plan(R"(merge_method: task_arithmetic
base_model: $base
models:
  - model: $add
    parameters: {weight: [0.2, 0.9], density: 1}
  - model: $rev
    parameters:
      weight: 0.4
parameters: {normalize: true}
dtype: float32
)");
  const merge::Plan commented = plan(R"(# a recipe with notes everywhere
--- # the only document
merge_method: task_arithmetic   # method
# between keys
base_model: $base # the anchor
models:   # two experts
  # before an item
  - model: $add  # first
    parameters: {weight: [0.2, # start
                          0.9], # end
                 density: 1}
  # between items

  - model: $rev
    parameters:
      # before a key
      weight: 0.4   # trailing
parameters: {normalize: true}  # flow map
dtype: float32 # last line, no newline)");
  expect_same_plan(plain, commented);
  EXPECT_DOUBLE_EQ(
      entry(commented, "model.layers.3.mlp.up_proj.weight").sources[0].params.at("weight"), 0.9);
}

TEST_F(RecipeFormsTest, WindowsPaths) {
  recipe::PlanOptions options;
  options.base_dir = testing::source_dir() / "data";
  const merge::Plan p = plan(
      "merge_method: linear\nmodels:\n"
      "  - {model: zoo\\add-expert, parameters: {weight: 1}}\n"
      "  - {model: 'zoo\\rev-expert', parameters: {weight: 1}}\n",
      options);
  ASSERT_EQ(p.models.size(), 2u);
  EXPECT_EQ(p.models[0], fs::weakly_canonical(zoo("add-expert")));
  EXPECT_EQ(p.models[1], fs::weakly_canonical(zoo("rev-expert")));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: 'C:\\models\\add'}]\n"),
              AllOf(HasSubstr("recipe.yaml:2:18"), HasSubstr("Windows drive path")));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: \"C:\\models\\add\"}]\n"),
              AllOf(HasSubstr("malformed YAML"), HasSubstr("single quotes")));
  EXPECT_THAT(error("merge_method: linear\nmodels: [{model: \"zoo\\tadd\"}]\n"),
              AllOf(HasSubstr("models[0].model"), HasSubstr("control character")));
}

}  // namespace
}  // namespace amalgam
