// Conformance with Hugging Face transformers itself: tests/data/transformers holds tiny random
// checkpoints (Llama with GQA, Llama with llama3 rope scaling and tied embeddings, Qwen2 with
// q/k/v biases) and what transformers 5.17 (PyTorch, float32) computed on them: token ids of its
// fast tokenizer, logits, final hidden states, greedy tokens and the mean NLL of a long text
// (tests/data/transformers/README.md). Nothing there was computed by amalgam.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/fs.h"
#include "infer/batch.h"
#include "infer/dump.h"
#include "infer/gemm.h"
#include "infer/generate.h"
#include "infer/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::source_dir;
using testing::TempDir;

// float32 against float32 with different summation orders.
constexpr double kLogitTolerance = 1e-4;

fs::path refs(const std::string& name) { return source_dir() / "tests/data/transformers" / name; }

json reference(const std::string& name) {
  return json::parse(core::read_text_file(refs(name) / "reference.json"));
}

struct Outputs {
  std::vector<float> logits;  // (n, vocab)
  std::vector<float> final_hidden_last;
  int64_t vocab = 0;
};

Outputs run(const infer::Model& model, const std::vector<int32_t>& ids) {
  infer::Batch batch;
  batch.add_sequence(ids, 0, 0, true);
  infer::Dumper dump({"result_norm"});
  infer::ForwardOptions options;
  options.dump = &dump;
  infer::KVCache cache = model.new_cache();
  infer::ForwardResult r = model.forward(batch, cache, options);
  Outputs out;
  out.vocab = r.vocab;
  out.logits = r.logits;
  const auto& norm = dump.tensors().at("result_norm");
  out.final_hidden_last.assign(norm.data.end() - norm.cols, norm.data.end());
  return out;
}

double max_abs_diff(const float* a, const json& b) {
  double worst = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i].get<double>()));
  }
  return worst;
}

class Transformers : public ::testing::TestWithParam<std::string> {};

TEST_P(Transformers, TokenIdsAreTheFastTokenizers) {
  const json ref = reference(GetParam());
  auto tok = tokenizer::Tokenizer::from_directory(refs(GetParam()));
  for (const auto& p : ref["prompts"]) {
    EXPECT_EQ(json(tok.encode(p["text"].get<std::string>(), true)), p["ids"]) << p["text"];
  }
}

void expect_logits_match(const infer::Model& model, const json& ref) {
  for (const auto& p : ref["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const Outputs r = run(model, ids);
    const size_t n = ids.size(), V = static_cast<size_t>(r.vocab);
    ASSERT_EQ(r.logits.size(), n * V);
    ASSERT_EQ(p["last_logits"].size(), V);
    EXPECT_LT(max_abs_diff(r.logits.data() + (n - 1) * V, p["last_logits"]), kLogitTolerance)
        << p["text"];
    for (size_t t = 0; t < n; ++t) {
      const float* row = r.logits.data() + t * V;
      double sum = 0;
      for (size_t v = 0; v < V; ++v) sum += row[v];
      // A sum over the vocabulary: the tolerance grows with its length.
      EXPECT_NEAR(sum, p["logits_rows_sum"][t].get<double>(), kLogitTolerance * V)
          << p["text"] << " position " << t;
      EXPECT_EQ(std::max_element(row, row + V) - row, p["logits_argmax"][t].get<int64_t>())
          << p["text"] << " position " << t;
    }
    EXPECT_LT(max_abs_diff(r.final_hidden_last.data(), p["final_hidden_last"]), kLogitTolerance)
        << p["text"];
  }
}

TEST_P(Transformers, LogitsAndHiddenStatesMatch) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  auto model = infer::load_model(refs(GetParam()));
  expect_logits_match(*model, reference(GetParam()));
}

// With BF16 products (the default for BF16 weights; llama3rope is the BF16 checkpoint) activations
// are rounded to BF16 before each product, sums stay fp32: the logits move by about the BF16
// rounding of the activations, not by accumulated error. Measured against transformers' float32
// outputs on llama3rope: max |logit diff| 6e-4 (prompts' last positions), 3.6e-4 (long text);
// mean nll 1.2e-5, within the fp32 tolerance. The logit tolerance leaves 5x room; greedy tokens
// may differ where transformers' top two logits are closer than that (random weights have such
// near ties). The float32 checkpoints are unaffected (their products stay fp32).
TEST_P(Transformers, Bf16ProductsStayWithinTheirTolerance) {
  if (!infer::reduced_precision_products()) GTEST_SKIP() << "no native BF16 on this CPU";
  const json ref = reference(GetParam());
  auto model = infer::load_model(refs(GetParam()));
  constexpr double kBf16Tolerance = 3e-3;
  for (const auto& p : ref["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const Outputs r = run(*model, ids);
    const size_t V = static_cast<size_t>(r.vocab);
    const double diff = max_abs_diff(r.logits.data() + (ids.size() - 1) * V, p["last_logits"]);
    RecordProperty("last_logits_diff", std::to_string(diff));
    EXPECT_LT(diff, kBf16Tolerance) << p["text"];
  }
  const json& lt = ref["long"];
  const auto ids = lt["ids"].get<std::vector<int32_t>>();
  const Outputs r = run(*model, ids);
  const size_t V = static_cast<size_t>(r.vocab);
  const double diff = max_abs_diff(r.logits.data() + (ids.size() - 1) * V, lt["last_logits"]);
  RecordProperty("long_last_logits_diff", std::to_string(diff));
  EXPECT_LT(diff, kBf16Tolerance);
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = r.logits.data() + t * V;
    double mx = *std::max_element(row, row + V), z = 0;
    for (size_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
    nll += mx + std::log(z) - row[ids[t + 1]];
  }
  nll /= static_cast<double>(ids.size() - 1);
  RecordProperty("long_nll_diff", std::to_string(nll - lt["mean_nll"].get<double>()));
  EXPECT_NEAR(nll, lt["mean_nll"].get<double>(), 1e-4);
}

TEST_P(Transformers, GreedyTokensMatch) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  const json ref = reference(GetParam());
  auto model = infer::load_model(refs(GetParam()));
  for (const auto& p : ref["prompts"]) {
    infer::GenerateOptions options;
    options.max_new_tokens = static_cast<int64_t>(p["greedy"].size());
    // transformers stops at eos_token_id from generation_config.json.
    options.stop_ids = {1};
    const auto gen = infer::generate(*model, p["ids"].get<std::vector<int32_t>>(), options);
    std::vector<int32_t> expected = p["greedy"].get<std::vector<int32_t>>();
    // transformers pads after EOS; compare up to and without it.
    auto eos = std::find(expected.begin(), expected.end(), 1);
    expected.erase(eos, expected.end());
    EXPECT_EQ(gen.ids, expected) << p["text"];
  }
}

TEST_P(Transformers, LongTextNllMatches) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  const json ref = reference(GetParam());
  auto model = infer::load_model(refs(GetParam()));
  const auto ids = ref["long"]["ids"].get<std::vector<int32_t>>();
  const Outputs r = run(*model, ids);
  const size_t V = static_cast<size_t>(r.vocab);
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = r.logits.data() + t * V;
    double mx = *std::max_element(row, row + V), z = 0;
    for (size_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
    nll += mx + std::log(z) - row[ids[t + 1]];
  }
  nll /= static_cast<double>(ids.size() - 1);
  EXPECT_NEAR(nll, ref["long"]["mean_nll"].get<double>(), 1e-4);
  EXPECT_LT(max_abs_diff(r.logits.data() + (ids.size() - 1) * V, ref["long"]["last_logits"]),
            kLogitTolerance);
}

// The same checkpoint with its config.json rewritten the transformers-4 way (torch_dtype,
// top-level rope_theta, rope_scaling with "type" and "rope_type") gives the same outputs.
TEST_P(Transformers, Transformers4ConfigStyleGivesTheSameOutputs) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  const fs::path copy = dir / "model";
  fs::copy(refs(GetParam()), copy);
  json c = json::parse(core::read_text_file(copy / "config.json"));
  json rope = c["rope_parameters"];
  c.erase("rope_parameters");
  c["torch_dtype"] = c["dtype"];
  c.erase("dtype");
  c["rope_theta"] = rope["rope_theta"];
  rope.erase("rope_theta");
  if (rope.value("rope_type", "default") != "default") {
    rope["type"] = rope["rope_type"];
    c["rope_scaling"] = rope;
  } else {
    c["rope_scaling"] = nullptr;
  }
  c["transformers_version"] = "4.46.0";
  fs::remove(copy / "config.json");
  core::write_text_file(copy / "config.json", c.dump(2));
  auto model = infer::load_model(copy);
  expect_logits_match(*model, reference(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, Transformers,
                         ::testing::Values("llama", "llama3rope", "qwen2"));

}  // namespace
}  // namespace amalgam
