// Weight-reading kernels of the inference engine. Weights stay in their stored dtype (F32, BF16
// or F16) and are widened to fp32 in registers; all arithmetic is fp32. Each kernel exists as a
// scalar twin (the reference) and as SIMD variants (AVX2+FMA+F16C, AVX-512) compiled with
// per-file target options and chosen at run time, so every variant can be tested on any machine
// that can run it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tensor/dtype.h"

namespace amalgam::infer {

// Maximum number of input vectors one gemv call handles (their weight rows are read once).
inline constexpr int kGemvMaxInputs = 4;

struct KernelSet {
  std::string_view name;  // "scalar", "avx2", "avx512"
  // y[i * y_stride + r] = dot(w[r, :], x[i * x_stride + :]) for r < rows, i < nx (nx <= 4).
  // w (rows, cols) row-major in `dtype`; x (nx, cols) fp32; y (nx, rows) fp32.
  void (*gemv)(tensor::DType dtype, const uint8_t* w, int64_t rows, int64_t cols, const float* x,
               int nx, int64_t x_stride, float* y, int64_t y_stride);
  // dst[i] = float(src[i]) for i < n.
  void (*to_f32)(tensor::DType dtype, const uint8_t* src, float* dst, int64_t n);
};

const KernelSet& scalar_kernels();
// The fastest kernel set this CPU supports.
const KernelSet& best_kernels();
// Every kernel set this CPU can run (scalar first); for tests comparing them.
std::vector<const KernelSet*> available_kernel_sets();

// y[i * y_stride + r] = dot(w[r, :], x[i * x_stride + :]) for BF16 weights and BF16 activations
// (raw bit patterns), nx <= kGemvMaxInputs: products exact, summed in fp32 in pairs
// (denormal operands count as zero). For activations already rounded to BF16 (reduced-precision
// products), where it equals gemv on the rounded activations up to the order of the sums.
using GemvBF16Dot = void (*)(const uint8_t* w, int64_t rows, int64_t cols, const uint16_t* x,
                             int nx, int64_t x_stride, float* y, int64_t y_stride);
// The AVX512-BF16 kernel (kernels_bf16dot.cc), or null where the CPU lacks the instruction.
GemvBF16Dot gemv_bf16_dot_kernel();

// Variant tables, defined in kernels_avx2.cc / kernels_avx512.cc; call only if supported.
const KernelSet& avx2_kernels();
const KernelSet& avx512_kernels();

}  // namespace amalgam::infer
