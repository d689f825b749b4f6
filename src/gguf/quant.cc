#include "gguf/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace amalgam::gguf {

namespace {

constexpr int kQK = 256;             // K-quant super-block
constexpr float kGroupEps = 1e-15f;  // below this a group counts as all zeros

// Round half to even, as ggml's nearest_int (it adds 1.5 * 2^23 and reads the mantissa).
inline int nearest(float v) { return static_cast<int>(std::nearbyint(v)); }

inline uint16_t h(float v) { return core::f32_to_f16(v); }
inline float f(uint16_t v) { return core::f16_to_f32(v); }
inline void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline uint16_t get16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ---- Q8_0: d (f16), 32 x int8 ----
void q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 34) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(out, h(d));
    for (int j = 0; j < 32; ++j)
      out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
  }
}

// ---- Q4_0: d (f16), 16 bytes of nibbles; element j low nibble, j + 16 high; value (q - 8) d ----
void q4_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 18) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(out, h(d));
    for (int j = 0; j < 16; ++j) {
      const uint8_t lo = std::min<uint8_t>(15, static_cast<int8_t>(x[j] * id + 8.5f));
      const uint8_t hi = std::min<uint8_t>(15, static_cast<int8_t>(x[j + 16] * id + 8.5f));
      out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

// ---- Q5_0: d (f16), qh (32 fifth bits), 16 bytes of nibbles; value (q - 16) d ----
void q5_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 22) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
    }
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(out, h(d));
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const uint8_t lo = std::min<uint8_t>(31, static_cast<int8_t>(x[j] * id + 16.5f));
      const uint8_t hi = std::min<uint8_t>(31, static_cast<int8_t>(x[j + 16] * id + 16.5f));
      out[6 + j] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      qh |= static_cast<uint32_t>(lo >> 4) << j;
      qh |= static_cast<uint32_t>(hi >> 4) << (j + 16);
    }
    std::memcpy(out + 2, &qh, 4);
  }
}

// ---- Q5_1: d, m (f16), qh, nibbles; value q d + m ----
void q5_1(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 24) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
    const float d = (hi - lo) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(out, h(d));
    put16(out + 2, h(lo));
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const uint8_t a = static_cast<uint8_t>((x[j] - lo) * id + 0.5f);
      const uint8_t c = static_cast<uint8_t>((x[j + 16] - lo) * id + 0.5f);
      out[8 + j] = static_cast<uint8_t>((a & 0xF) | ((c & 0xF) << 4));
      qh |= static_cast<uint32_t>((a >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((c >> 4) & 1) << (j + 16);
    }
    std::memcpy(out + 4, &qh, 4);
  }
}

// Scale and (negated) min of a group quantised to [0, nmax] as scale * L - min, searched over
// nstep + 1 trial inverse scales around nmax / (max - min), weighted least squares.
float search_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                       float rmin, float rdelta, int nstep) {
  float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;
  if (hi == lo) {
    std::fill(L, L + n, 0);
    *neg_min = -lo;
    return 0.0f;
  }
  float iscale = nmax / (hi - lo);
  float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax));
    const float diff = scale * L[i] + lo - x[i];
    best += w[i] * diff * diff;
  }
  uint8_t trial[32];
  for (int s = 0; s <= nstep; ++s) {
    iscale = (rmin + rdelta * s + nmax) / (hi - lo);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det <= 0) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    float err = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = this_scale * trial[i] + this_min - x[i];
      err += w[i] * diff * diff;
    }
    if (err < best) {
      std::copy(trial, trial + n, L);
      best = err;
      scale = this_scale;
      lo = this_min;
    }
  }
  *neg_min = -lo;
  return scale;
}

// 8 scales and 8 mins of 6 bits in 12 bytes (ggml's get_scale_min_k4 layout).
void pack_scale_min(uint8_t* s, int j, uint8_t sc, uint8_t m) {
  if (j < 4) {
    s[j] = sc;
    s[j + 4] = m;
  } else {
    s[j + 4] = static_cast<uint8_t>((sc & 0xF) | ((m & 0xF) << 4));
    s[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
    s[j] |= static_cast<uint8_t>((m >> 4) << 6);
  }
}

void unpack_scale_min(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): the levels L of one super-block, with d, dmin and
// the 12 scale bytes written to `head` (d, dmin, scales).
void k_levels(const float* x, int nmax, float rmin, int nstep, uint8_t* head, uint8_t* L) {
  float scales[8], mins[8], w[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* g = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += g[l] * g[l];
    const float av = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av + std::fabs(g[l]);
    scales[j] = search_scale_min(32, nmax, g, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  uint8_t* s = head + 4;
  std::memset(s, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = static_cast<uint8_t>(std::min(63, nearest(inv_scale * scales[j]) & 0xFF));
    const uint8_t lm = static_cast<uint8_t>(std::min(63, nearest(inv_min * mins[j]) & 0xFF));
    pack_scale_min(s, j, ls, lm);
  }
  put16(head, h(max_scale / 63.0f));
  put16(head + 2, h(max_min / 63.0f));
  const float d = f(get16(head)), dmin = f(get16(head + 2));
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale_min(s, j, &sc, &m);
    const float dj = d * sc;
    if (dj == 0.0f) continue;
    const float mj = dmin * m;
    for (int i = 0; i < 32; ++i) {
      L[32 * j + i] = static_cast<uint8_t>(std::clamp(nearest((x[32 * j + i] + mj) / dj), 0, nmax));
    }
  }
}

// ---- Q4_K: d, dmin (f16), scales[12], qs[128]: 64-element chunks, low nibbles then high ----
void q4_k(const float* x, int64_t n, uint8_t* out) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, out += 144) {
    k_levels(x, 15, -1.0f, 20, out, L);
    uint8_t* q = out + 16;
    for (int j = 0; j < kQK; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    }
  }
}

// ---- Q5_K: d, dmin, scales[12], qh[32] (fifth bits), qs[128] ----
void q5_k(const float* x, int64_t n, uint8_t* out) {
  uint8_t L[kQK];
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, out += 176) {
    k_levels(x, 31, -0.5f, 15, out, L);
    uint8_t* qh = out + 16;
    uint8_t* ql = out + 48;
    std::memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int c = 0; c < kQK; c += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[c + j], l2 = L[c + j + 32];
        if (l1 > 15) l1 -= 16, qh[j] |= m1;
        if (l2 > 15) l2 -= 16, qh[j] |= m2;
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
    }
  }
}

// Symmetric levels in [-nmax, nmax) for a group of 16 (ggml's make_qx_quants, rmse_type 1: the
// scale is refined over 18 trial scales by least squares weighted with x^2).
float symmetric_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  }
  if (amax < kGroupEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  float iscale = -nmax / max;
  float sum_lx = 0, sum_l2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sum_lx += w * x[i] * l;
    sum_l2 += w * l * l;
  }
  float scale = sum_l2 != 0.0f ? sum_lx / sum_l2 : 0.0f;
  float best = scale * sum_lx;
  for (int s = -9; s <= 9; ++s) {
    if (s == 0) continue;
    iscale = -(nmax + 0.1f * s) / max;
    sum_lx = sum_l2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sum_lx += w * x[i] * l;
      sum_l2 += w * l * l;
    }
    if (sum_l2 > 0 && sum_lx * sum_lx > best * sum_l2) {
      for (int i = 0; i < n; ++i) {
        L[i] = static_cast<int8_t>(nmax + std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1));
      }
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

// ---- Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d (f16) ----
void q6_k(const float* x, int64_t n, uint8_t* out) {
  int8_t L[kQK];
  float scales[16];
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, out += 210) {
    float max_scale = 0, max_abs = 0;
    for (int g = 0; g < 16; ++g) {
      scales[g] = symmetric_scale(16, 32, x + 16 * g, L + 16 * g);
      if (std::fabs(scales[g]) > max_abs) max_abs = std::fabs(scales[g]), max_scale = scales[g];
    }
    uint8_t* ql = out;
    uint8_t* qh = out + 128;
    int8_t* sc = reinterpret_cast<int8_t*>(out + 192);
    if (max_abs < kGroupEps) {
      std::memset(out, 0, 210);
      continue;
    }
    const float iscale = -128.0f / max_scale;
    put16(out + 208, h(1 / iscale));
    for (int g = 0; g < 16; ++g)
      sc[g] = static_cast<int8_t>(std::min(127, nearest(iscale * scales[g])));
    const float d = f(get16(out + 208));
    for (int g = 0; g < 16; ++g) {
      const float dg = d * sc[g];
      if (dg == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        L[16 * g + i] = static_cast<int8_t>(std::clamp(nearest(x[16 * g + i] / dg), -32, 31) + 32);
      }
    }
    for (int c = 0; c < kQK; c += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const int a = L[c + l], b2 = L[c + l + 32], c3 = L[c + l + 64], d4 = L[c + l + 96];
        ql[l] = static_cast<uint8_t>((a & 0xF) | ((c3 & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((b2 & 0xF) | ((d4 & 0xF) << 4));
        qh[l] =
            static_cast<uint8_t>((a >> 4) | ((b2 >> 4) << 2) | ((c3 >> 4) << 4) | ((d4 >> 4) << 6));
      }
    }
  }
}

// ---- dequantisation ----
void dq8_0(const uint8_t* __restrict in, int64_t n, float* __restrict y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 34, y += 32) {
    const float d = f(get16(in));
    for (int j = 0; j < 32; ++j) y[j] = d * static_cast<int8_t>(in[2 + j]);
  }
}

void dq4_0(const uint8_t* __restrict in, int64_t n, float* __restrict y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 18, y += 32) {
    const float d = f(get16(in));
    for (int j = 0; j < 16; ++j) {
      y[j] = d * ((in[2 + j] & 0xF) - 8);
      y[j + 16] = d * ((in[2 + j] >> 4) - 8);
    }
  }
}

void dq5(const uint8_t* __restrict in, int64_t n, float* __restrict y, bool with_min) {
  const size_t bytes = with_min ? 24 : 22;
  for (int64_t b = 0; b < n / 32; ++b, in += bytes, y += 32) {
    const float d = f(get16(in));
    const float m = with_min ? f(get16(in + 2)) : 0.0f;
    uint32_t qh;
    std::memcpy(&qh, in + (with_min ? 4 : 2), 4);
    const uint8_t* qs = in + (with_min ? 8 : 6);
    for (int j = 0; j < 16; ++j) {
      const int a = (qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1) << 4);
      const int c = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      y[j] = with_min ? d * a + m : d * (a - 16);
      y[j + 16] = with_min ? d * c + m : d * (c - 16);
    }
  }
}

void dq_k45(const uint8_t* __restrict in, int64_t n, float* __restrict y, bool five) {
  const size_t bytes = five ? 176 : 144;
  for (int64_t b = 0; b < n / kQK; ++b, in += bytes) {
    const float d = f(get16(in)), dmin = f(get16(in + 2));
    const uint8_t* s = in + 4;
    const uint8_t* qh = in + 16;
    const uint8_t* q = in + (five ? 48 : 16);
    uint8_t u1 = 1, u2 = 2;
    for (int c = 0, j = 0; c < kQK; c += 64, j += 2, q += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t sc, m;
      unpack_scale_min(s, j, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      unpack_scale_min(s, j + 1, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) {
        const int hi1 = five && (qh[l] & u1) ? 16 : 0;
        *y++ = d1 * ((q[l] & 0xF) + hi1) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int hi2 = five && (qh[l] & u2) ? 16 : 0;
        *y++ = d2 * ((q[l] >> 4) + hi2) - m2;
      }
    }
  }
}

void dq6_k(const uint8_t* __restrict in, int64_t n, float* __restrict y) {
  for (int64_t b = 0; b < n / kQK; ++b, in += 210) {
    const float d = f(get16(in + 208));
    const uint8_t* ql = in;
    const uint8_t* qh = in + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(in + 192);
    for (int c = 0; c < kQK; c += 128, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

}  // namespace

void quantize_row(GgmlType type, const float* x, int64_t n, uint8_t* out) {
  AMALGAM_CHECK(n % traits(type).block == 0,
                "a row of {} elements is not a whole number of {} blocks", n, type_name(type));
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out, x, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) put16(out + 2 * i, core::f32_to_f16(x[i]));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) put16(out + 2 * i, core::f32_to_bf16(x[i]));
      return;
    case GgmlType::kQ8_0:
      return q8_0(x, n, out);
    case GgmlType::kQ4_0:
      return q4_0(x, n, out);
    case GgmlType::kQ5_0:
      return q5_0(x, n, out);
    case GgmlType::kQ5_1:
      return q5_1(x, n, out);
    case GgmlType::kQ4_K:
      return q4_k(x, n, out);
    case GgmlType::kQ5_K:
      return q5_k(x, n, out);
    case GgmlType::kQ6_K:
      return q6_k(x, n, out);
  }
  fail("internal: cannot quantise to ggml type {}", static_cast<uint32_t>(type));
}

void dequantize_row(GgmlType type, const uint8_t* in, int64_t n, float* y) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(y, in, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) y[i] = core::f16_to_f32(get16(in + 2 * i));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) y[i] = core::bf16_to_f32(get16(in + 2 * i));
      return;
    case GgmlType::kQ8_0:
      return dq8_0(in, n, y);
    case GgmlType::kQ4_0:
      return dq4_0(in, n, y);
    case GgmlType::kQ5_0:
      return dq5(in, n, y, false);
    case GgmlType::kQ5_1:
      return dq5(in, n, y, true);
    case GgmlType::kQ4_K:
      return dq_k45(in, n, y, false);
    case GgmlType::kQ5_K:
      return dq_k45(in, n, y, true);
    case GgmlType::kQ6_K:
      return dq6_k(in, n, y);
  }
  fail("internal: cannot dequantise ggml type {}", static_cast<uint32_t>(type));
}

}  // namespace amalgam::gguf
