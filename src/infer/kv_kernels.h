// Attention kernels over KV-cache rows stored as F32, BF16 or F16: the values are widened to fp32
// in registers, all arithmetic is fp32. As the weight kernels (kernels.h): a scalar twin (the
// reference) and AVX2 / AVX-512 variants chosen at run time, each testable on any machine that
// runs it. Rows are `stride` bytes apart (one head's d values inside a row of every kv head).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "infer/kv_cache.h"

namespace amalgam::infer {

// Query heads one call handles: the heads of a GQA group read each cache row once.
inline constexpr int kKVMaxQueries = 8;

struct KVKernelSet {
  std::string_view name;  // "scalar", "avx2", "avx512"
  // scores[i * s_stride + j] = scale * dot(q_i, row j) for i < nq (<= kKVMaxQueries), j < n.
  // q_i = q + i * d; row j = d values at base + j * stride.
  void (*dot_rows)(KVType type, const uint8_t* base, int64_t stride, int64_t n, const float* q,
                   int nq, int64_t d, float scale, float* scores, int64_t s_stride);
  // out_i[c] += sum over j < n of w_i[j] * row_j[c], for i < nq, c < d; w_i = w + i * w_stride,
  // out_i = out + i * d. Rows whose weights are all zero (masked) are not read.
  void (*add_rows)(KVType type, const uint8_t* base, int64_t stride, int64_t n, const float* w,
                   int nq, int64_t w_stride, int64_t d, float* out);
  // dst (n, d) = the n rows widened to fp32.
  void (*widen_rows)(KVType type, const uint8_t* base, int64_t stride, int64_t n, int64_t d,
                     float* dst);
};

const KVKernelSet& kv_scalar_kernels();
// The fastest set this CPU runs (the same choice as best_kernels()).
const KVKernelSet& kv_best_kernels();
// Every set this CPU can run (scalar first); for tests comparing them.
std::vector<const KVKernelSet*> kv_available_kernel_sets();

// Variant tables, defined in kv_kernels_avx2.cc / kv_kernels_avx512.cc; call only if supported.
const KVKernelSet& kv_avx2_kernels();
const KVKernelSet& kv_avx512_kernels();

}  // namespace amalgam::infer
