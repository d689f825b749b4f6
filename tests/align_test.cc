// Permutation alignment: the groups of permutation.h leave a model's function unchanged; weight
// matching recovers a planted permutation; `amalgam align` writes a checkpoint whose logits
// equal B's; bad inputs fail with a clear message and no output.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

#include "align/activation_matching.h"
#include "align/activations.h"
#include "align/params.h"
#include "align/permutation.h"
#include "align/weight_matching.h"
#include "infer/model.h"
#include "test_util.h"

namespace amalgam::align {
namespace {

using testing::zoo;

std::vector<std::vector<int32_t>> heldout_rows(int64_t rows, int64_t tokens) {
  return calibration_rows(zoo("eval/heldout.txt"), zoo("base"), rows, tokens);
}

// All logits of every row, rows evaluated as separate sequences.
std::vector<float> all_logits(const infer::Model& model,
                              const std::vector<std::vector<int32_t>>& rows) {
  infer::KVCache cache = model.new_cache();
  infer::Batch batch;
  for (size_t r = 0; r < rows.size(); ++r) {
    batch.add_sequence(rows[r], static_cast<int32_t>(r), 0, true);
  }
  return model.forward(batch, cache).logits;
}

double max_abs_diff(const std::vector<float>& x, const std::vector<float>& y) {
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(x[i]) - y[i]));
  }
  return m;
}

TEST(Align, RandomPermutationKeepsLogits) {
  const LlamaParams b = load_llama(zoo("initb/sort-expert"));
  const LlamaParams p = apply_permutation(b, random_permutation(b, 3));
  // The permutation really moved weights (else the test could not fail).
  EXPECT_NE(p.at("model.layers.1.self_attn.o_proj.weight").data,
            b.at("model.layers.1.self_attn.o_proj.weight").data);
  const auto rows = heldout_rows(2, 48);
  const auto ref = all_logits(*make_model(b), rows);
  EXPECT_LT(max_abs_diff(all_logits(*make_model(p), rows), ref), 1e-4);
}

TEST(Align, WeightMatchingRecoversAPlantedPermutation) {
  const LlamaParams a = load_llama(zoo("base"));
  const LlamaParams b = apply_permutation(a, random_permutation(a, 42));
  WeightMatchingOptions options;
  options.progress = false;
  MatchingStats stats;
  const ModelPermutation found = weight_matching(a, b, options, &stats);
  const LlamaParams back = apply_permutation(b, found);
  for (const auto& [name, t] : a.tensors) {
    EXPECT_EQ(back.at(name).data, t.data) << name << " not recovered";
  }
  EXPECT_GT(stats.objective_after, stats.objective_before);
  EXPECT_GE(stats.rounds, 2);
}

TEST(Align, ActivationMatchingRecoversAPlantedPermutation) {
  const LlamaParams a = load_llama(zoo("rev-expert"));
  const LlamaParams b = apply_permutation(a, random_permutation(a, 9));
  ActivationMatchingOptions options;
  options.progress = false;
  const ActivationMatch m = activation_matching(a, b, heldout_rows(4, 64), options);
  const LlamaParams back = apply_permutation(b, m.permutation);
  for (const auto& [name, t] : a.tensors) {
    EXPECT_EQ(back.at(name).data, t.data) << name << " not recovered";
  }
  // Identical units are at distance zero, up to cancellation in |a|^2 + |b|^2 - 2<a, b> with
  // fp32 Grams (residual features have norms in the hundreds over these 256 tokens).
  for (double s : m.residual_score) EXPECT_NEAR(s, 0.0, 0.1);
}

TEST(Align, CommandKeepsLogitsOfB) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  testing::TempDir tmp;
  const auto rows = heldout_rows(3, 64);
  const auto ref = all_logits(*infer::load_model(zoo("initb/sort-expert")), rows);
  for (const std::string method : {"weight", "activation"}) {
    const auto out = tmp / method;
    const auto r = testing::run_amalgam(fmt::format(
        "-q align {} {} -o {} --method {} --data {} --rows 8", zoo("rev-expert").string(),
        zoo("initb/sort-expert").string(), out.string(), method, zoo("eval/heldout.txt").string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto aligned = infer::load_model(out);
    EXPECT_LT(max_abs_diff(all_logits(*aligned, rows), ref), 1e-4) << method;
    // It moved B towards A: weights of the aligned model are closer to rev-expert's.
    const LlamaParams a = load_llama(zoo("rev-expert"));
    const LlamaParams b = load_llama(zoo("initb/sort-expert"));
    const LlamaParams c = load_llama(out);
    EXPECT_GT(weight_objective(a, c, identity_permutation(a)),
              weight_objective(a, b, identity_permutation(a)) + 1.0)
        << method;
  }
}

TEST(Align, BadInputsFailWithoutOutput) {
  testing::TempDir tmp;
  auto r = testing::run_amalgam(fmt::format("align {} {} -o {}", zoo("base").string(),
                                            zoo("base-large").string(), (tmp / "x").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("differ in hidden_size"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "x"));
  r = testing::run_amalgam(fmt::format("align {} {} -o {} --method activation",
                                       zoo("base").string(), zoo("rev-expert").string(),
                                       (tmp / "x").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("needs --data"), std::string::npos) << r.output;
  testing::write_file(tmp / "short.txt", "too short");
  r = testing::run_amalgam(fmt::format("align {} {} -o {} --method activation --data {}",
                                       zoo("base").string(), zoo("rev-expert").string(),
                                       (tmp / "x").string(), (tmp / "short.txt").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("too little calibration text"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "x"));
}

}  // namespace
}  // namespace amalgam::align
