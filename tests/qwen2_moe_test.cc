// Qwen2-MoE in the engine: tiny random-weight checkpoints (routed experts, a shared expert of
// another width behind its sigmoid gate, a dense mlp_only layer, norm_topk_prob both ways)
// against the fp64 reference of infer_reference.h, written from transformers'
// Qwen2MoeSparseMoeBlock.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "infer/model.h"
#include "infer_reference.h"
#include "test_util.h"

namespace amalgam::infer {
namespace {

using testing::random_ids;
using testing::RefModel;
using testing::TempDir;
using testing::TinySpec;

// Engine (fp32 arithmetic) vs reference (fp64) on logits of magnitude ~1-5.
constexpr double kRefTolerance = 2e-4;

TinySpec qwen2_moe_spec(bool norm_topk) {
  TinySpec s;
  s.arch = "qwen2_moe";
  s.E = 4;
  s.K = 2;
  s.I = 24;
  s.Is = 40;
  s.Idense = 56;
  s.L = 3;
  s.norm_topk = norm_topk;
  s.mlp_only_layers = {1};
  return s;
}

TEST(Qwen2Moe, LogitsMatchFp64Reference) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  for (bool norm_topk : {false, true}) {
    TempDir dir;
    const TinySpec spec = qwen2_moe_spec(norm_topk);
    RefModel ref = testing::write_tiny_model(dir.path(), spec);
    auto model = load_model(dir.path());
    EXPECT_EQ(model->config().num_experts, 4);
    EXPECT_EQ(model->config().norm_topk_prob, norm_topk);
    const auto ids = random_ids(24, spec.V, 7);
    const auto expected = testing::ref_forward(ref, ids);
    KVCache cache = model->new_cache();
    Batch b;
    b.add_sequence(ids, 0, 0, true);
    const ForwardResult r = model->forward(b, cache);
    for (size_t t = 0; t < ids.size(); ++t) {
      double worst = 0.0;
      for (int64_t v = 0; v < spec.V; ++v) {
        worst = std::max(worst, std::abs(r.row(t)[v] - expected.logits[t][v]));
      }
      EXPECT_LT(worst, kRefTolerance) << "token " << t << " norm_topk " << norm_topk;
    }
  }
}

// The two routings differ (the test above can tell norm_topk_prob apart), and the shared
// expert's gate is neither saturated nor constant on these inputs.
TEST(Qwen2Moe, NormTopkAndSharedGateMatter) {
  TempDir a, b;
  RefModel ra = testing::write_tiny_model(a.path(), qwen2_moe_spec(false));
  RefModel rb = testing::write_tiny_model(b.path(), qwen2_moe_spec(true));
  const auto ids = random_ids(16, 128, 3);
  const auto la = testing::ref_forward(ra, ids).logits, lb = testing::ref_forward(rb, ids).logits;
  double diff = 0.0;
  for (size_t t = 0; t < ids.size(); ++t) {
    for (size_t v = 0; v < la[t].size(); ++v) diff = std::max(diff, std::abs(la[t][v] - lb[t][v]));
  }
  EXPECT_GT(diff, 1e-2);
  auto model = load_model(a.path());
  Dumper dump({"shared_gate.0"});
  KVCache cache = model->new_cache();
  Batch batch;
  batch.add_sequence(ids, 0, 0, false);
  ForwardOptions o;
  o.dump = &dump;
  model->forward(batch, cache, o);
  const auto& g = dump.tensors().at("shared_gate.0").data;
  ASSERT_EQ(g.size(), ids.size());
  const auto [lo, hi] = std::minmax_element(g.begin(), g.end());
  EXPECT_GT(*hi - *lo, 0.2);
  EXPECT_LT(std::abs(*lo), 6.0);
  EXPECT_LT(std::abs(*hi), 6.0);
}

TEST(Qwen2Moe, MissingSharedExpertIsNamed) {
  TempDir dir;
  testing::write_tiny_model(dir.path(), qwen2_moe_spec(false));
  std::string cfg = testing::read_file(dir / "config.json");
  // A config that says 5 experts where the checkpoint holds 4.
  const auto at = cfg.find("\"num_experts\": 4");
  ASSERT_NE(at, std::string::npos);
  cfg.replace(at, 16, "\"num_experts\": 5");
  testing::write_file(dir / "config.json", cfg);
  testing::expect_error([&] { load_model(dir.path()); }, "num_experts = 5");
}

}  // namespace
}  // namespace amalgam::infer
