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

#include "infer/kv_kernels_simd.inc"

}  // namespace

const KVKernelSet& kv_avx512_kernels() {
  static const KVKernelSet set{"avx512", kv_dot_rows_any, kv_add_rows_any, kv_widen_rows_any};
  return set;
}

}  // namespace amalgam::infer

#pragma GCC pop_options
