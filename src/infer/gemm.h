// Dense matrix products of the engine's prefill, on oneDNN's matmul primitive. oneDNN picks its
// kernels from the CPU's features at run time (AVX2, AVX-512, AVX512-BF16, AMX), never from a list
// of CPU models, and through its public API only. Every call is single-threaded: the engine's
// thread pool hands each thread its own block of weight rows.
#pragma once

#include <cstdint>

namespace amalgam::infer {

// y (n, rows), contiguous = x (n, cols) . w (rows, cols)^T; all fp32.
void gemm_f32(int64_t n, int64_t rows, int64_t cols, const float* x, const float* w, float* y);

// The same with BF16 operands (raw bf16 bit patterns) and fp32 accumulation and output.
void gemm_bf16(int64_t n, int64_t rows, int64_t cols, const uint16_t* x, const uint16_t* w,
               float* y);

// Row-major C (m, n) = alpha * op(A) . op(B) + beta * C, op transposing when `trans_*`; fp32.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

// Whether this CPU multiplies BF16 natively (AVX512-BF16 or AMX).
bool cpu_has_native_bf16();

// Reduced-precision products, on by default (the CLI's --fp32-products turns them off), where
// the CPU has native BF16 (ignored elsewhere): BF16 weights, and quantised weights on prefill
// (dequantised block by block to BF16), multiply activations rounded to BF16; quantised weights
// on decode multiply activations quantised to 8 bits with integer dot products (quant_dot.h).
// Sums are fp32. About twice the prefill speed, three times the quantised decode speed. Off:
// every product is fp32 arithmetic on the stored values. F32 and F16 weights always take fp32
// products.
void set_reduced_precision_products(bool enabled);
bool reduced_precision_products();

}  // namespace amalgam::infer
