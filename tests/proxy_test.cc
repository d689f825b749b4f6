// Proxy tuning (infer/proxy.h): the combined logits are exactly large + alpha * (expert - anti)
// of three separate forward passes, over packed prefill and cached decode steps; the zoo's
// proxy-tuning row (data/zoo/reference-results.json) is reproduced through the packed
// evaluation runner; the CLI wires the options.
#include "infer/proxy.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/json.h"
#include "eval/model_source.h"
#include "eval/suite.h"
#include "infer/generate.h"
#include "infer/matmul.h"
#include "infer/model.h"
#include "synthetic_checkpoint.h"
#include "test_util.h"

namespace amalgam::infer {
namespace {

using testing::zoo;

struct Trio {
  std::unique_ptr<Model> large = load_model(zoo("base-large"));
  std::unique_ptr<Model> expert = load_model(zoo("add-expert"));
  std::unique_ptr<Model> anti = load_model(zoo("base"));
};

const Trio& trio() {
  static const Trio* t = [] {
    set_num_threads(1);
    return new Trio;
  }();
  return *t;
}

// Two prompts packed in one batch (own sequence ids, positions from 0), every token asking for
// logits.
Batch prefill_batch() {
  Batch b;
  b.add_sequence({0, 5, 6, 9, 4, 7, 8, 3, 17}, 0, 0, true);
  b.add_sequence({0, 301, 77, 512, 1000}, 1, 0, true);
  return b;
}

// One decode step for both sequences (after prefill_batch).
Batch step_batch() {
  Batch b;
  b.add(42, 9, 0, true);
  b.add(3, 5, 1, true);
  return b;
}

// Expected large + alpha * (expert - anti) from three separate forward passes with their own
// caches; prefill then one step.
std::vector<ForwardResult> separate(const Model& large, const Model& expert, const Model& anti,
                                    float alpha) {
  std::vector<ForwardResult> out;
  KVCache cl = large.new_cache(), ce = expert.new_cache(), ca = anti.new_cache();
  for (const Batch& b : {prefill_batch(), step_batch()}) {
    ForwardResult l = large.forward(b, cl);
    const ForwardResult e = expert.forward(b, ce);
    const ForwardResult a = anti.forward(b, ca);
    for (size_t i = 0; i < l.logits.size(); ++i) {
      const float offset = e.logits[i] - a.logits[i];
      l.logits[i] = alpha == 1.0f ? l.logits[i] + offset : l.logits[i] + alpha * offset;
    }
    out.push_back(std::move(l));
  }
  return out;
}

std::vector<ForwardResult> proxied(ProxyLogits& proxy) {
  std::vector<ForwardResult> out;
  out.push_back(proxy.forward(prefill_batch()));
  out.push_back(proxy.forward(step_batch()));
  return out;
}

TEST(ProxyLogits, EqualExpertAndAntiGiveTheLargeModelExactly) {
  const Trio& t = trio();
  ProxyLogits proxy(*t.large, *t.expert, *t.expert);
  EXPECT_EQ(proxy.vocab_size(), t.large->vocab_size());
  KVCache cache = t.large->new_cache();
  const auto got = proxied(proxy);
  const ForwardResult want0 = t.large->forward(prefill_batch(), cache);
  const ForwardResult want1 = t.large->forward(step_batch(), cache);
  EXPECT_EQ(got[0].rows, want0.rows);
  EXPECT_EQ(got[0].logits, want0.logits);
  EXPECT_EQ(got[1].rows, want1.rows);
  EXPECT_EQ(got[1].logits, want1.logits);
}

TEST(ProxyLogits, CombinationEqualsThreeSeparateForwardPasses) {
  const Trio& t = trio();
  ProxyLogits proxy(*t.large, *t.expert, *t.anti);
  const auto got = proxied(proxy);
  const auto want = separate(*t.large, *t.expert, *t.anti, 1.0f);
  ASSERT_EQ(got.size(), want.size());
  for (size_t s = 0; s < got.size(); ++s) {
    EXPECT_EQ(got[s].rows, want[s].rows) << "step " << s;
    EXPECT_EQ(got[s].logits, want[s].logits) << "step " << s;
  }
  // The offset really changes the logits (the models differ).
  KVCache cache = t.large->new_cache();
  EXPECT_NE(got[0].logits, t.large->forward(prefill_batch(), cache).logits);
}

TEST(ProxyLogits, AlphaScalesTheOffset) {
  const Trio& t = trio();
  ProxyLogits proxy(*t.large, *t.expert, *t.anti, 0.5f);
  const auto got = proxied(proxy);
  const auto want = separate(*t.large, *t.expert, *t.anti, 0.5f);
  for (size_t s = 0; s < got.size(); ++s) {
    ASSERT_EQ(got[s].logits.size(), want[s].logits.size());
    for (size_t i = 0; i < got[s].logits.size(); ++i) {
      ASSERT_NEAR(got[s].logits[i], want[s].logits[i], 1e-5f) << "step " << s << " index " << i;
    }
  }
}

TEST(ProxyLogits, ClearRestartsEverySequence) {
  const Trio& t = trio();
  ProxyLogits proxy(*t.large, *t.expert, *t.anti);
  const auto first = proxied(proxy);
  proxy.clear();
  const auto again = proxied(proxy);
  EXPECT_EQ(first[1].logits, again[1].logits);
}

TEST(ProxyLogits, GenerateWithEqualExpertAndAntiMatchesTheLargeModel) {
  const Trio& t = trio();
  ProxyLogits proxy(*t.large, *t.anti, *t.anti);
  GenerateOptions o;
  o.max_new_tokens = 12;
  const std::vector<int32_t> prompt = {0, 5, 6, 9, 4, 7, 8, 3};
  const Generation want = generate(*t.large, prompt, o);
  const Generation got = generate(proxy, prompt, o);
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.stopped, want.stopped);
}

TEST(ProxyLogits, DifferentVocabulariesAreRejected) {
  testing::TempDir dir;
  testing::TinyModel small, wide;
  wide.vocab = 64;
  testing::write_tiny_model(dir / "small", small);
  testing::write_tiny_model(dir / "wide", wide);
  auto a = load_model(dir / "small");
  auto b = load_model(dir / "wide");
  try {
    ProxyLogits proxy(*a, *b, *a);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("64"), std::string::npos) << e.what();
  }
}

// The zoo row "proxy tuning: base-large + (add-expert - base) logits", first 60 add items.
double reference_add_accuracy() {
  const auto ref = core::read_json_file(zoo("reference-results.json"));
  return ref.at("proxy_tuning(base-large + add-expert - base)").at("add").get<double>();
}

TEST(ProxyZoo, AddAccuracyMatchesTheReference) {
  set_num_threads(1);
  eval::ModelLoader loader(1);
  eval::LoadedModel large = loader.load(zoo("base-large"));
  eval::LoadedModel expert = loader.load(zoo("add-expert"));
  eval::LoadedModel anti = loader.load(zoo("base"));
  std::vector<eval::Task> tasks{eval::load_task(zoo("eval") / "add.json")};
  eval::limit_items(tasks[0], 60);
  eval::Suite suite(std::move(tasks), *large.tokenizer, large.stop_ids());
  ProxyLogits proxy(*large.model, *expert.model, *anti.model);
  const auto results = suite.run(proxy, *large.tokenizer, {}, false);
  ASSERT_EQ(results.size(), 1u);
  ASSERT_EQ(results[0].items, 60u);
  const double acc = results[0].metric("exact_match").value;
  EXPECT_NEAR(acc, reference_add_accuracy(), 0.04);
  // The large model alone has no add skill: the gain comes from the offset.
  const auto alone = suite.run(*large.model, *large.tokenizer, {}, false);
  EXPECT_LT(alone[0].metric("exact_match").value, 0.05);
}

TEST(ProxyCli, GenerateWithEqualExpertAndAntiPrintsTheLargeModelsText) {
  const std::string large = zoo("base-large").string(), small = zoo("base").string();
  const auto plain = testing::run_amalgam("generate " + large + " -p '12+34=' -n 8 --json");
  const auto proxy = testing::run_amalgam("generate " + large + " -p '12+34=' -n 8 --json " +
                                          "--proxy-expert " + small + " --proxy-anti " + small);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(proxy.exit_code, 0) << proxy.output;
  EXPECT_EQ(proxy.output, plain.output);
}

TEST(ProxyCli, EvalNeedsBothModelsAndReportsTheSettings) {
  const std::string large = zoo("base-large").string();
  const std::string task = (zoo("eval") / "add.json").string();
  const auto missing =
      testing::run_amalgam("eval " + large + " --task " + task + " --limit 2 --proxy-expert " +
                           zoo("add-expert").string());
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("proxy-anti"), std::string::npos) << missing.output;

  testing::TempDir dir;
  const auto ok = testing::run_amalgam(
      "eval " + large + " --task " + task + " --limit 8 --threads 1 --proxy-expert " +
      zoo("add-expert").string() + " --proxy-anti " + zoo("base").string() +
      " --proxy-alpha 1 --json " + (dir / "r.json").string());
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  const auto j = core::read_json_file(dir / "r.json");
  EXPECT_EQ(j.dump().find("\"proxy\"") != std::string::npos, true) << j.dump();
}

}  // namespace
}  // namespace amalgam::infer
