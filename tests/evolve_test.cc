// Recipe search: config errors, genome -> recipe -> plan round trip, the data-flow scale identity
// against an fp64 forward that scales the residual stream, the resident model's reuse and
// aliasing, and whole searches through the CLI (resume equals an uninterrupted run; 2 MPI ranks
// equal 1).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "evolve/config.h"
#include "evolve/genome.h"
#include "evolve/resident.h"
#include "infer/batch.h"
#include "infer_reference.h"
#include "merge/executor.h"
#include "merge/sink.h"
#include "recipe/recipe.h"
#include "test_util.h"

namespace amalgam {
namespace {

using testing::TempDir;
using testing::zoo;
namespace fs = std::filesystem;

using testing::expect_error;

std::string zoo_config(const std::string& extra) {
  return fmt::format("base_model: {}\nmodels: [{}, {}]\ntasks:\n  - {{file: {}, limit: 4}}\n{}",
                     zoo("base").string(), zoo("rev-expert").string(), zoo("sort-expert").string(),
                     zoo("eval/rev.json").string(), extra);
}

TEST(EvolveConfig, UnknownKeysAndBadValuesAreNamed) {
  expect_error([] { evolve::parse_config(zoo_config("layer_group: 2\n"), "run.yaml"); },
               "did you mean 'layer_groups'");
  expect_error([] { evolve::parse_config(zoo_config("method: dare\n"), "run.yaml"); },
               "cannot be searched");
  expect_error([] { evolve::parse_config(zoo_config("search: both\n"), "run.yaml"); },
               "ps, dfs or ps+dfs");
  expect_error([] { evolve::parse_config(zoo_config("parameters: {lambda: x}\n"), "run.yaml"); },
               "must be a number");
  const auto c =
      evolve::parse_config(zoo_config("layer_groups: 2\nbudget: {evaluations: 7}\n"), "run.yaml");
  EXPECT_EQ(c.method, "dare_ties");
  EXPECT_EQ(c.max_evaluations, 7);
  EXPECT_EQ(*c.layer_groups, 2);
}

evolve::SearchModel search_model(const std::string& name) { return {zoo(name), 4, name}; }

TEST(Genome, ParameterSpaceRecipeRoundTripsThroughThePlan) {
  const auto c = evolve::parse_config(
      zoo_config("method: ties\nlayer_groups: 2\nfilters: [self_attn, mlp]\n"), "run.yaml");
  evolve::PsGenome genome(c, {search_model("rev-expert"), search_model("sort-expert")});
  // 2 groups x 2 models x 3 filter sets x (weight, density).
  ASSERT_EQ(genome.size(), 24u);
  std::vector<double> unit(genome.size());
  for (size_t i = 0; i < unit.size(); ++i) unit[i] = 0.03 + 0.04 * static_cast<double>(i);
  const std::vector<double> v = genome.values(unit);
  const merge::Plan plan = recipe::plan_from_yaml(genome.recipe(unit), "candidate", {});
  auto gene = [&](size_t g, size_t m, size_t f, size_t p) {
    return v[((g * 2 + m) * 3 + f) * 2 + p];
  };
  size_t checked = 0;
  for (const auto& e : plan.entries) {
    const size_t layer = e.name.find("layers.") == std::string::npos
                             ? (e.name.find("embed") != std::string::npos ? 0 : 3)
                             : std::stoul(e.name.substr(e.name.find("layers.") + 7));
    const size_t g = layer / 2;
    const size_t f = e.name.find("self_attn") != std::string::npos ? 0
                     : e.name.find("mlp") != std::string::npos     ? 1
                                                                   : 2;
    for (size_t s = 0; s < e.sources.size(); ++s) {
      if (e.base && s == *e.base) continue;
      const size_t m = plan.models[e.sources[s].model] == fs::absolute(zoo("rev-expert")) ? 0 : 1;
      EXPECT_NEAR(e.sources[s].params.at("weight"), gene(g, m, f, 0), 1e-6) << e.name;
      EXPECT_NEAR(e.sources[s].params.at("density"), gene(g, m, f, 1), 1e-6) << e.name;
      ++checked;
    }
    EXPECT_EQ(e.global.at("normalize"), 1.0);  // as mergekit-evolve writes ties recipes
  }
  EXPECT_EQ(checked, 2 * plan.entries.size());
}

// A path through the layers of two tiny fp32 models with stream scales: merged as the
// passthrough recipe the genome writes, it computes what a forward pass that multiplies the
// residual stream before each hop computes (up to RMSNorm's epsilon).
TEST(Genome, DataFlowPathEqualsScaledResidualStream) {
  TempDir dir;
  testing::TinySpec spec;
  spec.dtype = tensor::DType::kF32;
  spec.L = 3;
  spec.seed = 5;
  const testing::RefModel a = testing::write_tiny_model(dir / "a", spec);
  spec.seed = 6;
  const testing::RefModel b = testing::write_tiny_model(dir / "b", spec);

  evolve::EvolveConfig c;
  c.dfs.repeats = 2;
  c.dfs.scales = true;
  evolve::DfsGenome genome(c, {{dir / "a", 3, "a"}, {dir / "b", 3, "b"}});
  const std::vector<evolve::Hop> path = {
      {0, 0, 1.0}, {1, 1, 0.6}, {0, 1, 1.7}, {1, 1, 0.9}, {0, 2, 1.25}};
  const merge::Plan plan = recipe::plan_from_yaml(genome.recipe_of(path), "path", {});
  merge::InputSet inputs;
  evolve::ResidentModel resident(inputs, 1, 0);
  const auto model = resident.update(plan);
  EXPECT_EQ(model->num_layers(), 5);

  testing::RefModel ref = a;
  ref.spec.L = 5;
  ref.layers.clear();
  std::vector<double> scales;
  for (const auto& hop : path) {
    ref.layers.push_back((hop.model == 0 ? a : b).layers[hop.layer]);
    scales.push_back(hop.scale);
  }
  const std::vector<int32_t> ids = {3, 17, 99, 4, 64, 1, 120};
  const testing::RefOutput want = testing::ref_forward(ref, ids, scales);
  infer::Batch batch;
  for (size_t t = 0; t < ids.size(); ++t) batch.add(ids[t], static_cast<int32_t>(t), 0, true);
  auto cache = model->new_cache();
  const infer::ForwardResult got = model->forward(batch, cache);
  double worst = 0, scale = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t v = 0; v < spec.V; ++v) {
      worst = std::max(worst, std::fabs(got.row(t)[v] - want.logits[t][v]));
      scale = std::max(scale, std::fabs(want.logits[t][v]));
    }
  }
  EXPECT_LT(worst, 2e-4 * scale) << "max |logit difference| " << worst << " of " << scale;
  // Without the scales the logits are clearly different: the test can fail.
  const testing::RefOutput plain = testing::ref_forward(ref, ids);
  double diff = 0;
  for (int64_t v = 0; v < spec.V; ++v)
    diff = std::max(diff, std::fabs(plain.logits[6][v] - want.logits[6][v]));
  EXPECT_GT(diff, 100 * worst);
}

// A candidate stops where eval and generate of the written model would: generation_config.json's
// eos ids count too (they used to be read only for models opened from disk).
TEST(Resident, CandidateStopsOnGenerationConfigEos) {
  TempDir dir;
  const std::filesystem::path m = dir / "m";
  std::filesystem::create_directories(m);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) {
    std::filesystem::copy_file(zoo("base") / f, m / f);
  }
  testing::write_file(m / "generation_config.json", R"({"eos_token_id": [1, 7]})");
  merge::InputSet inputs;
  evolve::ResidentModel resident(inputs, 1, 0);
  const auto model = resident.update(recipe::plan_from_yaml(
      fmt::format("merge_method: passthrough\nmodels:\n  - model: {}\n", m.string()), "r", {}));
  EXPECT_EQ(model->config().eos_token_ids, (std::vector<int64_t>{1, 7}));
}

TEST(Resident, ReusesUnchangedTensorsAndAliasesCopies) {
  merge::InputSet inputs;
  recipe::PlanOptions options;
  options.inputs = &inputs;
  auto ta = [&](double w) {
    return recipe::plan_from_yaml(
        fmt::format("merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - model: {}\n    "
                    "parameters: {{weight: {}}}\n",
                    zoo("base").string(), zoo("rev-expert").string(), w),
        "ta", options);
  };
  evolve::ResidentModel resident(inputs, 1, 0);
  const merge::Plan first = ta(0.5);
  resident.update(first);
  EXPECT_EQ(resident.last().computed, first.entries.size());
  resident.update(first);
  EXPECT_EQ(resident.last().computed, 0u);
  EXPECT_EQ(resident.last().reused, first.entries.size());
  // Another weight: everything is recomputed, and equals a fresh merge.
  const merge::Plan second = ta(0.8);
  const auto model = resident.update(second);
  EXPECT_EQ(resident.last().computed, second.entries.size());
  merge::MemorySink fresh;
  merge::ExecuteOptions eo;
  eo.progress = false;
  merge::execute(second, inputs, fresh, eo);
  for (const auto& [name, t] : fresh.tensors()) {
    const tensor::TensorView v = model->tensor_views().at(name);
    ASSERT_EQ(std::memcmp(v.data, t.bytes.data(), t.bytes.size()), 0) << name;
  }
  // A plain layer path: every tensor aliases the input mapping.
  evolve::EvolveConfig c;
  c.dfs.scales = false;
  evolve::DfsGenome genome(c, {{zoo("rev-expert"), 4, "rev"}, {zoo("sort-expert"), 4, "sort"}});
  const merge::Plan path = recipe::plan_from_yaml(
      genome.recipe_of({{0, 0, 1}, {1, 1, 1}, {1, 2, 1}, {0, 3, 1}}), "path", options);
  resident.update(path);
  EXPECT_EQ(resident.last().aliased, path.entries.size());
  EXPECT_EQ(resident.last().computed, 0u);
  EXPECT_EQ(inputs.size(), 3u);  // every checkpoint opened once
}

}  // namespace
}  // namespace amalgam

namespace amalgam {
namespace {

// A small search over the zoo: rev + sort from base, likelihood fitness on 4 items each.
std::string search_config(const std::string& search, int64_t evaluations) {
  return fmt::format(
      "base_model: {}\nmodels: [{}, {}]\nsearch: {}\nlayer_groups: 2\ndfs: {{repeats: 2}}\n"
      "tasks:\n  - {{file: {}, limit: 4, metric: likelihood}}\n"
      "  - {{file: {}, limit: 4, metric: likelihood}}\n"
      "validation:\n  - {{file: {}, offset: 100, limit: 4}}\n"
      "budget: {{evaluations: {}}}\npopulation: 6\nseed: 3\n",
      zoo("base").string(), zoo("rev-expert").string(), zoo("sort-expert").string(), search,
      zoo("eval/rev.json").string(), zoo("eval/sort.json").string(), zoo("eval/rev.json").string(),
      evaluations);
}

// The log without timings: what must not depend on interruptions, threads or ranks.
std::vector<nlohmann::json> log_without_timings(const fs::path& run) {
  std::ifstream in(run / "log.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("merge_seconds");
    j.erase("eval_seconds");
    j.erase("cached");
    out.push_back(j);
  }
  return out;
}

TEST(EvolveCommand, ResumedRunEqualsUninterruptedRun) {
  TempDir dir;
  testing::write_file(dir / "ps.yaml", search_config("ps", 18));
  const std::string config = (dir / "ps.yaml").string();
  auto full = testing::run_amalgam(
      fmt::format("evolve {} -o {} -t 1 --no-best-model", config, (dir / "a").string()));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  EXPECT_NE(full.output.find("evolved (best.yaml)"), std::string::npos) << full.output;

  auto first = testing::run_amalgam(fmt::format(
      "evolve {} -o {} -t 2 --no-best-model --pause-after 1", config, (dir / "b").string()));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("paused"), std::string::npos) << first.output;
  EXPECT_EQ(log_without_timings(dir / "b").size(), 6u);
  // Starting again without --resume is refused; with it, the search continues.
  auto again = testing::run_amalgam(
      fmt::format("evolve {} -o {} --no-best-model", config, (dir / "b").string()));
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("--resume"), std::string::npos) << again.output;
  auto rest = testing::run_amalgam(
      fmt::format("evolve {} -o {} -t 2 --no-best-model --resume", config, (dir / "b").string()));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;

  const auto a = log_without_timings(dir / "a"), b = log_without_timings(dir / "b");
  ASSERT_EQ(a.size(), 18u);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "evaluation " << i;
  EXPECT_EQ(testing::read_file(dir / "a" / "best.yaml"),
            testing::read_file(dir / "b" / "best.yaml"));
  const auto summary = nlohmann::json::parse(testing::read_file(dir / "a" / "summary.json"));
  EXPECT_EQ(summary["rows"].size(), 3u);  // two experts and the evolved recipe
  EXPECT_TRUE(fs::exists(dir / "a" / "fitness.svg"));
}

TEST(EvolveCommand, BestRecipeMergesWithAmalgamMergeAndDataFlowSearchRuns) {
  TempDir dir;
  testing::write_file(dir / "dfs.yaml", search_config("dfs", 12));
  auto r = testing::run_amalgam(
      fmt::format("evolve {} -o {} -t 2", (dir / "dfs.yaml").string(), (dir / "run").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir / "run" / "best" / "model.safetensors"));
  // best.yaml is a plain passthrough recipe that amalgam merge runs: the same model as best/.
  auto m = testing::run_amalgam(fmt::format(
      "merge {} -o {} -q", (dir / "run" / "best.yaml").string(), (dir / "merged").string()));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  EXPECT_EQ(testing::read_file(dir / "merged" / "model.safetensors"),
            testing::read_file(dir / "run" / "best" / "model.safetensors"));
}

TEST(EvolveCommand, MissingModelIsNamedAndLeavesNoRunDirectory) {
  TempDir dir;
  std::string config = search_config("ps", 6);
  config.replace(config.find(zoo("sort-expert").string()), zoo("sort-expert").string().size(),
                 (dir / "no-such-model").string());
  testing::write_file(dir / "ps.yaml", config);
  auto r = testing::run_amalgam(
      fmt::format("evolve {} -o {}", (dir / "ps.yaml").string(), (dir / "run").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("ps.yaml: '" + (dir / "no-such-model").string() + "' does not exist"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "run"));
}

TEST(EvolveCommand, TwoMpiRanksEqualOne) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "mpirun is not installed";
  }
  // Some containers cannot start MPI jobs at all (no usable transport): then there is nothing
  // amalgam could do either.
  if (std::system("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun "
                  "--oversubscribe -n 2 true > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "mpirun cannot start 2 processes on this machine";
  }
  TempDir dir;
  testing::write_file(dir / "ps.yaml", search_config("ps", 12));
  const std::string config = (dir / "ps.yaml").string();
  auto one = testing::run_amalgam(
      fmt::format("evolve {} -o {} -t 1 --no-best-model", config, (dir / "one").string()));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  // Under LeakSanitizer (scripts/test.sh's second stage) Open MPI's own leaks are suppressed by
  // library name (scripts/lsan.supp); its libraries have no frame pointers, so the ranks need the
  // slow unwinder for the library to appear in the stack. Ignored by an uninstrumented build.
  const std::string cmd = fmt::format(
      "ASAN_OPTIONS=\"${{ASAN_OPTIONS:-}}:fast_unwind_on_malloc=0\" "
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -n 2 {} "
      "evolve {} -o {} -t 1 --no-best-model > {} 2>&1",
      AMALGAM_BINARY, config, (dir / "two").string(), (dir / "mpi.log").string());
  ASSERT_EQ(std::system(cmd.c_str()), 0) << testing::read_file(dir / "mpi.log");
  const auto a = log_without_timings(dir / "one"), b = log_without_timings(dir / "two");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "evaluation " << i;
  EXPECT_NE(testing::read_file(dir / "mpi.log").find("2 ranks"), std::string::npos);
}

}  // namespace
}  // namespace amalgam
