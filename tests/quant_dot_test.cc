// Integer dot products of quantised weights with 8-bit activations (infer/quant_dot.h): every
// GGUF block type on every kernel set this CPU runs, against an fp64 product of the dequantised
// weights and the dequantised quantised activations (so the integer arithmetic is checked to
// fp32 rounding), the SIMD variants against the scalar twin, and the decode path's products
// against fp32 products within the bound the 8-bit rounding of x allows.
#include "infer/quant_dot.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "gguf/format.h"
#include "gguf/quant.h"
#include "infer/gemm.h"
#include "infer/matmul.h"

namespace amalgam::infer {
namespace {

using gguf::GgmlType;

constexpr GgmlType kTypes[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0, GgmlType::kQ5_1,
                               GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

struct Quantised {
  std::vector<uint8_t> bytes;
  std::vector<double> values;  // the dequantised weights, (rows, cols)
};

// Gaussian values whose scale varies by column group, so blocks differ in range (and some
// activation blocks hold an outlier, as real hidden states do).
std::vector<float> random_values(int64_t n, uint32_t seed, float outlier) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = dist(rng) * (1.0f + 0.5f * ((i / 32) % 4));
  if (outlier != 0.0f) {
    for (int64_t i = 5; i < n; i += 97) v[i] *= outlier;
  }
  return v;
}

Quantised quantise(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  const std::vector<float> w = random_values(rows * cols, seed, 0.0f);
  const size_t rb = gguf::row_bytes(type, cols);
  Quantised q;
  q.bytes.resize(rb * rows);
  std::vector<float> back(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    gguf::quantize_row(type, w.data() + r * cols, cols, q.bytes.data() + r * rb);
    gguf::dequantize_row(type, q.bytes.data() + r * rb, cols, back.data());
    q.values.insert(q.values.end(), back.begin(), back.end());
  }
  return q;
}

struct Case {
  int64_t rows, cols;
};

std::vector<Case> cases(GgmlType type) {
  // Block counts that leave partial unrolled groups (7 blocks of 32) and several super-blocks.
  if (activation_block(type) == 32) return {{1, 32}, {5, 224}, {9, 2048}};
  return {{1, 256}, {5, 768}, {9, 2048}};
}

// The integer product equals the fp64 product of the values both operands hold, to fp32 rounding
// of the per-block scale products: 2e-6 of the sum of |terms| (measured at most 1e-7).
TEST(QuantDot, MatchesFp64ReferenceOnEveryKernelSet) {
  for (const QuantDotKernels* k : available_quant_dot()) {
    for (GgmlType type : kTypes) {
      for (const Case& c : cases(type)) {
        const Quantised w = quantise(type, c.rows, c.cols, 3);
        constexpr int kNx = 3;
        const std::vector<float> x = random_values(kNx * c.cols, 9, 8.0f);
        QuantizedActivations xq;
        quantize_activations(x.data(), kNx, c.cols, activation_block(type), &xq);
        const std::vector<float> xd = dequantize_activations(xq);
        std::vector<QuantRow> rows;
        for (int i = 0; i < kNx; ++i) rows.push_back(xq.row(i));
        const int64_t y_stride = c.rows + 1;
        std::vector<float> y(static_cast<size_t>(kNx * y_stride), -7.0f);
        ASSERT_TRUE(
            k->gemv(type, w.bytes.data(), c.rows, c.cols, rows.data(), kNx, y.data(), y_stride));
        double worst = 0;
        for (int i = 0; i < kNx; ++i) {
          for (int64_t r = 0; r < c.rows; ++r) {
            double ref = 0, mag = 0;
            for (int64_t j = 0; j < c.cols; ++j) {
              ref += w.values[r * c.cols + j] * xd[i * c.cols + j];
              mag += std::fabs(w.values[r * c.cols + j] * xd[i * c.cols + j]);
            }
            const double err = std::fabs(y[i * y_stride + r] - ref) / mag;
            worst = std::max(worst, err);
            EXPECT_LT(err, 2e-6) << k->name << " " << gguf::type_name(type) << " " << c.rows << "x"
                                 << c.cols << " row " << r << " input " << i;
          }
          EXPECT_EQ(y[i * y_stride + c.rows], -7.0f) << "wrote past its rows";
        }
        RecordProperty(std::string(k->name) + "_" + std::string(gguf::type_name(type)) + "_" +
                           std::to_string(c.cols),
                       fmt::format("{:.3g}", worst));
      }
    }
  }
}

// The SIMD variants compute the same integer sums as the scalar twin; only the fp32 order of
// the per-block terms differs: 1e-6 of the sum of |terms|.
TEST(QuantDot, SimdMatchesScalarTwin) {
  for (const QuantDotKernels* k : available_quant_dot()) {
    if (k == &scalar_quant_dot()) continue;
    for (GgmlType type : kTypes) {
      const int64_t rows = 17, cols = 2048;
      const Quantised w = quantise(type, rows, cols, 21);
      const std::vector<float> x = random_values(cols, 4, 4.0f);
      QuantizedActivations xq;
      quantize_activations(x.data(), 1, cols, activation_block(type), &xq);
      const std::vector<float> xd = dequantize_activations(xq);
      const QuantRow row = xq.row(0);
      std::vector<float> y(rows), ys(rows);
      ASSERT_TRUE(k->gemv(type, w.bytes.data(), rows, cols, &row, 1, y.data(), rows));
      ASSERT_TRUE(
          scalar_quant_dot().gemv(type, w.bytes.data(), rows, cols, &row, 1, ys.data(), rows));
      for (int64_t r = 0; r < rows; ++r) {
        double mag = 0;
        for (int64_t j = 0; j < cols; ++j) mag += std::fabs(w.values[r * cols + j] * xd[j]);
        EXPECT_LE(std::fabs(y[r] - ys[r]), 1e-6 * mag)
            << k->name << " " << gguf::type_name(type) << " row " << r;
      }
    }
  }
}

TEST(QuantDot, UnquantisedTypesHaveNoIntegerKernel) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16}) {
    EXPECT_EQ(activation_block(type), 0);
    for (const QuantDotKernels* k : available_quant_dot()) {
      EXPECT_FALSE(k->gemv(type, nullptr, 0, 0, nullptr, 0, nullptr, 0)) << k->name;
    }
  }
}

// Quantised activations: d = max|x| / 127 per block, values round(x / d), exact group sums, and
// every value within d / 2 of x.
TEST(QuantDot, ActivationsRoundToTheirBlockScale) {
  const std::vector<float> x = random_values(2 * 512, 5, 8.0f);
  for (int block : {32, 256}) {
    QuantizedActivations xq;
    quantize_activations(x.data(), 2, 512, block, &xq);
    const std::vector<float> xd = dequantize_activations(xq);
    for (size_t b = 0; b < xq.d.size(); ++b) {
      double amax = 0;
      for (int j = 0; j < block; ++j) amax = std::max<double>(amax, std::fabs(x[b * block + j]));
      EXPECT_NEAR(xq.d[b], amax / 127, 1e-6 * amax);
      for (int j = 0; j < block; ++j) {
        EXPECT_LE(std::fabs(xd[b * block + j] - x[b * block + j]), xq.d[b] * 0.5001);
      }
    }
    for (size_t g = 0; g < xq.sums.size(); ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += xq.q[16 * g + j];
      EXPECT_EQ(xq.sums[g], s);
    }
  }
  QuantizedActivations xq;
  EXPECT_THROW(quantize_activations(x.data(), 1, 100, 32, &xq), std::exception);
}

// End to end through matmul's decode path with the reduced-precision switch on: every product is
// within the bound the 8-bit rounding of x allows, sum_j |w_j| d_b(j) / 2 (each activation moves
// by at most half its block's step d_b = max|x| / 127), and the rms error is what independent
// rounding errors, uniform in +-d_b / 2, predict: sum_j w_j^2 d_b(j)^2 / 12 per product. Measured
// within 10% of the prediction: 0.72% of the rms product with blocks of 32, 1.2% with blocks of 256
// (these activations hold outliers of 4x every 97 values, so the larger blocks' steps are
// coarser); tolerance: 0.7x to 1.3x the prediction.
TEST(QuantDot, DecodeProductsStayWithinTheActivationRoundingOfFp32) {
  if (!cpu_has_native_bf16()) GTEST_SKIP() << "the reduced-precision switch needs native BF16";
  for (GgmlType type : kTypes) {
    const int64_t rows = 96, cols = 1024;
    const Quantised w = quantise(type, rows, cols, 13);
    WeightMatrix m{tensor::DType::kF32, w.bytes.data(), rows, cols, type};
    for (int64_t n : {1, 3, 8}) {
      const std::vector<float> x = random_values(n * cols, 17, 4.0f);
      std::vector<float> y_fp32(static_cast<size_t>(n * rows)), y_int(y_fp32.size());
      set_reduced_precision_products(false);
      matmul(m, x.data(), n, y_fp32.data());
      set_reduced_precision_products(true);
      matmul(m, x.data(), n, y_int.data());
      set_reduced_precision_products(false);
      QuantizedActivations xq;
      quantize_activations(x.data(), n, cols, activation_block(type), &xq);
      double err2 = 0, predicted2 = 0, ref2 = 0;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          double bound = 0, mag = 0;
          for (int64_t j = 0; j < cols; ++j) {
            const double wj = w.values[r * cols + j];
            const double step = xq.d[(i * cols + j) / xq.block];
            bound += std::fabs(wj) * step / 2;
            predicted2 += wj * wj * step * step / 12;
            mag += std::fabs(wj * x[i * cols + j]);
          }
          const double e = y_int[i * rows + r] - y_fp32[i * rows + r];
          EXPECT_LE(std::fabs(e), bound + 1e-5 * mag) << gguf::type_name(type) << " n " << n;
          err2 += e * e;
          ref2 += static_cast<double>(y_fp32[i * rows + r]) * y_fp32[i * rows + r];
        }
      }
      const double rel = std::sqrt(err2 / ref2), predicted = std::sqrt(predicted2 / ref2);
      RecordProperty("rms_rel_" + std::string(gguf::type_name(type)) + "_n" + std::to_string(n),
                     fmt::format("{:.4g} (predicted {:.4g})", rel, predicted));
      EXPECT_GT(rel, 0.7 * predicted) << gguf::type_name(type) << " n " << n;
      EXPECT_LT(rel, 1.3 * predicted) << gguf::type_name(type) << " n " << n;
    }
  }
}

}  // namespace
}  // namespace amalgam::infer
