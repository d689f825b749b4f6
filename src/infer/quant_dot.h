// Integer dot products of quantised weight rows (GGUF block types) with activations quantised to
// 8 bits, the way llama.cpp multiplies quantised weights on the CPU: the activation row is
// quantised once per product, each block of weights and activations is multiplied in integers
// (int4/int5/int6/int8 x int8, exact), and one fp32 scale multiply per block turns the integer
// sum into the product. The weights are read once, at their stored size, and never widened.
//
// Activation formats: blocks of 32 (for Q8_0, Q4_0, Q5_0, Q5_1 weights) or 256 (for the K-quants,
// so that their integer sub-block scales multiply inside the integer sum), each with an fp32
// scale d = max|x| / 127 and values round(x / d) in [-127, 127], plus the sum of every 16 values
// (what the weights' offsets and minima multiply).
//
// Each kernel exists as a scalar twin (the reference) and as SIMD variants (AVX2 `maddubs`,
// AVX512-VNNI `vpdpbusd`) compiled with per-file target options and chosen at run time by CPU
// features; the integer sums are identical in every variant, only the fp32 order differs.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "gguf/format.h"

namespace amalgam::infer {

// One quantised activation row (views into a QuantizedActivations).
struct QuantRow {
  const int8_t* q = nullptr;      // cols values
  const float* d = nullptr;       // cols / block scales
  const int16_t* sums = nullptr;  // cols / 16 sums of 16 consecutive values
};

// Activation rows (n, cols) quantised in blocks of `block`.
struct QuantizedActivations {
  int block = 0;
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int16_t> sums;
  QuantRow row(int64_t i) const {
    return {q.data() + i * cols, d.data() + i * (cols / block), sums.data() + i * (cols / 16)};
  }
};

// The activation block size integer products with `type` weights take: 32, 256, or 0 where the
// type has no integer kernel (F32/F16/BF16).
int activation_block(gguf::GgmlType type);

// x (n, cols) fp32 -> out; cols a multiple of `block` (32 or 256).
void quantize_activations(const float* x, int64_t n, int64_t cols, int block,
                          QuantizedActivations* out);

// x's values as the integer products see them: d * q.
std::vector<float> dequantize_activations(const QuantizedActivations& x);

struct QuantDotKernels {
  std::string_view name;  // "scalar", "avx2", "avx512vnni"
  // y[i * y_stride + r] = dot(row r of w, x[i]) for r < rows, i < nx. w: `rows` rows of `type`
  // blocks, each `cols` wide; x: nx rows quantised in activation_block(type) blocks.
  // Returns false when `type` has no integer kernel.
  bool (*gemv)(gguf::GgmlType type, const uint8_t* w, int64_t rows, int64_t cols, const QuantRow* x,
               int nx, float* y, int64_t y_stride);
};

const QuantDotKernels& scalar_quant_dot();
// The fastest set this CPU supports.
const QuantDotKernels& best_quant_dot();
// Every set this CPU can run, scalar first (for tests comparing them).
std::vector<const QuantDotKernels*> available_quant_dot();

// Variant tables, defined in quant_dot_avx2.cc / quant_dot_vnni.cc; call only if supported.
const QuantDotKernels& avx2_quant_dot();
const QuantDotKernels& vnni_quant_dot();

}  // namespace amalgam::infer
