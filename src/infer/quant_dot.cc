#include "infer/quant_dot.h"

#include <cpuid.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace amalgam::infer {

namespace {

using gguf::GgmlType;

float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return core::f16_to_f32(h);
}

// Sum of the 32 activation values of block b (two groups of 16).
int sum32(const QuantRow& x, int64_t b) { return x.sums[2 * b] + x.sums[2 * b + 1]; }

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (ggml's 12-byte packing).
void scale_min(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// ---- scalar twins: one weight row against one activation row ----
// Integer sums per block exactly, then one fp32 multiply per block, as the SIMD variants do.

float dot_q8_0(const uint8_t* w, const QuantRow& x, int64_t nb) {
  float acc = 0;
  for (int64_t b = 0; b < nb; ++b, w += 34) {
    const auto* q = reinterpret_cast<const int8_t*>(w + 2);
    int s = 0;
    for (int j = 0; j < 32; ++j) s += q[j] * x.q[32 * b + j];
    acc += f16(w) * x.d[b] * static_cast<float>(s);
  }
  return acc;
}

// Q4_0 (offset 8) and Q5_0 (offset 16): value (q - offset) d.
float dot_q4_0(const uint8_t* w, const QuantRow& x, int64_t nb) {
  float acc = 0;
  for (int64_t b = 0; b < nb; ++b, w += 18) {
    const int8_t* xq = x.q + 32 * b;
    int s = 0;
    for (int j = 0; j < 16; ++j) {
      s += ((w[2 + j] & 0xF) - 8) * xq[j] + ((w[2 + j] >> 4) - 8) * xq[j + 16];
    }
    acc += f16(w) * x.d[b] * static_cast<float>(s);
  }
  return acc;
}

// Q5_0 (value (q - 16) d) and Q5_1 (value q d + m).
float dot_q5(const uint8_t* w, const QuantRow& x, int64_t nb, bool with_min) {
  const int64_t bytes = with_min ? 24 : 22;
  const int offset = with_min ? 0 : 16;
  float acc = 0;
  for (int64_t b = 0; b < nb; ++b, w += bytes) {
    uint32_t qh;
    std::memcpy(&qh, w + (with_min ? 4 : 2), 4);
    const uint8_t* qs = w + (with_min ? 8 : 6);
    const int8_t* xq = x.q + 32 * b;
    int s = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      s += (lo - offset) * xq[j] + (hi - offset) * xq[j + 16];
    }
    acc += f16(w) * x.d[b] * static_cast<float>(s);
    if (with_min) acc += f16(w + 2) * x.d[b] * static_cast<float>(sum32(x, b));
  }
  return acc;
}

// Q4_K / Q5_K: value d sc_j q - dmin m_j in sub-block j of 32.
float dot_k45(const uint8_t* w, const QuantRow& x, int64_t nsb, bool five) {
  const int64_t bytes = five ? 176 : 144;
  float acc = 0;
  for (int64_t b = 0; b < nsb; ++b, w += bytes) {
    const uint8_t* qh = w + 16;
    const uint8_t* q = w + (five ? 48 : 16);
    const int8_t* xq = x.q + 256 * b;
    int sum_q = 0, sum_m = 0;
    for (int c = 0; c < 4; ++c, q += 32) {
      for (int half = 0; half < 2; ++half) {
        const int j = 2 * c + half;
        int sc, m;
        scale_min(w + 4, j, &sc, &m);
        int s = 0;
        for (int l = 0; l < 32; ++l) {
          int v = half ? q[l] >> 4 : q[l] & 0xF;
          if (five && (qh[l] >> j & 1)) v += 16;
          s += v * xq[32 * j + l];
        }
        sum_q += sc * s;
        sum_m += m * (x.sums[16 * b + 2 * j] + x.sums[16 * b + 2 * j + 1]);
      }
    }
    acc += f16(w) * x.d[b] * static_cast<float>(sum_q) -
           f16(w + 2) * x.d[b] * static_cast<float>(sum_m);
  }
  return acc;
}

// Q6_K: value d sc_g (q - 32) in group g of 16.
float dot_q6_k(const uint8_t* w, const QuantRow& x, int64_t nsb) {
  float acc = 0;
  for (int64_t b = 0; b < nsb; ++b, w += 210) {
    const int8_t* xq = x.q + 256 * b;
    const auto* sc = reinterpret_cast<const int8_t*>(w + 192);
    int sum = 0;
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = w + 64 * half;
      const uint8_t* qh = w + 128 + 32 * half;
      for (int l = 0; l < 32; ++l) {
        const int v[4] = {(ql[l] & 0xF) | ((qh[l] & 3) << 4),
                          (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                          (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                          (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)};
        for (int k = 0; k < 4; ++k) {
          const int e = 128 * half + 32 * k + l;
          sum += sc[e / 16] * (v[k] - 32) * xq[e];
        }
      }
    }
    acc += f16(w + 208) * x.d[b] * static_cast<float>(sum);
  }
  return acc;
}

bool gemv_scalar(GgmlType type, const uint8_t* w, int64_t rows, int64_t cols, const QuantRow* x,
                 int nx, float* y, int64_t y_stride) {
  if (activation_block(type) == 0) return false;
  const size_t rb = gguf::row_bytes(type, cols);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * rb;
    for (int i = 0; i < nx; ++i) {
      float v = 0;
      switch (type) {
        case GgmlType::kQ8_0:
          v = dot_q8_0(row, x[i], cols / 32);
          break;
        case GgmlType::kQ4_0:
          v = dot_q4_0(row, x[i], cols / 32);
          break;
        case GgmlType::kQ5_0:
          v = dot_q5(row, x[i], cols / 32, false);
          break;
        case GgmlType::kQ5_1:
          v = dot_q5(row, x[i], cols / 32, true);
          break;
        case GgmlType::kQ4_K:
          v = dot_k45(row, x[i], cols / 256, false);
          break;
        case GgmlType::kQ5_K:
          v = dot_k45(row, x[i], cols / 256, true);
          break;
        case GgmlType::kQ6_K:
          v = dot_q6_k(row, x[i], cols / 256);
          break;
        default:
          return false;
      }
      y[i * y_stride + r] = v;
    }
  }
  return true;
}

bool cpu_has_avx2() {
  // F16C from CPUID leaf 1 directly: clang's __builtin_cpu_supports does not know "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

bool cpu_has_vnni() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

}  // namespace

int activation_block(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
      return 32;
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return 256;
    default:
      return 0;
  }
}

void quantize_activations(const float* x, int64_t n, int64_t cols, int block,
                          QuantizedActivations* out) {
  AMALGAM_CHECK(block == 32 || block == 256, "activation blocks of {} (32 or 256 expected)", block);
  AMALGAM_CHECK(cols % block == 0, "a row of {} activations is not a whole number of blocks of {}",
                cols, block);
  out->block = block;
  out->rows = n;
  out->cols = cols;
  out->q.resize(static_cast<size_t>(n * cols));
  out->d.resize(static_cast<size_t>(n * (cols / block)));
  out->sums.resize(static_cast<size_t>(n * (cols / 16)));
  for (int64_t b = 0; b < n * (cols / block); ++b) {
    const float* xb = x + b * block;
    int8_t* q = out->q.data() + b * block;
    float amax = 0;
    for (int j = 0; j < block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 127.0f / amax : 0.0f;
    out->d[b] = d;
    for (int j = 0; j < block; ++j) {
      // |x id| <= 127 up to one rounding: the clamp only guards that last ulp.
      const float v = std::clamp(std::nearbyint(xb[j] * id), -127.0f, 127.0f);
      q[j] = static_cast<int8_t>(v);
    }
  }
  for (int64_t g = 0; g < n * (cols / 16); ++g) {
    int s = 0;
    for (int j = 0; j < 16; ++j) s += out->q[16 * g + j];
    out->sums[g] = static_cast<int16_t>(s);
  }
}

std::vector<float> dequantize_activations(const QuantizedActivations& x) {
  std::vector<float> v(x.q.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = x.d[i / x.block] * x.q[i];
  return v;
}

const QuantDotKernels& scalar_quant_dot() {
  static const QuantDotKernels set{"scalar", gemv_scalar};
  return set;
}

const QuantDotKernels& best_quant_dot() {
  static const QuantDotKernels& set = cpu_has_vnni()   ? vnni_quant_dot()
                                      : cpu_has_avx2() ? avx2_quant_dot()
                                                       : scalar_quant_dot();
  return set;
}

std::vector<const QuantDotKernels*> available_quant_dot() {
  std::vector<const QuantDotKernels*> sets{&scalar_quant_dot()};
  if (cpu_has_avx2()) sets.push_back(&avx2_quant_dot());
  if (cpu_has_vnni()) sets.push_back(&vnni_quant_dot());
  return sets;
}

}  // namespace amalgam::infer
