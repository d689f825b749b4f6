// BF16 weights times BF16 activations through AVX512-BF16's dot-product instruction (vdpbf16ps:
// each fp32 lane adds the two products of a pair of BF16 values, exactly, to its accumulator).
// Decode of BF16 weights with reduced-precision products: the weights go to the multiplier as
// stored, with no widening, which is what holds the fp32-widening gemv below the memory bandwidth
// (measured: one 2048-wide BF16 matrix streamed at the read bandwidth instead of ~80% of it).
// GCC 12 reports its own intrinsic headers' "undefined register" idiom as uninitialised use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "infer/kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

namespace amalgam::infer {
namespace {

constexpr int kRowBlock = 4;
constexpr int64_t kPairs = 32;  // BF16 values per register: 16 pairs

float widen(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// RB rows against NX inputs; prefetches the same columns of the next RB rows (see the fp32
// kernels in kernels_simd.inc for why).
template <int NX, int RB>
void rows_bf16(const uint16_t* w, int64_t r0, int64_t cols, const uint16_t* x, int64_t x_stride,
               float* y, int64_t y_stride, bool prefetch) {
  __m512 acc[RB][NX];
  for (int b = 0; b < RB; ++b)
    for (int i = 0; i < NX; ++i) acc[b][i] = _mm512_setzero_ps();
  const uint16_t* rows[RB];
  for (int b = 0; b < RB; ++b) rows[b] = w + (r0 + b) * cols;
  int64_t c = 0;
  for (; c + kPairs <= cols; c += kPairs) {
    if (prefetch) {
      for (int b = 0; b < RB; ++b) {
        _mm_prefetch(reinterpret_cast<const char*>(rows[b] + RB * cols + c), _MM_HINT_T0);
      }
    }
    __m512bh xv[NX];
    for (int i = 0; i < NX; ++i) xv[i] = (__m512bh)_mm512_loadu_si512(x + i * x_stride + c);
    for (int b = 0; b < RB; ++b) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(rows[b] + c);
      for (int i = 0; i < NX; ++i) acc[b][i] = _mm512_dpbf16_ps(acc[b][i], wv, xv[i]);
    }
  }
  for (int b = 0; b < RB; ++b) {
    for (int i = 0; i < NX; ++i) {
      float tail = 0.0f;
      for (int64_t t = c; t < cols; ++t) tail += widen(rows[b][t]) * widen(x[i * x_stride + t]);
      y[i * y_stride + r0 + b] = _mm512_reduce_add_ps(acc[b][i]) + tail;
    }
  }
}

template <int NX>
void gemv_nx(const uint16_t* w, int64_t rows, int64_t cols, const uint16_t* x, int64_t x_stride,
             float* y, int64_t y_stride) {
  int64_t r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock) {
    const bool prefetch = r + 2 * kRowBlock <= rows;  // never touch memory past the matrix
    rows_bf16<NX, kRowBlock>(w, r, cols, x, x_stride, y, y_stride, prefetch);
  }
  for (; r < rows; ++r) rows_bf16<NX, 1>(w, r, cols, x, x_stride, y, y_stride, false);
}

void gemv_bf16_dot(const uint8_t* w, int64_t rows, int64_t cols, const uint16_t* x, int nx,
                   int64_t x_stride, float* y, int64_t y_stride) {
  const auto* wb = reinterpret_cast<const uint16_t*>(w);
  switch (nx) {
    case 1: return gemv_nx<1>(wb, rows, cols, x, x_stride, y, y_stride);
    case 2: return gemv_nx<2>(wb, rows, cols, x, x_stride, y, y_stride);
    case 3: return gemv_nx<3>(wb, rows, cols, x, x_stride, y, y_stride);
    default: return gemv_nx<4>(wb, rows, cols, x, x_stride, y, y_stride);
  }
}

}  // namespace

GemvBF16Dot gemv_bf16_dot_kernel() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return has ? gemv_bf16_dot : nullptr;
}

}  // namespace amalgam::infer

#pragma GCC pop_options
