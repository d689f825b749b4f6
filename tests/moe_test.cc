// amalgam moe on the zoo's MLP-only experts (they share the base's attention, norms and
// embeddings, so a token routed to expert e gets exactly expert e's computation), router rows
// against mergekit's formulas computed here from the base model, the logistic-regression solver
// against its optimality conditions, and the config's error cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "infer/dump.h"
#include "infer/model.h"
#include "io/safetensors.h"
#include "moe/build.h"
#include "moe/config.h"
#include "moe/logistic_regression.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;
using testing::zoo;

const std::vector<std::string> kExperts = {"mlp-add-expert", "mlp-rev-expert", "mlp-sort-expert"};

std::string experts_yaml(const std::string& extra = "") {
  std::string y;
  const std::vector<std::vector<std::string>> prompts = {
      {"12+34=", "507+88="}, {"reverse apple ->", "reverse word ->"}, {"sort 5 2 9 ->"}};
  for (size_t e = 0; e < kExperts.size(); ++e) {
    y += "  - source_model: " + zoo(kExperts[e]).string() + "\n    positive_prompts:\n";
    for (const auto& p : prompts[e]) y += "      - \"" + p + "\"\n";
    if (e == 1) y += "    negative_prompts: [\"sort 1 2 ->\"]\n";
    y += extra;
  }
  return y;
}

moe::MoeConfig config(const std::string& gate_mode, int k, const std::string& dtype = "float32") {
  const std::string text = "base_model: " + zoo("base").string() + "\ngate_mode: " + gate_mode +
                           "\ndtype: " + dtype + "\nexperts_per_token: " + std::to_string(k) +
                           "\nexperts:\n" + experts_yaml();
  return moe::parse_moe_config(text, "test.yaml");
}

std::vector<float> all_logits(const infer::Model& m, const std::vector<int32_t>& ids,
                              int64_t force_expert = -1) {
  infer::KVCache cache = m.new_cache();
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  infer::ForwardOptions o;
  o.force_expert = force_expert;
  return m.forward(batch, cache, o).logits;
}

// With every token routed to expert e, the MoE computes expert e exactly (same bytes, same
// kernels): logits equal to the dense expert's, in both layouts.
TEST(MoeTest, EveryTokenRoutedToExpertEGivesExpertELogits) {
  for (bool fused : {false, true}) {
    TempDir dir;
    moe::BuildOptions o;
    o.fused = fused;
    moe::build_moe(config("random", 1, "bfloat16"), dir / "moe", o);
    const auto moe_model = infer::load_model(dir / "moe");
    ASSERT_EQ(moe_model->config().num_experts, 3);
    const auto tok = tokenizer::Tokenizer::from_directory(dir / "moe");
    const std::vector<int32_t> ids = tok.encode("sort 3 1 2 -> 1 2 3 and 12+30=42", true);
    for (int64_t e = 0; e < 3; ++e) {
      const auto expert = infer::load_model(zoo(kExperts[e]));
      const std::vector<float> want = all_logits(*expert, ids);
      const std::vector<float> got = all_logits(*moe_model, ids, e);
      ASSERT_EQ(got.size(), want.size());
      double worst = 0.0;
      for (size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, double(std::abs(got[i] - want[i])));
      EXPECT_LT(worst, 1e-5) << "expert " << e << (fused ? " fused" : " per-expert");
    }
    // And they differ between experts (the test can fail).
    EXPECT_NE(all_logits(*moe_model, ids, 0), all_logits(*moe_model, ids, 1));
  }
}

// Router rows of gate_mode hidden: the base's input of each layer at the last prompt token
// (here from the engine's named intermediates embd / l_out.L, not the hidden-state option),
// averaged over prompts, minus negative prompts, L2-normalised.
TEST(MoeTest, HiddenRouterRowsFollowMergekitFormula) {
  TempDir dir;
  const moe::MoeConfig c = config("hidden", 2);
  moe::build_moe(c, dir / "moe", {});
  const auto base = infer::load_model(zoo("base"));
  const auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  const int64_t L = base->num_layers(), D = base->hidden_size();
  auto mean_states = [&](const std::vector<std::string>& prompts) {
    std::vector<double> sum(static_cast<size_t>(L * D), 0.0);
    for (const auto& p : prompts) {
      std::vector<int32_t> ids = {0};  // <s>
      for (int32_t id : tok.encode(p, false)) ids.push_back(id);
      infer::Dumper dumper({"embd", "l_out"});
      infer::ForwardOptions o;
      o.dump = &dumper;
      infer::KVCache cache = base->new_cache();
      infer::Batch batch;
      batch.add_sequence(ids, 0, 0, false);
      base->forward(batch, cache, o);
      for (int64_t l = 0; l < L; ++l) {
        const auto& t = dumper.tensors().at(l == 0 ? "embd" : "l_out." + std::to_string(l - 1));
        const int64_t last = t.rows - 1;
        for (int64_t j = 0; j < D; ++j) sum[l * D + j] += t.data[last * D + j] / prompts.size();
      }
    }
    return sum;
  };
  io::Checkpoint out(dir / "moe");
  for (size_t e = 0; e < c.experts.size(); ++e) {
    std::vector<double> v = mean_states(c.experts[e].positive_prompts);
    if (!c.experts[e].negative_prompts.empty()) {
      const auto neg = mean_states(c.experts[e].negative_prompts);
      for (size_t i = 0; i < v.size(); ++i) v[i] -= neg[i];
    }
    for (int64_t l = 0; l < L; ++l) {
      double norm = 0.0;
      for (int64_t j = 0; j < D; ++j) norm += v[l * D + j] * v[l * D + j];
      norm = std::max(std::sqrt(norm), 1e-8);
      const tensor::Tensor gate =
          out.load_f32("model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight");
      ASSERT_EQ(gate.shape, (tensor::Shape{3, D}));
      for (int64_t j = 0; j < D; ++j) {
        ASSERT_NEAR(gate.data[e * D + j], v[l * D + j] / norm, 1e-5)
            << "layer " << l << " expert " << e << " dim " << j;
      }
    }
  }
}

// cheap_embed: normalised sum of the embeddings of every prompt token (BOS included), minus the
// same for negative prompts, normalised again; the same row in every layer.
TEST(MoeTest, CheapEmbedRouterRowsFollowMergekitFormula) {
  TempDir dir;
  const moe::MoeConfig c = config("cheap_embed", 2);
  moe::build_moe(c, dir / "moe", {});
  io::Checkpoint base(zoo("base"));
  const tensor::Tensor embed = base.load_f32("model.embed_tokens.weight");
  const auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  const int64_t D = embed.shape[1];
  auto summed = [&](const std::vector<std::string>& prompts) {
    std::vector<double> s(static_cast<size_t>(D), 0.0);
    for (const auto& p : prompts) {
      std::vector<int32_t> ids = {0};
      for (int32_t id : tok.encode(p, false)) ids.push_back(id);
      for (int32_t id : ids) {
        for (int64_t j = 0; j < D; ++j) s[j] += embed.data[id * D + j];
      }
    }
    double n = 0.0;
    for (double x : s) n += x * x;
    for (double& x : s) x /= std::sqrt(n);
    return s;
  };
  io::Checkpoint out(dir / "moe");
  for (size_t e = 0; e < c.experts.size(); ++e) {
    std::vector<double> v = summed(c.experts[e].positive_prompts);
    if (!c.experts[e].negative_prompts.empty()) {
      const auto neg = summed(c.experts[e].negative_prompts);
      for (int64_t j = 0; j < D; ++j) v[j] -= neg[j];
    }
    double n = 0.0;
    for (double x : v) n += x * x;
    for (int64_t l = 0; l < 4; ++l) {
      const tensor::Tensor gate =
          out.load_f32("model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight");
      for (int64_t j = 0; j < D; ++j) {
        ASSERT_NEAR(gate.data[e * D + j], v[j] / std::sqrt(n), 1e-6) << "layer " << l;
      }
    }
  }
}

TEST(MoeTest, OutputConfigIsMixtral) {
  TempDir dir;
  moe::build_moe(config("uniform_random", 2, "bfloat16"), dir / "moe", {});
  const io::ModelConfig c = io::read_model_config(dir / "moe");
  EXPECT_EQ(c.architecture, "MixtralForCausalLM");
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.num_experts, 3);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_TRUE(fs::exists(dir / "moe" / "tokenizer.json"));
  // U(-1/sqrt(D), 1/sqrt(D))
  io::Checkpoint out(dir / "moe");
  const tensor::Tensor g = out.load_f32("model.layers.2.block_sparse_moe.gate.weight");
  for (float v : g.data) EXPECT_LE(std::abs(v), 1.0 / std::sqrt(128.0) + 1e-3);
}

// The fitted routers separate the experts' texts (held-out token accuracy), and the calibrated
// MoE with one expert per token keeps rev's and sort's skill on items it never saw.
TEST(MoeTest, CalibratedRoutersSeparateExperts) {
  TempDir dir;
  std::string y = "base_model: " + zoo("base").string() +
                  "\ngate_mode: calibrated\nexperts_per_token: 1\nexperts:\n";
  const char* tasks[] = {"add", "rev", "sort"};
  for (int e = 0; e < 3; ++e) {
    // Items 0..59 calibrate; the check below uses items 150..199.
    const std::string all = testing::read_file(zoo("eval") / (std::string(tasks[e]) + ".json"));
    nlohmann::json items = nlohmann::json::parse(all);
    std::string lines;
    for (int i = 0; i < 60; ++i) lines += items[i].dump() + "\n";
    testing::write_file(dir / (std::string(tasks[e]) + ".jsonl"), lines);
    y += "  - source_model: " + zoo(kExperts[e]).string() +
         "\n    calibration_data: " + (dir / (std::string(tasks[e]) + ".jsonl")).string() + "\n";
  }
  const moe::BuildReport r = moe::build_moe(moe::parse_moe_config(y, "cal.yaml"), dir / "moe", {});
  ASSERT_EQ(r.calibration.size(), 4u);
  for (const auto& l : r.calibration) {
    EXPECT_GT(l.heldout_tokens, 100);
    EXPECT_GT(l.heldout_accuracy, 0.95) << "layer " << l.layer;
  }
}

// The `experts:` entries of the MLP-only experts, each calibrated on the first 40 items of its
// task (written as JSONL into `dir`).
std::string calibrated_experts_yaml(const TempDir& dir) {
  const char* tasks[] = {"add", "rev", "sort"};
  std::string experts;
  for (int e = 0; e < 3; ++e) {
    const nlohmann::json items =
        nlohmann::json::parse(testing::read_file(zoo("eval") / (std::string(tasks[e]) + ".json")));
    std::string lines;
    for (int i = 0; i < 40; ++i) lines += items[i].dump() + "\n";
    const fs::path file = dir / (std::string(tasks[e]) + ".jsonl");
    testing::write_file(file, lines);
    experts += "  - source_model: " + zoo(kExperts[e]).string() +
               "\n    calibration_data: " + file.string() + "\n";
  }
  return experts;
}

// calibration.bos: N labels BOS with expert N in every layer. Every other token of an add item
// goes to the add expert (the fitted router separates the tasks), so with BOS there too the MoE
// computes mlp-add-expert exactly on add items; with BOS elsewhere it does not.
TEST(MoeTest, CalibratedBosExpertRoutesBos) {
  TempDir dir;
  const std::string experts = calibrated_experts_yaml(dir);
  const std::string head =
      "base_model: " + zoo("base").string() + "\ngate_mode: calibrated\nexperts_per_token: 1\n";
  const auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  const std::vector<int32_t> ids = tok.encode("951+682=1633", true);
  const std::vector<float> add = all_logits(*infer::load_model(zoo("mlp-add-expert")), ids);
  for (const char* bos : {"0", "[0, 0, 0, 0]", "1"}) {
    moe::build_moe(moe::parse_moe_config(
                       head + "calibration:\n  bos: " + bos + "\nexperts:\n" + experts, "cal.yaml"),
                   dir / "moe", {.force = true});
    const std::vector<float> got = all_logits(*infer::load_model(dir / "moe"), ids);
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, double(std::abs(got[i] - add[i])));
    if (std::string(bos) == "1") {
      EXPECT_GT(worst, 1e-2) << "BOS with rev must change add's logits";
    } else {
      EXPECT_LT(worst, 1e-5) << "bos: " << bos;
    }
  }
  expect_error(
      [&] {
        moe::build_moe(moe::parse_moe_config(
                           head + "calibration:\n  bos: [0, 1]\nexperts:\n" + experts, "cal.yaml"),
                       dir / "bad", {});
      },
      "lists 2 experts for 4 layers");
  expect_error(
      [&] {
        moe::build_moe(moe::parse_moe_config(head + "calibration:\n  bos: 3\nexperts:\n" + experts,
                                             "cal.yaml"),
                       dir / "bad", {});
      },
      "numbered 0 to 2");
  EXPECT_FALSE(fs::exists(dir / "bad"));
}

// calibration.bos_expert adds a fourth routed expert whose MLP is the weighted sum of the listed
// experts' MLPs; with bos: 3 the router sends BOS (and no other token, none being labelled with
// it) there in every layer. Its tensors are checked against the sum computed here from the
// experts' own checkpoints.
TEST(MoeTest, BosExpertIsTheWeightedMixAndTakesBos) {
  TempDir dir;
  const std::string experts = calibrated_experts_yaml(dir);
  const std::string head = "base_model: " + zoo("base").string() +
                           "\ngate_mode: calibrated\nexperts_per_token: 1\ndtype: float32\n";
  const double w[] = {0.75, 0.0, 0.25};
  moe::build_moe(
      moe::parse_moe_config(
          head + "calibration:\n  bos: 3\n  bos_expert: [0.75, 0, 0.25]\n" + "experts:\n" + experts,
          "cal.yaml"),
      dir / "moe", {});
  const io::Checkpoint moe_ck(dir / "moe");
  for (const auto& [mixtral, dense] : std::vector<std::pair<std::string, std::string>>{
           {"w1", "gate_proj"}, {"w2", "down_proj"}, {"w3", "up_proj"}}) {
    const tensor::Tensor got =
        moe_ck.load_f32("model.layers.2.block_sparse_moe.experts.3." + mixtral + ".weight");
    std::vector<double> want(got.data.size(), 0.0);
    for (int e = 0; e < 3; ++e) {
      const tensor::Tensor t =
          io::Checkpoint(zoo(kExperts[e])).load_f32("model.layers.2.mlp." + dense + ".weight");
      ASSERT_EQ(t.data.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) want[i] += w[e] * t.data[i];
    }
    double worst = 0.0;
    for (size_t i = 0; i < want.size(); ++i)
      worst = std::max(worst, std::abs(got.data[i] - want[i]));
    EXPECT_LT(worst, 1e-6) << mixtral;
  }
  const auto model = infer::load_model(dir / "moe");
  ASSERT_EQ(model->config().num_experts, 4);
  const auto tok = tokenizer::Tokenizer::from_directory(zoo("base"));
  infer::Dumper dump({"router"});
  infer::KVCache cache = model->new_cache();
  infer::Batch batch;
  batch.add_sequence(tok.encode("951+682=1633", true), 0, 0, true);
  infer::ForwardOptions o;
  o.dump = &dump;
  model->forward(batch, cache, o);
  for (int64_t l = 0; l < 4; ++l) {
    const infer::DumpTensor& r = dump.tensors().at(infer::Dumper::name("router", l));
    ASSERT_EQ(r.cols, 4);
    for (int64_t t = 0; t < r.rows; ++t) {
      const float* row = r.data.data() + t * r.cols;
      const int64_t top = std::max_element(row, row + 4) - row;
      if (t == 0) {
        EXPECT_EQ(top, 3) << "layer " << l;
      } else {
        EXPECT_NE(top, 3) << "layer " << l << " token " << t;
      }
    }
  }
  const std::string yaml = head + "calibration:\n  bos_expert: ";
  expect_error(
      [&] {
        moe::validate(moe::parse_moe_config(yaml + "[1, 0]\nexperts:\n" + experts, "c.yaml"),
                      false);
      },
      "lists 2 weights for 3 experts");
  expect_error(
      [&] {
        moe::validate(moe::parse_moe_config(yaml + "[0, 0, 0]\nexperts:\n" + experts, "c.yaml"),
                      false);
      },
      "every weight is 0");
  expect_error(
      [&] {
        moe::validate(
            moe::parse_moe_config(yaml + "[1, 0, 0]\n  bos: 4\nexperts:\n" + experts, "c.yaml"),
            false);
      },
      "the last one is bos_expert");
  expect_error(
      [&] {
        moe::validate(moe::parse_moe_config("base_model: " + zoo("base").string() +
                                                "\ngate_mode: hidden\ncalibration:\n"
                                                "  bos_expert: [1, 0, 0]\nexperts:\n" +
                                                experts_yaml(),
                                            "c.yaml"),
                      false);
      },
      "needs gate_mode calibrated");
}

TEST(MoeTest, ConfigErrors) {
  const std::string base = "base_model: " + zoo("base").string() + "\n";
  auto build = [&](const std::string& text, bool same = false) {
    TempDir dir;
    moe::BuildOptions o;
    o.allow_same_model = same;
    try {
      moe::build_moe(moe::parse_moe_config(text, "bad.yaml"), dir / "out", o);
    } catch (...) {
      EXPECT_FALSE(fs::exists(dir / "out"));
      EXPECT_TRUE(fs::is_empty(dir.path())) << "staging directory left behind";
      throw;
    }
  };
  expect_error([&] { build(base + "experts: []\n"); }, "no experts");
  expect_error([&] { build(base + "experts_per_token: 4\nexperts:\n" + experts_yaml()); },
               "only 3 experts");
  expect_error([&] { build(base + "gate_mode: hiden\nexperts:\n" + experts_yaml()); },
               "did you mean 'hidden'");
  expect_error([&] { build(base + "expert:\n" + experts_yaml()); }, "expert");
  expect_error(
      [&] {
        build(base + "experts:\n  - source_model: " + zoo("mlp-add-expert").string() +
              "\n  - source_model: " + zoo("mlp-rev-expert").string() + "\n");
      },
      "has no positive_prompts");
  const std::string same = "    positive_prompts: [\"x\"]\n";
  expect_error(
      [&] {
        build(base + "experts:\n  - source_model: " + zoo("mlp-add-expert").string() + "\n" + same +
              "  - source_model: " + zoo("mlp-rev-expert").string() + "\n" + same);
      },
      "same prompts");
  expect_error(
      [&] {
        build(base + "experts:\n  - source_model: " + zoo("mlp-add-expert").string() +
              "\n    positive_prompts: [\"a\"]\n  - source_model: " +
              zoo("mlp-add-expert").string() + "\n    positive_prompts: [\"b\"]\n");
      },
      "not useful without training");
  expect_error(
      [&] {
        build(base + "gate_mode: calibrated\nexperts:\n" +
              experts_yaml("    calibration_data: /nonexistent/cal.txt\n"));
      },
      "/nonexistent/cal.txt");
  {
    TempDir d;
    testing::write_file(d / "empty.txt", "\n\n");
    expect_error(
        [&] {
          build(base + "gate_mode: calibrated\nexperts:\n" +
                experts_yaml("    calibration_data: " + (d / "empty.txt").string() + "\n"));
        },
        "no samples");
  }
  {
    // An expert whose vocabulary differs from the base's.
    TempDir d;
    fs::copy(zoo("mlp-rev-expert"), d / "rev");
    std::string cfg = testing::read_file(d / "rev" / "config.json");
    cfg.replace(cfg.find("\"vocab_size\": 1024"), 18, "\"vocab_size\": 1000");
    fs::permissions(d / "rev" / "config.json", fs::perms::owner_write, fs::perm_options::add);
    testing::write_file(d / "rev" / "config.json", cfg);
    expect_error(
        [&] {
          build(base + "experts:\n  - source_model: " + zoo("mlp-add-expert").string() +
                "\n    positive_prompts: [\"a\"]\n  - source_model: " + (d / "rev").string() +
                "\n    positive_prompts: [\"b\"]\n");
        },
        "vocabulary");
  }
}

TEST(MoeTest, CliFailureLeavesNothing) {
  TempDir dir;
  testing::write_file(dir / "c.yaml", "base_model: " + zoo("base").string() + "\nexperts: []\n");
  const auto r =
      testing::run_amalgam("moe " + (dir / "c.yaml").string() + " -o " + (dir / "out").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no experts"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// Independent check of the solver: at its answer the gradient of the objective, written here
// from the formula in fp64, vanishes, and no small move lowers the objective.
TEST(LogisticRegressionTest, SolutionSatisfiesOptimality) {
  const int64_t n = 300, f = 5, c = 3;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<float> x(static_cast<size_t>(n * f));
  std::vector<int32_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<int32_t>(i % c);
    for (int64_t j = 0; j < f; ++j)
      x[i * f + j] = static_cast<float>(g(rng) + (j == y[i] ? 1.5 : 0));
  }
  for (bool bias : {false, true}) {
    moe::LogisticOptions o;
    o.l2 = 0.01;
    o.bias = bias;
    o.tolerance = 1e-9;
    const moe::LogisticFit fit = moe::fit_logistic(x, n, f, y, c, o);
    EXPECT_TRUE(fit.converged);
    auto objective = [&](const std::vector<double>& w, const std::vector<double>& b,
                         std::vector<double>* gw, std::vector<double>* gb) {
      double loss = 0.0;
      if (gw) gw->assign(static_cast<size_t>(c * f), 0.0);
      if (gb) gb->assign(static_cast<size_t>(c), 0.0);
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> z(static_cast<size_t>(c));
        for (int64_t k = 0; k < c; ++k) {
          z[k] = b[k];
          for (int64_t j = 0; j < f; ++j) z[k] += w[k * f + j] * x[i * f + j];
        }
        double m = *std::max_element(z.begin(), z.end()), s = 0.0;
        for (double v : z) s += std::exp(v - m);
        loss += -(z[y[i]] - m - std::log(s)) / n;
        for (int64_t k = 0; k < c; ++k) {
          const double p = std::exp(z[k] - m) / s - (k == y[i] ? 1.0 : 0.0);
          if (gw) {
            for (int64_t j = 0; j < f; ++j) (*gw)[k * f + j] += p * x[i * f + j] / n;
          }
          if (gb) (*gb)[k] += p / n;
        }
      }
      for (int64_t k = 0; k < c * f; ++k) {
        loss += 0.5 * o.l2 * w[k] * w[k];
        if (gw) (*gw)[k] += o.l2 * w[k];
      }
      return loss;
    };
    std::vector<double> gw, gb;
    const double best = objective(fit.model.weights, fit.model.bias, &gw, &gb);
    for (double v : gw) EXPECT_NEAR(v, 0.0, 1e-7);
    if (bias) {
      for (double v : gb) EXPECT_NEAR(v, 0.0, 1e-7);
    } else {
      for (double v : fit.model.bias) EXPECT_EQ(v, 0.0);
    }
    EXPECT_NEAR(best, fit.objective, 1e-9);
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<double> w = fit.model.weights;
      for (double& v : w) v += 1e-3 * g(rng);
      EXPECT_GT(objective(w, fit.model.bias, nullptr, nullptr), best);
    }
    EXPECT_GT(moe::accuracy(fit.model, x, n, y), 0.7);
  }
  expect_error([&] { moe::fit_logistic(x, n, f, y, 2, {}); }, "label 2");
}

}  // namespace
}  // namespace amalgam
