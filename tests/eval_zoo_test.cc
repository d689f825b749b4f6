// End to end: data/zoo/reference-results.json reproduced, first 60 items of each task. Every
// model row (checkpoints evaluated directly) and every merge row (recipes in
// data/recipes/zoo merged in memory in fp32, the uniform soup through the soup code) within
// 0.04 accuracy and 0.01 held-out nll. The proxy-tuning row (three models decoding in
// lock-step) is checked in proxy_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <regex>

#include "core/json.h"
#include "eval/model_source.h"
#include "eval/report.h"
#include "eval/soup.h"
#include "eval/suite.h"
#include "infer/matmul.h"
#include "recipe/recipe.h"
#include "test_util.h"

namespace amalgam::eval {
namespace {

using nlohmann::json;
using testing::source_dir;
using testing::zoo;

constexpr double kAccTolerance = 0.04;
constexpr double kNllTolerance = 0.01;

const json& reference() {
  static const json j = core::read_json_file(zoo("reference-results.json"));
  return j;
}

class ZooTable : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One engine thread: the suite runs beside other tests (ctest -j), and results do not
    // depend on the thread count.
    infer::set_num_threads(1);
    loader_ = new ModelLoader(1);
    std::vector<Task> tasks;
    for (const auto& name : reference()["tasks"]) {
      tasks.push_back(load_task(zoo("eval") / (name.get<std::string>() + ".json")));
      limit_items(tasks.back(), 60);
    }
    tasks.push_back(load_task(source_dir() / "data/eval/zoo-heldout.json"));
    LoadedModel base = loader_->load(zoo("base"));
    suite_ = new Suite(std::move(tasks), *base.tokenizer, base.stop_ids());
  }
  static void TearDownTestSuite() {
    delete suite_;
    delete loader_;
  }

  // Compares one row: accuracy per task and held-out nll.
  static void expect_row(const std::string& row, const std::vector<TaskResult>& results,
                         const json& expected) {
    ASSERT_EQ(results.size(), 4u);
    for (const TaskResult& r : results) {
      if (r.kind == TaskKind::kPerplexity) {
        EXPECT_NEAR(r.metric("nll").value, expected["nll"].get<double>(), kNllTolerance)
            << row << ": heldout nll";
      } else {
        EXPECT_EQ(r.items, 60u);
        EXPECT_NEAR(r.metric("exact_match").value, expected[r.task].get<double>(), kAccTolerance)
            << row << ": " << r.task;
      }
    }
  }
  static std::vector<TaskResult> run(const LoadedModel& m) {
    return suite_->run(*m.model, *m.tokenizer, {}, false);
  }
  static merge::Plan recipe_plan(const std::string& file) {
    recipe::PlanOptions options;
    options.base_dir = source_dir();  // the recipes name models relative to the repository
    return recipe::plan_from_file(source_dir() / "data/recipes/zoo" / file, options);
  }

  static ModelLoader* loader_;
  static Suite* suite_;
};
ModelLoader* ZooTable::loader_ = nullptr;
Suite* ZooTable::suite_ = nullptr;

TEST_F(ZooTable, ModelRows) {
  ASSERT_EQ(reference()["models"].size(), 8u);
  for (const auto& [name, expected] : reference()["models"].items()) {
    SCOPED_TRACE(name);
    expect_row(name, run(loader_->load(zoo(name))), expected);
  }
}

// Reference merge key -> recipe file.
const std::map<std::string, std::string> kRecipes = {
    {"linear(add,rev,sort)", "linear-add-rev-sort.yaml"},
    {"task_arithmetic(lambda=1)", "task-arithmetic-add-rev-sort.yaml"},
    {"task_arithmetic(lambda=0.5)", "task-arithmetic-0.5-add-rev-sort.yaml"},
    {"ties(density=0.3,lambda=1)", "ties-add-rev-sort.yaml"},
    {"linear(rev,sort)", "linear-rev-sort.yaml"},
    {"task_arithmetic(rev,sort,lambda=1)", "task-arithmetic-rev-sort.yaml"},
    {"linear(add,rev)", "linear-add-rev.yaml"},
    {"lawa(last 4 of add-traj)", "lawa-add-traj-last4.yaml"},
    {"swa(all 6 of add-traj)", "swa-add-traj-all6.yaml"},
};

TEST_F(ZooTable, MergeRowsAsRecipesInMemory) {
  size_t covered = 0;
  for (const auto& [name, expected] : reference()["merges"].items()) {
    SCOPED_TRACE(name);
    if (name == "uniform_soup(add x3)") {
      SoupOptions options;
      options.out_dtype = tensor::DType::kF32;
      const SoupResult soup =
          make_soup({zoo("add-expert"), zoo("add-expert-s1"), zoo("add-expert-s2")}, *suite_,
                    *loader_, options);
      ASSERT_EQ(soup.steps.size(), 1u);
      EXPECT_EQ(soup.ingredients.size(), 3u);
      expect_row(name, soup.steps[0].results, expected);
      ++covered;
      continue;
    }
    auto it = kRecipes.find(name);
    ASSERT_NE(it, kRecipes.end()) << "no recipe for reference row " << name;
    const merge::Plan plan = recipe_plan(it->second);
    for (const auto& e : plan.entries) {
      ASSERT_EQ(e.out_dtype, tensor::DType::kF32) << e.name;  // fp32 as in the table
    }
    expect_row(name, run(loader_->from_plan(plan, it->second)), expected);
    ++covered;
  }
  EXPECT_EQ(covered, reference()["merges"].size());
}

TEST_F(ZooTable, RepeatedRecipeReusesInputs) {
  const merge::Plan plan = recipe_plan("task-arithmetic-rev-sort.yaml");
  const auto first = run(loader_->from_plan(plan, "a"));
  const size_t open = loader_->inputs().size();
  const auto second = run(loader_->from_plan(recipe_plan("task-arithmetic-rev-sort.yaml"), "b"));
  EXPECT_EQ(loader_->inputs().size(), open);  // nothing opened again
  for (size_t t = 0; t < first.size(); ++t) {
    EXPECT_EQ(first[t].metrics.front().value, second[t].metrics.front().value);
  }
}

TEST_F(ZooTable, GreedySoupOnAdd) {
  Task add = load_task(zoo("eval") / "add.json");
  limit_items(add, 60);
  LoadedModel base = loader_->load(zoo("base"));
  Suite suite({add}, *base.tokenizer, base.stop_ids());
  const std::vector<std::string> names = {"add-expert", "add-expert-s1", "add-expert-s2"};
  std::vector<std::filesystem::path> paths;
  for (const auto& n : names) paths.push_back(zoo(n));
  SoupOptions options;
  options.greedy = true;
  options.out_dtype = tensor::DType::kF32;
  const SoupResult soup = make_soup(paths, suite, *loader_, options);

  // Steps: 3 ingredient scores (the reference's model rows), start, then 2 tries.
  ASSERT_EQ(soup.steps.size(), 6u);
  std::vector<double> own;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(soup.steps[i].action, "ingredient");
    EXPECT_NEAR(soup.steps[i].score, reference()["models"][names[i]]["add"].get<double>(),
                kAccTolerance);
    own.push_back(soup.steps[i].score);
  }
  // Tried in decreasing order of their own score; each accepted iff it does not lower the score.
  std::vector<size_t> order = {0, 1, 2};
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return own[a] > own[b]; });
  EXPECT_EQ(soup.steps[3].action, "start");
  EXPECT_EQ(soup.steps[3].candidate, order[0]);
  double best = own[order[0]];
  std::vector<size_t> members = {order[0]};
  for (size_t k = 1; k < 3; ++k) {
    const SoupStep& s = soup.steps[3 + k];
    EXPECT_EQ(s.candidate, order[k]);
    std::vector<size_t> tried = members;
    tried.push_back(order[k]);
    EXPECT_EQ(s.ingredients, tried);
    EXPECT_EQ(s.accepted, s.score >= best);
    if (s.accepted) {
      best = s.score;
      members = tried;
    }
  }
  EXPECT_EQ(soup.ingredients, members);
  EXPECT_DOUBLE_EQ(soup.score, best);
  EXPECT_GE(soup.score, *std::max_element(own.begin(), own.end()));
}

TEST(SoupCommand, WritesTheSoupItScored) {
  testing::TempDir dir;
  const std::string out = (dir / "soup").string();
  const std::string task = (zoo("eval") / "add.json").string();
  auto r = testing::run_amalgam("soup " + zoo("add-expert").string() + " " +
                                zoo("add-expert-s2").string() + " --task " + task +
                                " --limit 30 -j 1 --greedy --out-dtype float32 -o " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex("soup: \\{.*\\} score ([0-9.]+)")))
      << r.output;
  const double score = std::stod(m[1]);
  ASSERT_TRUE(std::filesystem::exists(dir / "soup" / "model.safetensors"));
  r = testing::run_amalgam("eval " + out + " --task " + task + " --limit 30 -j 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr(fmt::format("{:.4f}", score)));
}

}  // namespace
}  // namespace amalgam::eval
