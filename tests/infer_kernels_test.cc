// SIMD kernels against their scalar twins, and both matmul paths (gemv, blocked oneDNN) against
// a plain fp64 product.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "gguf/format.h"
#include "gguf/quant.h"
#include "infer/gemm.h"
#include "infer/kernels.h"
#include "infer/matmul.h"
#include "infer/ops.h"
#include "infer/quant_dot.h"
#include "infer/thread_pool.h"
#include "tensor/tensor.h"

namespace amalgam::infer {
namespace {

using tensor::DType;

struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<double> values;  // exactly the stored values
};

Weights random_weights(DType dtype, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  tensor::Tensor t({n});
  for (float& v : t.data) v = dist(rng);
  Weights w;
  w.bytes = tensor::encode(t, dtype);
  tensor::Tensor back({n});
  tensor::to_f32(dtype, w.bytes.data(), back.data.data(), static_cast<size_t>(n));
  w.values.assign(back.data.begin(), back.data.end());
  return w;
}

std::vector<float> random_vector(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

constexpr DType kTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

TEST(Kernels, ScalarTwinIsAlwaysAvailable) {
  auto sets = available_kernel_sets();
  ASSERT_FALSE(sets.empty());
  EXPECT_EQ(sets[0]->name, "scalar");
  EXPECT_NE(&best_kernels(), nullptr);
}

// Every SIMD gemv against the scalar gemv, for all dtypes, 1..4 inputs, row counts that leave
// partial row blocks and column counts that leave partial vectors. Both sum the same products
// in fp32 in different orders: tolerance 1e-5 relative to the sum of |products|.
TEST(Kernels, GemvMatchesScalarTwin) {
  const int64_t shapes[][2] = {{1, 1}, {5, 7}, {16, 64}, {37, 67}, {64, 256}, {9, 1000}};
  for (const KernelSet* k : available_kernel_sets()) {
    for (DType dtype : kTypes) {
      for (const auto& shape : shapes) {
        const int64_t rows = shape[0], cols = shape[1];
        Weights w = random_weights(dtype, rows * cols, 7);
        for (int nx = 1; nx <= kGemvMaxInputs; ++nx) {
          const int64_t x_stride = cols + 3, y_stride = rows + 2;
          std::vector<float> x = random_vector(nx * x_stride, 11);
          std::vector<float> y(static_cast<size_t>(nx * y_stride), -1.0f), ys = y;
          k->gemv(dtype, w.bytes.data(), rows, cols, x.data(), nx, x_stride, y.data(), y_stride);
          scalar_kernels().gemv(dtype, w.bytes.data(), rows, cols, x.data(), nx, x_stride,
                                ys.data(), y_stride);
          for (int i = 0; i < nx; ++i) {
            for (int64_t r = 0; r < rows; ++r) {
              double mag = 0.0;
              for (int64_t c = 0; c < cols; ++c) {
                mag += std::abs(w.values[r * cols + c] * x[i * x_stride + c]);
              }
              EXPECT_NEAR(y[i * y_stride + r], ys[i * y_stride + r], 1e-5 * (mag + 1e-3))
                  << k->name << " " << tensor::dtype_name(dtype) << " " << rows << "x" << cols
                  << " nx=" << nx << " i=" << i << " r=" << r;
            }
            // Padding between rows of y is left alone.
            for (int64_t r = rows; r < y_stride; ++r) EXPECT_EQ(y[i * y_stride + r], -1.0f);
          }
        }
      }
    }
  }
}

// The AVX512-BF16 dot-product gemv against an fp64 reference of the same BF16 operands: the
// products are exact, only the fp32 sums differ (1e-5 relative to the sum of |products|).
TEST(Kernels, BF16DotGemvMatchesAnFp64Reference) {
  const GemvBF16Dot dot = gemv_bf16_dot_kernel();
  if (dot == nullptr) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  const int64_t shapes[][2] = {{1, 1}, {5, 7}, {16, 64}, {37, 67}, {64, 256}, {9, 1000}};
  for (const auto& shape : shapes) {
    const int64_t rows = shape[0], cols = shape[1];
    Weights w = random_weights(DType::kBF16, rows * cols, 7);
    for (int nx = 1; nx <= kGemvMaxInputs; ++nx) {
      const int64_t x_stride = cols + 3, y_stride = rows + 2;
      const std::vector<float> xf = random_vector(nx * x_stride, 11);
      std::vector<uint16_t> x(xf.size());
      for (size_t i = 0; i < xf.size(); ++i) x[i] = core::f32_to_bf16(xf[i]);
      std::vector<float> y(static_cast<size_t>(nx * y_stride), -1.0f);
      dot(w.bytes.data(), rows, cols, x.data(), nx, x_stride, y.data(), y_stride);
      for (int i = 0; i < nx; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          double ref = 0.0, mag = 0.0;
          for (int64_t c = 0; c < cols; ++c) {
            const double p = w.values[r * cols + c] * core::bf16_to_f32(x[i * x_stride + c]);
            ref += p;
            mag += std::abs(p);
          }
          EXPECT_NEAR(y[i * y_stride + r], ref, 1e-5 * (mag + 1e-3))
              << rows << "x" << cols << " nx=" << nx << " i=" << i << " r=" << r;
        }
        for (int64_t r = rows; r < y_stride; ++r) EXPECT_EQ(y[i * y_stride + r], -1.0f);
      }
    }
  }
}

// Widening is exact: every variant must reproduce the scalar conversion bit for bit.
TEST(Kernels, ToF32MatchesScalarTwinExactly) {
  for (const KernelSet* k : available_kernel_sets()) {
    for (DType dtype : kTypes) {
      for (int64_t n : {1, 15, 16, 17, 100, 1027}) {
        Weights w = random_weights(dtype, n, 3);
        std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
        k->to_f32(dtype, w.bytes.data(), a.data(), n);
        scalar_kernels().to_f32(dtype, w.bytes.data(), b.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          EXPECT_EQ(a[i], b[i]) << k->name << " " << tensor::dtype_name(dtype) << " " << i;
          EXPECT_EQ(a[i], static_cast<float>(w.values[i]));
        }
      }
    }
  }
}

// matmul over the gemv path (n <= kGemvMaxRows) and the blocked oneDNN path (more rows), with 1
// and 2 threads, with and without BF16 products, against an fp64 product. Tolerance 1e-5
// relative to the sum of |products|. BF16 products multiply x rounded to BF16 on both paths: the
// reference rounds x the same way, so the test also proves the accumulation is fp32.
TEST(Matmul, BothPathsMatchDoubleReference) {
  const int64_t rows = 300, cols = 129;  // several product blocks, the last one partial
  for (bool bf16 : {true, false}) {
    set_reduced_precision_products(bf16);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (DType dtype : kTypes) {
        Weights w = random_weights(dtype, rows * cols, 5);
        WeightMatrix m{dtype, w.bytes.data(), rows, cols};
        for (int64_t n : {1, 3, 5, 8, 9, 33}) {
          std::vector<float> x = random_vector(n * cols, 9);
          std::vector<float> y(static_cast<size_t>(n * rows));
          matmul(m, x.data(), n, y.data());
          const bool rounded_x = dtype == DType::kBF16 && reduced_precision_products();
          for (int64_t t = 0; t < n; ++t) {
            for (int64_t r = 0; r < rows; ++r) {
              double ref = 0.0, mag = 0.0;
              for (int64_t c = 0; c < cols; ++c) {
                float xv = x[t * cols + c];
                if (rounded_x) xv = core::bf16_to_f32(core::f32_to_bf16(xv));
                ref += w.values[r * cols + c] * xv;
                mag += std::abs(w.values[r * cols + c] * xv);
              }
              ASSERT_NEAR(y[t * rows + r], ref, 1e-5 * mag)
                  << tensor::dtype_name(dtype) << " threads=" << threads << " n=" << n
                  << " bf16=" << bf16;
            }
          }
        }
      }
    }
  }
  set_reduced_precision_products(false);
  set_num_threads(2);
}

// Matrices in GGUF block types, multiplied block by block on both paths, against an fp64 product
// of their dequantised values (and, with BF16 products, of those values and x rounded to BF16,
// which is what both paths then multiply).
TEST(Matmul, QuantisedMatricesMatchTheirDequantisedValues) {
  const int64_t rows = 272, cols = 512;  // K-quant rows are whole super-blocks of 256
  using gguf::GgmlType;
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0, GgmlType::kQ5_1,
                        GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    const std::vector<float> src = random_vector(rows * cols, 11);
    const uint64_t rb = gguf::row_bytes(type, cols);
    std::vector<uint8_t> bytes(static_cast<size_t>(rows * rb));
    std::vector<float> values(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      gguf::quantize_row(type, src.data() + r * cols, cols, bytes.data() + r * rb);
      gguf::dequantize_row(type, bytes.data() + r * rb, cols, values.data() + r * cols);
    }
    const WeightMatrix m = quantized_matrix({type, rows, cols, bytes.data()});
    EXPECT_EQ(m.row_bytes(), rb);
    std::vector<float> row(static_cast<size_t>(cols));
    rows_to_f32(m, 7, 1, row.data());
    EXPECT_EQ(0, std::memcmp(row.data(), values.data() + 7 * cols, cols * sizeof(float)));
    for (bool bf16 : {true, false}) {
      set_reduced_precision_products(bf16);
      for (int64_t n : {1, 5, 9, 40}) {
        std::vector<float> x = random_vector(n * cols, 13);
        std::vector<float> y(static_cast<size_t>(n * rows));
        matmul(m, x.data(), n, y.data());
        const bool rounded = reduced_precision_products();
        // Reduced precision: decode multiplies x quantised to 8 bits by the weights as stored
        // (integer products, infer/quant_dot.h), prefill rounds both operands to BF16.
        const bool integer = rounded && n <= kGemvMaxRows;
        std::vector<float> xr(x);
        if (integer) {
          QuantizedActivations xq;
          quantize_activations(x.data(), n, cols, activation_block(type), &xq);
          xr = dequantize_activations(xq);
        }
        auto r16 = [&](float v) {
          return rounded && !integer ? core::bf16_to_f32(core::f32_to_bf16(v)) : v;
        };
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t r = 0; r < rows; ++r) {
            double ref = 0.0, mag = 0.0;
            for (int64_t c = 0; c < cols; ++c) {
              const double p = double{r16(values[r * cols + c])} * r16(xr[t * cols + c]);
              ref += p;
              mag += std::abs(p);
            }
            ASSERT_NEAR(y[t * rows + r], ref, 1e-5 * mag)
                << gguf::type_name(type) << " n=" << n << " bf16=" << bf16;
          }
        }
      }
    }
    set_reduced_precision_products(false);
  }
}

// Several products in one region give exactly the results of separate calls (each output row
// is computed by the same kernel call sequence either way).
TEST(Matmul, ManyJobsEqualSeparateCalls) {
  const int64_t cols = 96;
  Weights a = random_weights(DType::kBF16, 200 * cols, 1),
          b = random_weights(DType::kBF16, 40 * cols, 2);
  WeightMatrix ma{DType::kBF16, a.bytes.data(), 200, cols},
      mb{DType::kBF16, b.bytes.data(), 40, cols};
  for (int64_t n : {1, 4, 7, 20}) {
    std::vector<float> x = random_vector(n * cols, 3);
    std::vector<float> ya(n * 200), yb(n * 40), ya2(n * 200), yb2(n * 40);
    matmul(ma, x.data(), n, ya.data());
    matmul(mb, x.data(), n, yb.data());
    const MatmulJob jobs[] = {{ma, ya2.data()}, {mb, yb2.data()}};
    matmul_many(jobs, x.data(), n);
    EXPECT_EQ(ya, ya2) << n;
    EXPECT_EQ(yb, yb2) << n;
  }
}

TEST(Ops, ExpApproxIsAccurateOverTheFloatRange) {
  double worst = 0.0;
  for (double x = -87.0; x <= 88.3; x += 0.001) {
    const double exact = std::exp(static_cast<double>(static_cast<float>(x)));
    const double approx = exp_approx(static_cast<float>(x));
    worst = std::max(worst, std::abs(approx - exact) / exact);
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_EQ(exp_approx(0.0f), 1.0f);
  EXPECT_LT(exp_approx(-1000.0f), 1e-37f);
  EXPECT_TRUE(std::isfinite(exp_approx(1000.0f)));
}

TEST(Matmul, SlicesOfStacksAddressTheRightRows) {
  Weights w = random_weights(DType::kBF16, 3 * 4 * 5, 1);
  tensor::TensorView view{DType::kBF16, {3, 4, 5}, w.bytes.data()};
  WeightMatrix second = weight_matrix_of_stack(view, 1, "stack");
  EXPECT_EQ(second.rows, 4);
  EXPECT_EQ(second.cols, 5);
  WeightMatrix rows = second.slice_rows(2, 2);
  std::vector<float> x(5, 0.0f);
  x[3] = 1.0f;  // picks column 3
  std::vector<float> y(2);
  matmul(rows, x.data(), 1, y.data());
  EXPECT_EQ(y[0], static_cast<float>(w.values[1 * 20 + 2 * 5 + 3]));
  EXPECT_EQ(y[1], static_cast<float>(w.values[1 * 20 + 3 * 5 + 3]));
  EXPECT_THROW(weight_matrix_of_stack(view, 3, "stack"), Error);
  EXPECT_THROW(second.slice_rows(3, 2), Error);
}

}  // namespace
}  // namespace amalgam::infer
