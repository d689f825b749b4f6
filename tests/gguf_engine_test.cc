// The engine runs GGUF files as stored: quantised matrices stay in their block types and are
// dequantised block by block inside the products. Their logits must equal those of the same file
// dequantised to F32 as a whole at load (the values the file holds), on the prefill path (many
// rows: oneDNN on dequantised blocks) and the decode path (few rows: gemv on dequantised rows).
#include <gtest/gtest.h>

#include <cmath>

#include "gguf/export.h"
#include "gguf/import.h"
#include "infer/gemm.h"
#include "infer/model.h"
#include "test_util.h"

namespace amalgam {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::zoo;

// Logits of every position of `ids` (one forward pass: prefill) and of the last one decoded
// token by token (decode path).
struct Logits {
  std::vector<float> prefill, decode;
};

Logits run(const infer::Model& m, const std::vector<int32_t>& ids) {
  Logits out;
  {
    infer::Batch b;
    for (size_t i = 0; i < ids.size(); ++i) b.add(ids[i], static_cast<int32_t>(i), 0, true);
    auto cache = m.new_cache();
    out.prefill = m.forward(b, cache).logits;
  }
  auto cache = m.new_cache();
  for (size_t i = 0; i < ids.size(); ++i) {
    infer::Batch b;
    b.add(ids[i], static_cast<int32_t>(i), 0, true);
    out.decode = m.forward(b, cache).logits;
  }
  return out;
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

TEST(GgufEngine, QuantisedFilesRunAsStoredGiveTheirDequantisedLogits) {
  const testing::Fp32Products fp32;  // exact arithmetic: see testing::Fp32Products
  TempDir dir;
  const std::vector<int32_t> ids = {0, 17, 301, 5, 999, 42, 7, 64, 128, 3, 250, 11, 90, 33};
  for (const std::string t : {"q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "f16", "bf16"}) {
    gguf::ExportOptions o;
    o.type = *gguf::parse_export_type(t);
    const fs::path out = dir / (t + ".gguf");
    gguf::export_gguf(zoo("base"), out, o);
    auto stored = infer::load_model(out);
    if (t != "f16" && t != "bf16") {
      EXPECT_FALSE(stored->weights().layers[0].q.w.quant == std::nullopt) << t;
    }
    gguf::ImportedModel g = gguf::import_gguf(out);  // every matrix dequantised to F32
    infer::Model dequantised(g.config, infer::WeightMap(g.views.begin(), g.views.end()),
                             g.storage);
    const Logits a = run(*stored, ids), b = run(dequantised, ids);
    EXPECT_LT(max_diff(a.prefill, b.prefill), 1e-4f) << t;
    EXPECT_LT(max_diff(a.decode, b.decode), 1e-4f) << t;
  }
}

// With BF16 products (where the CPU has them) the quantised file still scores within a small
// distance of its dequantised values: weights and activations rounded to BF16, fp32 sums.
TEST(GgufEngine, NativeBf16ProductsStayCloseToFp32) {
  if (!infer::cpu_has_native_bf16()) GTEST_SKIP() << "this CPU has no native BF16 products";
  TempDir dir;
  const std::vector<int32_t> ids = {0, 17, 301, 5, 999, 42, 7, 64, 128, 3, 250, 11, 90, 33};
  gguf::ExportOptions o;
  o.type = *gguf::parse_export_type("q8_0");
  const fs::path out = dir / "q8_0.gguf";
  gguf::export_gguf(zoo("base"), out, o);
  auto m = infer::load_model(out);
  infer::set_reduced_precision_products(false);
  const Logits fp32 = run(*m, ids);
  infer::set_reduced_precision_products(true);
  const Logits bf16 = run(*m, ids);
  infer::set_reduced_precision_products(false);
  const float d = max_diff(fp32.prefill, bf16.prefill);
  RecordProperty("q8_0_bf16_vs_fp32_max_logit_diff", std::to_string(d));
  EXPECT_GT(d, 0.0f);  // the path was taken
  EXPECT_LT(d, 0.25f);  // logits span about +-20; measured 0.11
  // Decode multiplies quantised weights by activations quantised to 8 bits (integer products,
  // infer/quant_dot.h; a step of max|x| / 127 per block of 32, where BF16 rounds each value to
  // 2^-9 relative), prefill by BF16-rounded ones: the last position agrees within the sum of the
  // two roundings' noise (measured 0.093), and decode stays as close to fp32 as prefill does
  // (measured 0.098).
  const std::vector<float> last(bf16.prefill.end() - bf16.decode.size(), bf16.prefill.end());
  const float pd = max_diff(last, bf16.decode), dd = max_diff(fp32.decode, bf16.decode);
  RecordProperty("q8_0_prefill_vs_decode_max_logit_diff", std::to_string(pd));
  RecordProperty("q8_0_decode_vs_fp32_max_logit_diff", std::to_string(dd));
  EXPECT_LT(pd, 0.25f);
  EXPECT_GT(dd, 0.0f);  // decode rounds too
  EXPECT_LT(dd, 0.25f);
}

}  // namespace
}  // namespace amalgam
