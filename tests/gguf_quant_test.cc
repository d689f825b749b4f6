// ggml block types: amalgam's quantisers and dequantisers against a scalar decoder written here
// from the block definitions (ggml-common.h layouts), reference Q8_0 / Q4_0 quantisers written
// from their definitions, and error bounds on zoo tensors and on all-zero, constant and outlier
// rows. Compiled without FMA contraction, like src/gguf/quant.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/half.h"
#include "gguf/format.h"
#include "gguf/quant.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam {
namespace {

using gguf::GgmlType;

float h2f(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return core::f16_to_f32(v);
}

// Decoders from the block layouts, one element at a time (no shared code with quant.cc).
// Q8_0: {f16 d; int8 q[32]}            x = d q
// Q4_0: {f16 d; u8 qs[16]}             x = d (nibble - 8); element j < 16 low nibble of qs[j],
//                                      element j >= 16 high nibble of qs[j - 16]
// Q5_0: {f16 d; u32 qh; u8 qs[16]}    x = d (q - 16), q = nibble (as Q4_0) + 16 * bit j of qh
// Q5_1: {f16 d, m; u32 qh; u8 qs[16]} x = d q + m
// Q4_K: {f16 d, dmin; u8 scales[12]; u8 qs[128]}   256 elements, 8 groups of 32; group g has
//       6-bit scale sc_g and min m_g; x = d sc_g q - dmin m_g; 64-element chunk c holds groups
//       2c (low nibbles of qs[32c..32c+31]) and 2c+1 (high nibbles)
// Q5_K: as Q4_K plus qh[32] between scales and qs: bit (2c) of qh[l] is the fifth bit of element
//       l of group 2c, bit (2c + 1) of group 2c + 1
// Q6_K: {u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d}   16 groups of 16, x = d sc_g (q - 32)
void scale_min(const uint8_t* s, int g, int& sc, int& m) {
  if (g < 4) {
    sc = s[g] & 63;
    m = s[g + 4] & 63;
  } else {
    sc = (s[g + 4] & 15) | ((s[g - 4] >> 6) << 4);
    m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
  }
}

double decode(GgmlType t, const uint8_t* block, int i) {
  switch (t) {
    case GgmlType::kQ8_0:
      return h2f(block) * static_cast<int8_t>(block[2 + i]);
    case GgmlType::kQ4_0: {
      const int q = i < 16 ? (block[2 + i] & 15) : (block[2 + i - 16] >> 4);
      return h2f(block) * (q - 8);
    }
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1: {
      const bool m = t == GgmlType::kQ5_1;
      const uint8_t* qs = block + (m ? 8 : 6);
      uint32_t qh;
      std::memcpy(&qh, block + (m ? 4 : 2), 4);
      const int q = (i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4)) + 16 * ((qh >> i) & 1);
      return m ? static_cast<double>(h2f(block)) * q + h2f(block + 2) : h2f(block) * (q - 16.0);
    }
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K: {
      const bool five = t == GgmlType::kQ5_K;
      const int g = i / 32, l = i % 32, c = g / 2;
      const uint8_t* qs = block + (five ? 48 : 16);
      int q = g % 2 == 0 ? (qs[32 * c + l] & 15) : (qs[32 * c + l] >> 4);
      if (five && ((block[16 + l] >> g) & 1)) q += 16;
      int sc, m;
      scale_min(block + 4, g, sc, m);
      return static_cast<double>(h2f(block)) * sc * q - static_cast<double>(h2f(block + 2)) * m;
    }
    case GgmlType::kQ6_K: {
      // Element i: 128-chunk n, position within chunk p = 32 k + l (k = 0..3).
      const int n = i / 128, p = i % 128, k = p / 32, l = p % 32;
      const uint8_t* ql = block + 64 * n;
      const uint8_t* qh = block + 128 + 32 * n;
      const int low = k == 0   ? ql[l] & 15
                      : k == 1 ? ql[l + 32] & 15
                      : k == 2 ? ql[l] >> 4
                               : ql[l + 32] >> 4;
      const int high = (qh[l] >> (2 * k)) & 3;
      const int sc = static_cast<int8_t>(block[192 + i / 16]);
      return static_cast<double>(h2f(block + 208)) * sc * ((low | (high << 4)) - 32);
    }
    default:
      return 0;
  }
}

std::vector<double> decode_row(GgmlType t, const std::vector<uint8_t>& q, int64_t n) {
  const auto& tr = gguf::traits(t);
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    out[i] = decode(t, q.data() + (i / tr.block) * tr.block_bytes, static_cast<int>(i % tr.block));
  }
  return out;
}

std::vector<uint8_t> quantise(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(gguf::row_bytes(t, static_cast<int64_t>(x.size())));
  gguf::quantize_row(t, x.data(), static_cast<int64_t>(x.size()), q.data());
  return q;
}

// Q8_0 and Q4_0 from their definitions: d = amax / 127, q = round(x / d); Q4_0: d = m / -8
// where m is the element of largest magnitude, q = min(15, trunc(x / d + 8.5)).
std::vector<uint8_t> reference_q8_0(const std::vector<float>& x) {
  std::vector<uint8_t> out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127;
    const uint16_t dh = core::f32_to_f16(d);
    out.push_back(static_cast<uint8_t>(dh & 255));
    out.push_back(static_cast<uint8_t>(dh >> 8));
    for (int j = 0; j < 32; ++j) {
      out.push_back(
          static_cast<uint8_t>(static_cast<int8_t>(d == 0 ? 0 : std::round(x[b + j] * (1 / d)))));
    }
  }
  return out;
}

std::vector<uint8_t> reference_q4_0(const std::vector<float>& x) {
  std::vector<uint8_t> out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float m = 0;
    for (int j = 0; j < 32; ++j) {
      if (std::fabs(x[b + j]) > std::fabs(m)) m = x[b + j];
    }
    const float d = m / -8;
    const float id = d == 0 ? 0 : 1 / d;
    const uint16_t dh = core::f32_to_f16(d);
    out.push_back(static_cast<uint8_t>(dh & 255));
    out.push_back(static_cast<uint8_t>(dh >> 8));
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(x[b + j] * id + 8.5f));
      const int hi = std::min(15, static_cast<int>(x[b + j + 16] * id + 8.5f));
      out.push_back(static_cast<uint8_t>(lo | (hi << 4)));
    }
  }
  return out;
}

constexpr GgmlType kQuantTypes[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0,
                                    GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ5_K,
                                    GgmlType::kQ6_K};

// Zoo weights (bf16 -> f32) in rows of 512.
std::vector<std::vector<float>> zoo_rows() {
  io::Checkpoint ck(testing::zoo("base"));
  std::vector<std::vector<float>> rows;
  for (const char* name : {"model.layers.0.self_attn.q_proj.weight",
                           "model.layers.2.mlp.down_proj.weight", "model.embed_tokens.weight"}) {
    const tensor::Tensor t = ck.load_f32(name);
    for (size_t r = 0; r + 512 <= t.data.size() && rows.size() < 120; r += 512 * 7) {
      rows.emplace_back(t.data.begin() + static_cast<long>(r),
                        t.data.begin() + static_cast<long>(r) + 512);
    }
  }
  return rows;
}

TEST(GgufQuant, Q8_0AndQ4_0EqualTheirDefinitions) {
  for (const auto& row : zoo_rows()) {
    EXPECT_EQ(quantise(GgmlType::kQ8_0, row), reference_q8_0(row));
    EXPECT_EQ(quantise(GgmlType::kQ4_0, row), reference_q4_0(row));
  }
}

// Relative RMS error bounds on weight-like rows (measured: Q8_0 0.0055, Q4_0 0.087, Q5_0 0.043,
// Q5_1 0.038, Q4_K 0.072, Q5_K 0.037, Q6_K 0.018).
double rms_bound(GgmlType t) {
  switch (t) {
    case GgmlType::kQ8_0:
      return 0.01;
    case GgmlType::kQ4_0:
      return 0.12;
    case GgmlType::kQ5_0:
      return 0.06;
    case GgmlType::kQ5_1:
      return 0.05;
    case GgmlType::kQ4_K:
      return 0.10;
    case GgmlType::kQ5_K:
      return 0.05;
    case GgmlType::kQ6_K:
      return 0.025;
    default:
      return 0;
  }
}

TEST(GgufQuant, ZooRowsDecodeAsTheBlockDefinitionsSayWithinBounds) {
  const auto rows = zoo_rows();
  ASSERT_GT(rows.size(), 50u);
  for (GgmlType t : kQuantTypes) {
    double err2 = 0, ref2 = 0;
    for (const auto& row : rows) {
      const auto q = quantise(t, row);
      const auto mine = decode_row(t, q, 512);
      std::vector<float> theirs(512);
      gguf::dequantize_row(t, q.data(), 512, theirs.data());
      for (int i = 0; i < 512; ++i) {
        ASSERT_NEAR(theirs[i], mine[i], 1e-6 * (1 + std::fabs(mine[i]))) << gguf::type_name(t);
        err2 += (mine[i] - row[i]) * (mine[i] - row[i]);
        ref2 += static_cast<double>(row[i]) * row[i];
      }
    }
    const double rel = std::sqrt(err2 / ref2);
    RecordProperty(std::string(gguf::type_name(t)) + "_rel_rms_error", std::to_string(rel));
    std::printf("%s relative rms error %.4f\n", std::string(gguf::type_name(t)).c_str(), rel);
    EXPECT_LT(rel, rms_bound(t)) << gguf::type_name(t);
    EXPECT_GT(rel, rms_bound(t) / 20) << gguf::type_name(t);  // a no-op would pass the upper bound
  }
}

TEST(GgufQuant, ZeroConstantAndOutlierRows) {
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 0.01f);
  for (GgmlType t : kQuantTypes) {
    const std::string name(gguf::type_name(t));
    // All zeros decode to exact zeros.
    std::vector<float> zeros(512, 0.0f);
    for (double v : decode_row(t, quantise(t, zeros), 512)) ASSERT_EQ(v, 0.0) << name;
    // Constant rows (positive and negative) come back within half a percent.
    for (float c : {0.3f, -0.7f, 1e-3f}) {
      std::vector<float> row(512, c);
      for (double v : decode_row(t, quantise(t, row), 512)) {
        // K-quant super-block scales of tiny rows are f16 subnormals: coarser steps.
        const double tol = std::fabs(c) < 0.01f ? 3e-2 : 5e-3;
        ASSERT_NEAR(v, c, tol * std::fabs(c)) << name << " constant " << c;
      }
    }
    // One large outlier per block sets the scale and is kept within 2%; the rest stays bounded
    // by the step the outlier forces.
    std::vector<float> row(512);
    for (auto& v : row) v = noise(rng);
    for (size_t i = 3; i < row.size(); i += 256) row[i] = 10.0f;
    const auto out = decode_row(t, quantise(t, row), 512);
    for (size_t i = 0; i < row.size(); ++i) {
      if (row[i] == 10.0f) {
        EXPECT_NEAR(out[i], 10.0, 0.2) << name;
      } else {
        EXPECT_NEAR(out[i], row[i], 10.0 / 7) << name;
      }
    }
  }
}

TEST(GgufQuant, FloatTypesRoundTrip) {
  std::vector<float> row = {1.0f, -2.5f, 3.14159f, 65504.0f, 1e-8f, 0.0f, -0.0f, 1.0f / 3};
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16}) {
    std::vector<uint8_t> q(gguf::row_bytes(t, 8));
    gguf::quantize_row(t, row.data(), 8, q.data());
    std::vector<float> back(8);
    gguf::dequantize_row(t, q.data(), 8, back.data());
    for (size_t i = 0; i < row.size(); ++i) {
      const float expected = t == GgmlType::kF32   ? row[i]
                             : t == GgmlType::kF16 ? core::f16_to_f32(core::f32_to_f16(row[i]))
                                                   : core::bf16_to_f32(core::f32_to_bf16(row[i]));
      EXPECT_EQ(back[i], expected);
    }
  }
}

}  // namespace
}  // namespace amalgam
