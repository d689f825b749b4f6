// Rows of ggml tensor types to and from fp32. The quantisers follow ggml-quants.c's reference
// (non-imatrix) algorithms, which is what llama-quantize runs without an importance matrix:
// Q8_0, Q4_0 and Q5_0 (blocks of 32, one f16 scale), Q5_1 (scale and min; Q5_0/Q5_1 are
// llama-quantize's fallbacks for rows K-quants do not divide), Q4_K and Q5_K (super-blocks of 256:
// 8 sub-blocks of 32 with 6-bit scales and mins found by a weighted least-squares search), Q6_K (16
// sub-blocks of 16 with 8-bit scales). Compiled without FMA contraction, so results do not depend
// on the compiler's choice of fused multiply-adds.
#pragma once

#include <cstdint>

#include "gguf/format.h"

namespace amalgam::gguf {

// x (n) -> out (row_bytes(type, n)); n a multiple of the type's block size.
void quantize_row(GgmlType type, const float* x, int64_t n, uint8_t* out);
// in (row_bytes(type, n)) -> y (n).
void dequantize_row(GgmlType type, const uint8_t* in, int64_t n, float* y);

}  // namespace amalgam::gguf
