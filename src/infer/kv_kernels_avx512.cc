// AVX-512 variant of the KV-cache kernels (16 floats per register).
// GCC 12 reports its own intrinsic headers' "undefined register" idiom as uninitialised use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <cstdint>

#include "infer/kv_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")

namespace amalgam::infer {
namespace {

using Reg = __m512;
constexpr int kWidth = 16;
inline Reg vzero() { return _mm512_setzero_ps(); }
inline Reg vset1(float x) { return _mm512_set1_ps(x); }
inline Reg vload_f32(const float* p) { return _mm512_loadu_ps(p); }
inline Reg vload_bf16(const uint8_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline Reg vload_f16(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline Reg vfma(Reg a, Reg b, Reg acc) { return _mm512_fmadd_ps(a, b, acc); }
inline float vsum(Reg v) { return _mm512_reduce_add_ps(v); }
inline void vstore(float* p, Reg v) { _mm512_storeu_ps(p, v); }
inline Reg vmul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
// Lane r of the result = the sum of the lanes of v[r], for r < 16: a transpose-and-add tree,
// 45 instructions for 16 sums instead of 16 separate horizontal reductions.
inline Reg vsum_tile(const Reg* v) {
  Reg p[8], q[4], r[2];
  for (int k = 0; k < 8; ++k) {  // per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3
    p[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                         _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  }
  for (int k = 0; k < 4; ++k) {  // per 128-bit lane: the lane's sums of v[4k .. 4k+3]
    q[k] = _mm512_add_ps(_mm512_shuffle_ps(p[2 * k], p[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(p[2 * k], p[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int k = 0; k < 2; ++k) {  // 128-bit lanes: halves of v[8k .. 8k+3] and of v[8k+4 .. 8k+7]
    r[k] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

#include "infer/kv_kernels_simd.inc"

}  // namespace

const KVKernelSet& kv_avx512_kernels() {
  static const KVKernelSet set{"avx512", kv_dot_rows_any, kv_add_rows_any, kv_widen_rows_any};
  return set;
}

}  // namespace amalgam::infer

#pragma GCC pop_options
