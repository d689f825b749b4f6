#include "infer/kernels.h"

#include <cpuid.h>

#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace amalgam::infer {

namespace {

float load_scalar(tensor::DType dtype, const uint8_t* p, int64_t i) {
  switch (dtype) {
    case tensor::DType::kF32: {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case tensor::DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return core::bf16_to_f32(h);
    }
    case tensor::DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return core::f16_to_f32(h);
    }
    default:
      fail("inference kernels cannot read {} weights", tensor::dtype_name(dtype));
  }
}

void gemv_scalar(tensor::DType dtype, const uint8_t* w, int64_t rows, int64_t cols, const float* x,
                 int nx, int64_t x_stride, float* y, int64_t y_stride) {
  const size_t row_bytes = static_cast<size_t>(cols) * tensor::dtype_size(dtype);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
    for (int i = 0; i < nx; ++i) {
      const float* xi = x + i * x_stride;
      float acc = 0.0f;
      for (int64_t c = 0; c < cols; ++c) acc += load_scalar(dtype, row, c) * xi[c];
      y[i * y_stride + r] = acc;
    }
  }
}

void to_f32_scalar(tensor::DType dtype, const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_scalar(dtype, src, i);
}

bool cpu_has_avx2() {
  // F16C from CPUID leaf 1 directly: clang's __builtin_cpu_supports does not know "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

}  // namespace

const KernelSet& scalar_kernels() {
  static const KernelSet set{"scalar", gemv_scalar, to_f32_scalar};
  return set;
}

const KernelSet& best_kernels() {
  static const KernelSet& set = cpu_has_avx512() ? avx512_kernels()
                                : cpu_has_avx2() ? avx2_kernels()
                                                 : scalar_kernels();
  return set;
}

std::vector<const KernelSet*> available_kernel_sets() {
  std::vector<const KernelSet*> sets{&scalar_kernels()};
  if (cpu_has_avx2()) sets.push_back(&avx2_kernels());
  if (cpu_has_avx512()) sets.push_back(&avx512_kernels());
  return sets;
}

}  // namespace amalgam::infer
