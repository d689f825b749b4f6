// PLeaS: on a model and a permuted copy of itself the least squares must give the original
// weights back (width 1: every unit merged with its twin; width 2: both copies side by side with
// zero cross blocks); the command writes a wider checkpoint the engine runs; bad inputs fail.
#include "align/pleas.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

#include "align/activations.h"
#include "align/params.h"
#include "align/permutation.h"
#include "infer/perplexity.h"
#include "test_util.h"

namespace amalgam::align {
namespace {

using testing::zoo;

std::vector<std::vector<int32_t>> rows_of(int64_t rows) {
  return calibration_rows(zoo("eval/heldout.txt"), zoo("base"), rows, 128);
}

// W diag(g): what the merged model's projection must equal when norms are folded.
std::vector<float> folded(const LlamaParams& m, const std::string& w, const std::string& g) {
  const tensor::Tensor& t = m.at(w);
  const tensor::Tensor& s = m.at(g);
  std::vector<float> out(t.data);
  const int64_t cols = t.shape[1];
  for (size_t i = 0; i < out.size(); ++i) out[i] *= s.data[i % cols];
  return out;
}

double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, std::abs(static_cast<double>(v)));
  return m;
}

TEST(Pleas, WidthOneOnAPermutedTwinGivesTheModelBack) {
  const LlamaParams a = load_llama(zoo("rev-expert"));
  const LlamaParams b = apply_permutation(a, random_permutation(a, 4));
  for (bool sequential : {false, true}) {
    PleasOptions options;
    options.width = 1.0;
    options.ridge = 1e-7;
    options.progress = false;
    options.sequential = sequential;
    const LlamaParams m = pleas_merge(a, b, rows_of(48), options);
    EXPECT_EQ(m.hidden(), a.hidden());
    for (int64_t l = 0; l < a.layers(); ++l) {
      for (const auto& [w, g] : std::vector<std::pair<std::string, std::string>>{
               {"self_attn.q_proj.weight", "input_layernorm.weight"},
               {"mlp.up_proj.weight", "post_attention_layernorm.weight"},
               {"mlp.down_proj.weight", ""}}) {
        const std::string name = layer_tensor(l, w);
        const std::vector<float> want =
            g.empty() ? a.at(name).data : folded(a, name, layer_tensor(l, g));
        const std::vector<float>& got = m.at(name).data;
        ASSERT_EQ(got.size(), want.size()) << name;
        std::vector<float> diff(got.size());
        for (size_t i = 0; i < got.size(); ++i) diff[i] = got[i] - want[i];
        EXPECT_LT(max_abs(diff), 2e-3 * max_abs(want)) << name << " sequential " << sequential;
      }
    }
  }
}

TEST(Pleas, WidthTwoKeepsBothModelsWithZeroCrossBlocks) {
  const LlamaParams a = load_llama(zoo("rev-expert"));
  const LlamaParams b = load_llama(zoo("initb/sort-expert"));
  PleasOptions options;
  options.width = 2.0;
  options.ridge = 1e-7;
  options.progress = false;
  const LlamaParams m = pleas_merge(a, b, rows_of(48), options);
  const int64_t D = a.hidden(), I = a.intermediate();
  EXPECT_EQ(m.hidden(), 2 * D);
  EXPECT_EQ(m.intermediate(), 2 * I);
  EXPECT_EQ(m.kv_heads(), 2 * a.kv_heads());
  EXPECT_EQ(m.heads(), 2 * a.heads());
  // Every unit is separate, A's first: down_proj is [[W_A, 0], [0, W_B']] with W_A recovered.
  const tensor::Tensor& down = m.at(layer_tensor(2, "mlp.down_proj.weight"));
  const tensor::Tensor& down_a = a.at(layer_tensor(2, "mlp.down_proj.weight"));
  double err = 0, cross = 0;
  for (int64_t r = 0; r < 2 * D; ++r) {
    for (int64_t c = 0; c < 2 * I; ++c) {
      const float v = down.data[r * 2 * I + c];
      if ((r < D) != (c < I)) cross = std::max(cross, std::abs(static_cast<double>(v)));
      if (r < D && c < I) {
        err = std::max(err, std::abs(static_cast<double>(v) - down_a.data[r * I + c]));
      }
    }
  }
  EXPECT_EQ(cross, 0.0);
  EXPECT_LT(err, 2e-3 * max_abs(down_a.data));
  // lm_head is fitted to the average of the logits: [W_A diag(g_A) / 2, ...].
  const std::vector<float> head_a = folded(a, "lm_head.weight", "model.norm.weight");
  const tensor::Tensor& head = m.at("lm_head.weight");
  double head_err = 0;
  for (int64_t v = 0; v < a.vocab(); ++v) {
    for (int64_t c = 0; c < D; ++c) {
      head_err = std::max(head_err, std::abs(static_cast<double>(head.data[v * 2 * D + c]) -
                                             0.5 * head_a[v * D + c]));
    }
  }
  EXPECT_LT(head_err, 2e-3 * max_abs(head_a));
}

TEST(Pleas, CommandWritesAWiderModelTheEngineRuns) {
  testing::TempDir tmp;
  const auto out = tmp / "m";
  const auto r = testing::run_amalgam(fmt::format(
      "-q pleas {} {} --data {} -o {} --width 1.25 --rows 40", zoo("rev-expert").string(),
      zoo("initb/sort-expert").string(), zoo("eval/heldout.txt").string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto model = infer::load_model(out);
  // hidden 160 is not heads x head_dim (6 x 32): head_dim is explicit in config.json.
  EXPECT_EQ(model->config().hidden_size, 160);
  EXPECT_EQ(model->config().num_heads, 6);
  EXPECT_EQ(model->config().num_kv_heads, 3);
  EXPECT_EQ(model->config().intermediate_size, 480);
  const double nll = infer::rows_nll(*model, rows_of(8)).mean();
  EXPECT_TRUE(std::isfinite(nll));
  EXPECT_LT(nll, 6.0);  // the naive average of this pair scores 5.98
  EXPECT_TRUE(std::filesystem::exists(out / "tokenizer.json"));
}

TEST(Pleas, BadInputsFailWithoutOutput) {
  testing::TempDir tmp;
  const std::string a = zoo("rev-expert").string(), b = zoo("initb/sort-expert").string();
  const std::string data = zoo("eval/heldout.txt").string(), out = (tmp / "x").string();
  auto r =
      testing::run_amalgam(fmt::format("pleas {} {} --data {} -o {} --width 2.5", a, b, data, out));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--width must be in [1, 2]"), std::string::npos) << r.output;
  r = testing::run_amalgam(
      fmt::format("pleas {} {} --data {} -o {} --rows 2 --width 2", a, b, data, out));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("calibration tokens"), std::string::npos) << r.output;
  r = testing::run_amalgam(
      fmt::format("pleas {} {} --data {} -o {}", a, zoo("base-large").string(), data, out));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("differ in"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "x"));
}

}  // namespace
}  // namespace amalgam::align
