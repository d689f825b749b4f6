// Bidirectional attention (ForwardOptions::unmasked, `amalgam embed --unmasked`, LS-unLLaMA):
// logits and hidden states of tiny random models against the fp64 reference forward with the
// causal mask removed, through both attention paths (sgemm blocks for long sequences, the
// per-token loop for short ones), and the property that makes it bidirectional: an earlier
// token's state depends on later tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "infer/model.h"
#include "infer_reference.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::infer {
namespace {

using testing::random_ids;
using testing::RefModel;
using testing::TempDir;
using testing::TinySpec;

constexpr double kRefTolerance = 2e-4;

ForwardResult run(const Model& m, const std::vector<int32_t>& ids, bool unmasked,
                  Dumper* dump = nullptr) {
  KVCache cache = m.new_cache();
  Batch b;
  b.add_sequence(ids, 0, 0, true);
  ForwardOptions o;
  o.unmasked = unmasked;
  o.hidden_states = true;
  o.dump = dump;
  return m.forward(b, cache, o);
}

TEST(Unmasked, MatchesFullAttentionReference) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  for (const char* arch : {"llama", "mistral"}) {
    TempDir dir;
    TinySpec spec;
    spec.arch = arch;
    spec.L = 2;
    if (std::string(arch) == "mistral") spec.window = 6;  // |p - pj| < 6 both ways
    RefModel ref = testing::write_tiny_model(dir.path(), spec);
    auto model = load_model(dir.path());
    for (int64_t n : {5, 23}) {  // below and above kAttentionGemmMinQueries
      const auto ids = random_ids(n, spec.V, static_cast<uint32_t>(n));
      const auto want = testing::ref_forward(ref, ids, {}, false);
      const auto causal = testing::ref_forward(ref, ids);
      const ForwardResult r = run(*model, ids, true);
      double worst = 0.0, moved = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t v = 0; v < spec.V; ++v) {
          worst = std::max(worst, std::abs(r.row(t)[v] - want.logits[t][v]));
          moved = std::max(moved, std::abs(want.logits[t][v] - causal.logits[t][v]));
        }
      }
      EXPECT_LT(worst, kRefTolerance) << arch << " n " << n;
      EXPECT_GT(moved, 1e-2) << "the reference must tell the masks apart";
      const auto& hidden = r.hidden.at(0);
      for (int64_t l = 0; l <= spec.L; ++l) {
        for (int64_t j = 0; j < spec.D; ++j) {
          ASSERT_NEAR(hidden[l * spec.D + j], want.hidden[l][j], kRefTolerance)
              << arch << " n " << n << " layer " << l;
        }
      }
    }
  }
}

// Changing a later token changes an earlier token's state only without the mask; the last
// token's state moves with the first token's in both (it sees it either way).
TEST(Unmasked, EarlierStatesDependOnLaterTokens) {
  TempDir dir;
  TinySpec spec;
  spec.L = 2;
  testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  auto ids = random_ids(12, spec.V, 5);
  auto other = ids;
  other[9] = (other[9] + 1) % static_cast<int32_t>(spec.V);
  for (bool unmasked : {false, true}) {
    Dumper a({"l_out.1"}), b({"l_out.1"});
    run(*model, ids, unmasked, &a);
    run(*model, other, unmasked, &b);
    const auto& x = a.tensors().at("l_out.1").data;
    const auto& y = b.tensors().at("l_out.1").data;
    double early = 0.0;  // token 3's state
    for (int64_t j = 0; j < spec.D; ++j) {
      early = std::max(early, double(std::abs(x[3 * spec.D + j] - y[3 * spec.D + j])));
    }
    if (unmasked) {
      EXPECT_GT(early, 1e-3);
    } else {
      EXPECT_EQ(early, 0.0);
    }
  }
}

TEST(Unmasked, NeedsOneMicroBatch) {
  TempDir dir;
  TinySpec spec;
  spec.L = 1;
  testing::write_tiny_model(dir.path(), spec);
  auto model = load_model(dir.path());
  KVCache cache = model->new_cache();
  Batch b;
  b.add_sequence(random_ids(10, spec.V, 1), 0, 0, true);
  ForwardOptions o;
  o.unmasked = true;
  o.micro_batch = 4;
  testing::expect_error([&] { model->forward(b, cache, o); }, "one micro-batch");
}

// `amalgam embed --unmasked` writes the engine's unmasked final state at the last token.
TEST(Unmasked, EmbedCli) {
  TempDir dir;
  const auto items = dir / "items.jsonl";
  const std::vector<std::string> texts = {"12+34=46", "reverse apple -> elppa"};
  testing::write_file(items, "{\"text\": \"" + texts[0] + "\", \"label\": 0}\n{\"text\": \"" +
                                 texts[1] + "\", \"label\": 1}\n");
  const std::string base = testing::zoo("base").string();
  const auto out = dir / "u.safetensors";
  const auto r = testing::run_amalgam("-q embed " + base + " --file " + items.string() + " -o " +
                                      out.string() + " --unmasked");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  io::SafetensorsFile f(out.string());
  const auto x = f.view(*f.find("features"));
  ASSERT_EQ(x.shape, (tensor::Shape{2, 128}));
  const auto tok = tokenizer::Tokenizer::from_directory(testing::zoo("base"));
  auto model = load_model(testing::zoo("base"));
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tok.encode(texts[i], true);
    const auto unmasked = run(*model, ids, true).hidden.at(0);
    const auto masked = run(*model, ids, false).hidden.at(0);
    const float* got = reinterpret_cast<const float*>(x.data) + i * 128;
    const int64_t L = model->num_layers();
    double moved = 0.0;
    for (int k = 0; k < 128; ++k) {
      ASSERT_FLOAT_EQ(got[k], unmasked[L * 128 + k]) << i << " " << k;
      moved = std::max(moved, double(std::abs(masked[L * 128 + k] - unmasked[L * 128 + k])));
    }
    EXPECT_GT(moved, 1e-3);
  }
}

}  // namespace
}  // namespace amalgam::infer
