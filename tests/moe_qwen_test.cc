// amalgam moe with a shared expert: a Qwen2-MoE checkpoint (mergekit/moe/qwen.py) from the zoo's
// MLP-only experts, run by the engine. Checked against computations written here: the MoE block
// of every layer in fp64 from the written tensors (transformers' Qwen2MoeSparseMoeBlock), a full
// fp64 forward of a dense expert whose MLP output is scaled as the MoE's must be, and the routed
// part alone against the Mixtral output of the same config.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numeric>

#include "infer/model.h"
#include "infer_reference.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "moe/build.h"
#include "moe/config.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;
using testing::zoo;

std::string expert(const std::string& model, const std::vector<std::string>& prompts,
                   const std::string& extra = "") {
  std::string y = "  - source_model: " + zoo(model).string() + "\n    positive_prompts:\n";
  for (const auto& p : prompts) y += "      - \"" + p + "\"\n";
  return y + extra;
}

const std::string kRouted = expert("mlp-add-expert", {"12+34=", "507+88="}) +
                            expert("mlp-rev-expert", {"reverse apple ->", "reverse word ->"});
const std::string kShared = expert("mlp-sort-expert", {"sort 5 2 9 ->"});

std::string header(const std::string& gate_mode, int k, const std::string& dtype = "float32") {
  return "base_model: " + zoo("base").string() + "\ngate_mode: " + gate_mode + "\ndtype: " + dtype +
         "\nexperts_per_token: " + std::to_string(k) + "\n";
}

moe::MoeConfig parse(const std::string& text) { return moe::parse_moe_config(text, "test.yaml"); }

std::vector<int32_t> prompt_ids(const fs::path& model, const std::string& text) {
  return tokenizer::Tokenizer::from_directory(model).encode(text, true);
}

std::vector<float> all_logits(const infer::Model& m, const std::vector<int32_t>& ids) {
  infer::KVCache cache = m.new_cache();
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  return m.forward(batch, cache).logits;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::abs(double(a[i]) - b[i]));
  return worst;
}

std::vector<double> load(const io::Checkpoint& ck, const std::string& name) {
  const tensor::Tensor t = ck.load_f32(name);
  return {t.data.begin(), t.data.end()};
}

TEST(MoeQwenTest, WritesMergekitsQwen2MoeLayout) {
  TempDir dir;
  moe::build_moe(
      parse(header("hidden", 2) + "experts:\n" + kRouted + "shared_experts:\n" + kShared),
      dir / "qwen", {});
  moe::build_moe(parse(header("hidden", 2) + "experts:\n" + kRouted + kShared), dir / "mixtral",
                 {});
  const io::ModelConfig c = io::read_model_config(dir / "qwen");
  EXPECT_EQ(c.architecture, "Qwen2MoeForCausalLM");
  EXPECT_EQ(c.model_type, "qwen2_moe");
  EXPECT_EQ(c.num_experts, 2);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_EQ(c.moe_intermediate_size, 384);
  EXPECT_EQ(c.shared_expert_intermediate_size, 384);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_FALSE(c.raw.contains("num_local_experts"));
  EXPECT_EQ(c.raw.at("use_sliding_window"), false);

  io::Checkpoint q(dir / "qwen"), m(dir / "mixtral");
  io::Checkpoint add(zoo("mlp-add-expert")), sort(zoo("mlp-sort-expert"));
  for (int64_t l = 0; l < 4; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    // Router rows: the Mixtral of the three experts (its rows are checked against mergekit's
    // formula in moe_test) gives rows 0, 1 to the routed experts and row 2 to the shared gate.
    const auto router = load(q, p + ".mlp.gate.weight");
    const auto shared_gate = load(q, p + ".mlp.shared_expert_gate.weight");
    const auto mix = load(m, p + ".block_sparse_moe.gate.weight");
    ASSERT_EQ(router.size(), 2u * 128);
    ASSERT_EQ(shared_gate.size(), 128u);
    for (size_t i = 0; i < router.size(); ++i) EXPECT_EQ(router[i], mix[i]);
    for (size_t i = 0; i < 128; ++i) EXPECT_EQ(shared_gate[i], mix[2 * 128 + i]);
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      const std::string dense = p + ".mlp." + proj + ".weight";
      EXPECT_EQ(load(q, p + ".mlp.experts.0." + proj + ".weight"), load(add, dense));
      EXPECT_EQ(load(q, p + ".mlp.shared_expert." + proj + ".weight"), load(sort, dense));
    }
    // Qwen2 attention always has q/k/v biases: zeros from a Llama base.
    EXPECT_EQ(q.info(p + ".self_attn.q_proj.bias").shape, (tensor::Shape{128}));
    EXPECT_EQ(q.info(p + ".self_attn.k_proj.bias").shape, (tensor::Shape{64}));
    for (double v : load(q, p + ".self_attn.v_proj.bias")) EXPECT_EQ(v, 0.0);
    EXPECT_FALSE(q.has(p + ".mlp.gate_proj.weight"));
  }
  // GGUF export refuses it by name (llama.cpp's qwen2moe keys are not written yet).
  const auto r = testing::run_amalgam("export-gguf " + (dir / "qwen").string() + " -o " +
                                      (dir / "q.gguf").string() + " --type f16");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not yet exported to GGUF"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "q.gguf"));
}

// Every layer's MoE block as the engine runs it (dumped input ffn_norm.L and output ffn_out.L)
// against Qwen2MoeSparseMoeBlock computed here in fp64 from the written tensors: softmax over the
// router logits, the top k renormalised (norm_topk_prob true), plus
// sigmoid(shared_expert_gate . x) * shared_expert(x).
TEST(MoeQwenTest, BlockMatchesFp64Reference) {
  for (int k : {1, 2}) {
    TempDir dir;
    moe::build_moe(
        parse(header("hidden", k) + "experts:\n" + kRouted +
              expert("mlp-sort-expert", {"sort 3 1 ->", "sort 9 8 7 ->"}) + "shared_experts:\n" +
              expert("mlp-add-expert", {"1+2=", "reverse sort ->"})),
        dir / "moe", {});
    const auto model = infer::load_model(dir / "moe");
    const auto ids =
        prompt_ids(dir / "moe", "sort 3 1 2 -> 1 2 3 and 12+30=42, reverse cat -> tac");
    const int64_t n = static_cast<int64_t>(ids.size()), D = 128, I = 384, E = 3;
    std::vector<std::string> wanted;
    for (int64_t l = 0; l < 4; ++l) {
      wanted.push_back("ffn_norm." + std::to_string(l));
      wanted.push_back("ffn_out." + std::to_string(l));
    }
    infer::Dumper dump(wanted);
    infer::ForwardOptions o;
    o.dump = &dump;
    infer::KVCache cache = model->new_cache();
    infer::Batch batch;
    batch.add_sequence(ids, 0, 0, false);
    model->forward(batch, cache, o);
    io::Checkpoint ck(dir / "moe");
    std::vector<int64_t> experts_used(E, 0);
    double gate_lo = 1.0, gate_hi = 0.0;
    for (int64_t l = 0; l < 4; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
      const auto router = load(ck, p + "gate.weight");
      const auto sgate = load(ck, p + "shared_expert_gate.weight");
      std::vector<std::vector<double>> g, u, dn;
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = p + "experts." + std::to_string(e) + ".";
        g.push_back(load(ck, x + "gate_proj.weight"));
        u.push_back(load(ck, x + "up_proj.weight"));
        dn.push_back(load(ck, x + "down_proj.weight"));
      }
      const auto sg = load(ck, p + "shared_expert.gate_proj.weight");
      const auto su = load(ck, p + "shared_expert.up_proj.weight");
      const auto sd = load(ck, p + "shared_expert.down_proj.weight");
      const auto& in = dump.tensors().at("ffn_norm." + std::to_string(l)).data;
      const auto& out = dump.tensors().at("ffn_out." + std::to_string(l)).data;
      double worst = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        const std::vector<double> x(in.begin() + t * D, in.begin() + (t + 1) * D);
        const auto z = testing::ref_linear(router, x, E);
        std::vector<double> prob(E);
        const double zmax = *std::max_element(z.begin(), z.end());
        double total = 0.0;
        for (int64_t e = 0; e < E; ++e) total += prob[e] = std::exp(z[e] - zmax);
        for (double& v : prob) v /= total;
        std::vector<int64_t> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
        double top = 0.0;
        for (int i = 0; i < k; ++i) top += prob[order[i]];
        std::vector<double> y(D, 0.0);
        for (int i = 0; i < k; ++i) {
          const int64_t e = order[i];
          ++experts_used[e];
          const auto ye = testing::ref_swiglu(g[e], u[e], dn[e], x, I, D);
          for (int64_t j = 0; j < D; ++j) y[j] += prob[e] / top * ye[j];
        }
        const double s = 1.0 / (1.0 + std::exp(-testing::ref_linear(sgate, x, 1)[0]));
        gate_lo = std::min(gate_lo, s);
        gate_hi = std::max(gate_hi, s);
        const auto ys = testing::ref_swiglu(sg, su, sd, x, I, D);
        for (int64_t j = 0; j < D; ++j) {
          worst = std::max(worst, std::abs(out[t * D + j] - (y[j] + s * ys[j])));
        }
      }
      EXPECT_LT(worst, 2e-4) << "layer " << l << " k " << k;
    }
    // The input exercises the routing: every expert is chosen somewhere, the gate varies.
    for (int64_t e = 0; e < E; ++e) EXPECT_GT(experts_used[e], 0) << "expert " << e;
    EXPECT_GT(gate_hi - gate_lo, 0.01);
  }
}

// Every routed expert is mlp-add-expert and so is the shared expert, whose gate row is zero
// (positive prompts = negative prompts: mergekit's difference of states is 0), so
// sigmoid = 1/2 everywhere: each MoE block computes 1.5 x add's MLP. Reference: add-expert with
// down_proj x 1.5, run by the naive fp64 forward of infer_reference.h.
TEST(MoeQwenTest, SameExpertWithHalfOpenSharedGateIsOneAndAHalfTimesIt) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  moe::BuildOptions opts;
  opts.allow_same_model = true;
  moe::build_moe(
      parse(header("hidden", 2, "bfloat16") + "experts:\n" + expert("mlp-add-expert", {"12+34="}) +
            expert("mlp-add-expert", {"sort 1 ->"}) + "shared_experts:\n" +
            expert("mlp-add-expert", {"1+1="}, "    negative_prompts: [\"1+1=\"]\n")),
      dir / "moe", opts);
  io::Checkpoint moe_ck(dir / "moe");
  for (double v : load(moe_ck, "model.layers.2.mlp.shared_expert_gate.weight")) EXPECT_EQ(v, 0.0);

  io::Checkpoint ck(zoo("mlp-add-expert"));
  testing::TinySpec s;
  s.D = 128, s.H = 4, s.Hkv = 2, s.d = 32, s.I = 384, s.V = 1024, s.L = 4;
  s.eps = 1e-5;
  s.theta = 10000.0;
  testing::RefModel ref;
  ref.spec = s;
  ref.embed = load(ck, "model.embed_tokens.weight");
  ref.lm_head = load(ck, "lm_head.weight");
  ref.norm = load(ck, "model.norm.weight");
  for (int64_t l = 0; l < s.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    testing::RefLayer r;
    r.attn_norm = load(ck, p + "input_layernorm.weight");
    r.ffn_norm = load(ck, p + "post_attention_layernorm.weight");
    r.wq = load(ck, p + "self_attn.q_proj.weight");
    r.wk = load(ck, p + "self_attn.k_proj.weight");
    r.wv = load(ck, p + "self_attn.v_proj.weight");
    r.wo = load(ck, p + "self_attn.o_proj.weight");
    r.gate = load(ck, p + "mlp.gate_proj.weight");
    r.up = load(ck, p + "mlp.up_proj.weight");
    r.down = load(ck, p + "mlp.down_proj.weight");
    for (double& v : r.down) v *= 1.5;
    ref.layers.push_back(std::move(r));
  }
  const auto ids = prompt_ids(dir / "moe", "123+456=579 and 12+30=");
  const auto want = testing::ref_forward(ref, ids).logits;
  const auto got = all_logits(*infer::load_model(dir / "moe"), ids);
  double worst = 0.0, spread = 0.0;
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t v = 0; v < s.V; ++v) {
      worst = std::max(worst, std::abs(got[t * s.V + v] - want[t][v]));
      spread = std::max(spread, std::abs(want[t][v]));
    }
  }
  EXPECT_LT(worst, 2e-3) << "largest |logit| " << spread;
  // The scale matters: add-expert itself is far from it.
  EXPECT_GT(max_diff(all_logits(*infer::load_model(zoo("mlp-add-expert")), ids), got), 0.1);
}

// With the shared expert's output scaled to zero (residual_scale: 0), a Qwen2-MoE computes its
// routed part only, which is what the Mixtral of the same experts and routers computes.
TEST(MoeQwenTest, RoutedPartEqualsMixtral) {
  for (int k : {1, 2}) {
    TempDir dir;
    const std::string routed =
        kRouted + expert("mlp-sort-expert", {"sort 3 1 ->", "sort 9 8 7 ->"});
    moe::build_moe(parse(header("hidden", k) + "experts:\n" + routed + "shared_experts:\n" +
                         expert("mlp-add-expert", {"1+2="}, "    residual_scale: 0\n")),
                   dir / "qwen", {});
    moe::BuildOptions fused;
    fused.fused = true;
    moe::build_moe(
        parse(header("hidden", k) + "architecture: qwen\nexperts:\n" + routed +
              "shared_experts:\n" + expert("mlp-add-expert", {"1+2="}, "    residual_scale: 0\n")),
        dir / "qwen-fused", fused);
    moe::build_moe(parse(header("hidden", k) + "experts:\n" + routed), dir / "mixtral", {});
    const auto ids = prompt_ids(dir / "qwen", "sort 3 1 2 -> 1 2 3 and 12+30=42");
    const auto mixtral = all_logits(*infer::load_model(dir / "mixtral"), ids);
    const auto qwen = all_logits(*infer::load_model(dir / "qwen"), ids);
    EXPECT_LT(max_diff(qwen, mixtral), 1e-5) << "k " << k;
    EXPECT_LT(max_diff(all_logits(*infer::load_model(dir / "qwen-fused"), ids), qwen), 1e-5);
    // and the shared expert does count when it is not scaled away
    TempDir other;
    moe::build_moe(parse(header("hidden", k) + "experts:\n" + routed + "shared_experts:\n" +
                         expert("mlp-add-expert", {"1+2="})),
                   other / "qwen", {});
    EXPECT_GT(max_diff(all_logits(*infer::load_model(other / "qwen"), ids), mixtral), 1e-2);
  }
}

TEST(MoeQwenTest, ConfigErrors) {
  auto build = [&](const std::string& text) {
    TempDir dir;
    try {
      moe::build_moe(parse(text), dir / "out", {});
    } catch (...) {
      EXPECT_FALSE(fs::exists(dir / "out"));
      EXPECT_TRUE(fs::is_empty(dir.path())) << "staging directory left behind";
      throw;
    }
  };
  const std::string h = header("hidden", 1);
  expect_error([&] { build(h + "experts:\n" + kRouted + "shared_experts:\n" + kShared + kShared); },
               "exactly one entry under shared_experts, got 2");
  expect_error(
      [&] {
        build(h + "experts:\n" + kRouted +
              "shared_experts:\n  - source_model: " + zoo("mlp-sort-expert").string() + "\n");
      },
      "shared_experts[0]");
  expect_error(
      [&] {
        build(h + "architecture: mixtral\nexperts:\n" + kRouted + "shared_experts:\n" + kShared);
      },
      "Mixtral has no shared experts");
  expect_error([&] { build(h + "architecture: qwen\nexperts:\n" + kRouted); },
               "exactly one entry under shared_experts, got 0");
  expect_error([&] { build(h + "architecture: deepseek\nexperts:\n" + kRouted); },
               "architecture 'deepseek'");
  {
    // A shared expert of another model_type than the base.
    TempDir d;
    fs::copy(zoo("mlp-sort-expert"), d / "sort");
    std::string cfg = testing::read_file(d / "sort" / "config.json");
    cfg.replace(cfg.find("\"model_type\": \"llama\""), 21, "\"model_type\": \"mistral\"");
    fs::permissions(d / "sort" / "config.json", fs::perms::owner_write, fs::perm_options::add);
    testing::write_file(d / "sort" / "config.json", cfg);
    expect_error(
        [&] {
          build(h + "experts:\n" + kRouted + "shared_experts:\n  - source_model: " +
                (d / "sort").string() + "\n    positive_prompts: [\"x\"]\n");
        },
        "differs from the base's 'llama'");
  }
  // random needs no prompts for the shared expert (mergekit's rule).
  TempDir ok;
  moe::build_moe(parse(header("random", 1) + "experts:\n" + kRouted + "shared_experts:\n  - " +
                       "source_model: " + zoo("mlp-sort-expert").string() + "\n"),
                 ok / "moe", {});
  EXPECT_EQ(io::read_model_config(ok / "moe").model_type, "qwen2_moe");
}

}  // namespace
}  // namespace amalgam
