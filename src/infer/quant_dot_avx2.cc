// AVX2 variant of the integer dot products: u8 x s8 products through `maddubs` (pairs to int16)
// and `madd` (pairs to int32).
// GCC 12 reports its own intrinsic headers' "undefined register" idiom as uninitialised use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstdint>

#include "gguf/format.h"
#include "infer/quant_dot.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace amalgam::infer {
namespace {

inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  const __m256i pairs = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

inline __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}

#include "infer/quant_dot_simd.inc"

}  // namespace

const QuantDotKernels& avx2_quant_dot() {
  static const QuantDotKernels set{"avx2", gemv};
  return set;
}

}  // namespace amalgam::infer

#pragma GCC pop_options
