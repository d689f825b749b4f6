// Weight x activation products. A weight matrix is a view of stored (F32/BF16/F16) bytes, never
// widened as a whole: decode (few rows of activations) streams it through the SIMD gemv kernels;
// prefill (many rows) multiplies one block of weight rows at a time with oneDNN (infer/gemm.h):
// BF16 natively where the CPU can, other types widened block by block into a per-thread fp32
// scratch. Parallelism is the engine's thread pool over blocks of weight rows; oneDNN runs
// single-threaded inside each block.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "gguf/format.h"
#include "infer/thread_pool.h"
#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace amalgam::infer {

struct WeightMatrix {
  tensor::DType dtype = tensor::DType::kF32;  // F32, BF16 or F16 when not quantised
  const uint8_t* data = nullptr;
  int64_t rows = 0;  // output features
  int64_t cols = 0;  // input features
  // A GGUF block type (Q8_0, Q4_K, ...): rows are sequences of blocks, dequantised block by
  // block inside the products, never as a whole matrix.
  std::optional<gguf::GgmlType> quant;

  // Rows [begin, begin + count) as a matrix of their own (e.g. one expert of a fused tensor).
  WeightMatrix slice_rows(int64_t begin, int64_t count) const;
  size_t row_bytes() const {
    return quant ? static_cast<size_t>(gguf::row_bytes(*quant, cols))
                 : static_cast<size_t>(cols) * tensor::dtype_size(dtype);
  }
};

// Checks the view is a 2-D float matrix (or a 3-D stack, viewed as its `index`-th matrix).
WeightMatrix weight_matrix(const tensor::TensorView& view, const std::string& name);
WeightMatrix weight_matrix_of_stack(const tensor::TensorView& view, int64_t index,
                                    const std::string& name);
WeightMatrix quantized_matrix(const gguf::QuantizedMatrix& q);

// Rows [r0, r0 + count) of w as fp32, (count, w.cols) row-major.
void rows_to_f32(const WeightMatrix& w, int64_t r0, int64_t count, float* out);

// y (n, w.rows) = x (n, w.cols) . w^T. Rows of x and y are contiguous.
void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y);

// Several products of the same x (q/k/v, gate/up) in one parallel region.
struct MatmulJob {
  WeightMatrix w;
  float* y;  // (n, w.rows)
};
void matmul_many(std::span<const MatmulJob> jobs, const float* x, int64_t n);

// Up to this many activation rows go through the gemv kernels; more go through oneDNN.
inline constexpr int64_t kGemvMaxRows = 8;

}  // namespace amalgam::infer
