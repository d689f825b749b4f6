// AVX512-VNNI variant of the integer dot products (256-bit registers, AVX512-VL encodings):
// u8 x s8 products summed four at a time straight into int32 by `vpdpbusd`, int16 pairs by
// `vpdpwssd`, one instruction each instead of two or three.
// GCC 12 reports its own intrinsic headers' "undefined register" idiom as uninitialised use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstdint>

#include "gguf/format.h"
#include "infer/quant_dot.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")

namespace amalgam::infer {
namespace {

inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(acc, u, s);
}

inline __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
  return _mm256_dpwssd_epi32(acc, a, b);
}

#include "infer/quant_dot_simd.inc"

}  // namespace

const QuantDotKernels& vnni_quant_dot() {
  static const QuantDotKernels set{"avx512vnni", gemv};
  return set;
}

}  // namespace amalgam::infer

#pragma GCC pop_options
