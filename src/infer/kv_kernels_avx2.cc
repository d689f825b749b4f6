// AVX2+FMA+F16C variant of the KV-cache kernels (8 floats per register).
// GCC 12 reports its own intrinsic headers' "undefined register" idiom as uninitialised use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstdint>

#include "infer/kv_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace amalgam::infer {
namespace {

using Reg = __m256;
constexpr int kWidth = 8;
inline Reg vzero() { return _mm256_setzero_ps(); }
inline Reg vset1(float x) { return _mm256_set1_ps(x); }
inline Reg vload_f32(const float* p) { return _mm256_loadu_ps(p); }
inline Reg vload_bf16(const uint8_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline Reg vload_f16(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline Reg vfma(Reg a, Reg b, Reg acc) { return _mm256_fmadd_ps(a, b, acc); }
inline float vsum(Reg v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline void vstore(float* p, Reg v) { _mm256_storeu_ps(p, v); }
inline Reg vmul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
// Lane r of the result = the sum of the lanes of v[r], for r < 8: a transpose-and-add tree.
inline Reg vsum_tile(const Reg* v) {
  Reg p[4], q[2];
  for (int k = 0; k < 4; ++k) {  // per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3
    p[k] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                         _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  }
  for (int k = 0; k < 2; ++k) {  // per 128-bit lane: the lane's sums of v[4k .. 4k+3]
    q[k] = _mm256_add_ps(_mm256_shuffle_ps(p[2 * k], p[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(p[2 * k], p[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm256_add_ps(_mm256_permute2f128_ps(q[0], q[1], 0x20),
                       _mm256_permute2f128_ps(q[0], q[1], 0x31));
}

#include "infer/kv_kernels_simd.inc"

}  // namespace

const KVKernelSet& kv_avx2_kernels() {
  static const KVKernelSet set{"avx2", kv_dot_rows_any, kv_add_rows_any, kv_widen_rows_any};
  return set;
}

}  // namespace amalgam::infer

#pragma GCC pop_options
