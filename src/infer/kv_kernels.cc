#include "infer/kv_kernels.h"

#include <cstring>

#include "core/half.h"
#include "infer/kernels.h"

namespace amalgam::infer {

namespace {

float load(KVType type, const uint8_t* row, int64_t i) {
  if (type == KVType::kF32) {
    float f;
    std::memcpy(&f, row + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, row + 2 * i, 2);
  return type == KVType::kBF16 ? core::bf16_to_f32(h) : core::f16_to_f32(h);
}

void dot_rows_scalar(KVType type, const uint8_t* base, int64_t stride, int64_t n, const float* q,
                     int nq, int64_t d, float scale, float* scores, int64_t s_stride) {
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = base + j * stride;
    for (int i = 0; i < nq; ++i) {
      float acc = 0.0f;
      for (int64_t c = 0; c < d; ++c) acc += q[i * d + c] * load(type, row, c);
      scores[i * s_stride + j] = acc * scale;
    }
  }
}

void add_rows_scalar(KVType type, const uint8_t* base, int64_t stride, int64_t n, const float* w,
                     int nq, int64_t w_stride, int64_t d, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = base + j * stride;
    for (int i = 0; i < nq; ++i) {
      const float wj = w[i * w_stride + j];
      if (wj == 0.0f) continue;
      for (int64_t c = 0; c < d; ++c) out[i * d + c] += wj * load(type, row, c);
    }
  }
}

void widen_rows_scalar(KVType type, const uint8_t* base, int64_t stride, int64_t n, int64_t d,
                       float* dst) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < d; ++i) dst[j * d + i] = load(type, base + j * stride, i);
  }
}

}  // namespace

const KVKernelSet& kv_scalar_kernels() {
  static const KVKernelSet set{"scalar", dot_rows_scalar, add_rows_scalar, widen_rows_scalar};
  return set;
}

std::vector<const KVKernelSet*> kv_available_kernel_sets() {
  // The KV kernels need the same CPU features as the weight kernels of the same name.
  std::vector<const KVKernelSet*> sets;
  for (const KernelSet* weights : available_kernel_sets()) {
    if (weights->name == "scalar") sets.push_back(&kv_scalar_kernels());
    if (weights->name == "avx2") sets.push_back(&kv_avx2_kernels());
    if (weights->name == "avx512") sets.push_back(&kv_avx512_kernels());
  }
  return sets;
}

const KVKernelSet& kv_best_kernels() {
  static const KVKernelSet& set = *kv_available_kernel_sets().back();
  return set;
}

}  // namespace amalgam::infer
