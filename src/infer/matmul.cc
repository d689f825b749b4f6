#include "infer/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "gguf/quant.h"
#include "infer/gemm.h"
#include "infer/kernels.h"
#include "infer/quant_dot.h"
#include "infer/thread_pool.h"

namespace amalgam::infer {

namespace {

// Weight rows per product block: a block of weights (fp32 or bf16) stays in L2.
constexpr int64_t kGemmBlockRows = 128;
// Below this many multiply-adds a parallel region costs more than it saves (and stalls badly
// when the machine is oversubscribed).
constexpr int64_t kMinParallelWork = 1 << 16;
// Quantised rows dequantised at a time by the gemv path (fp32 rows that stay in L2).
constexpr int64_t kQuantGemvRows = 16;

// A range of weight rows of one job.
struct RowChunk {
  size_t job;
  int64_t r0, rows;
};

// Whether w's products take BF16 operands (BF16 products on, BF16 or quantised weights).
bool bf16_operands(const WeightMatrix& w) {
  return reduced_precision_products() && (w.quant || w.dtype == tensor::DType::kBF16);
}

// Whether w's decode products are integer dot products on 8-bit activations (quant_dot.h): the
// reduced-precision switch is on and w's block type has an integer kernel.
bool integer_operands(const WeightMatrix& w) {
  return w.quant && reduced_precision_products() && activation_block(*w.quant) != 0;
}

// Rounds to the nearest BF16 value, in place.
void round_to_bf16(float* v, int64_t count) {
  for (int64_t i = 0; i < count; ++i) v[i] = core::bf16_to_f32(core::f32_to_bf16(v[i]));
}

// Splits every job's rows into chunks of about `target` rows (a multiple of 16, so SIMD row
// blocks stay whole).
std::vector<RowChunk> row_chunks(std::span<const MatmulJob> jobs, int64_t target) {
  target = std::max<int64_t>(16, (target + 15) / 16 * 16);
  std::vector<RowChunk> chunks;
  for (size_t j = 0; j < jobs.size(); ++j) {
    for (int64_t r0 = 0; r0 < jobs[j].w.rows; r0 += target) {
      chunks.push_back({j, r0, std::min(target, jobs[j].w.rows - r0)});
    }
  }
  return chunks;
}

// Few activation rows: every weight row is streamed once per kGemvMaxInputs activation rows.
void gemv_path(std::span<const MatmulJob> jobs, const float* x_in, int64_t n, int64_t cols) {
  const KernelSet& k = best_kernels();
  // BF16 products: the same rounding of x (and of dequantised weights) as the oneDNN path.
  std::vector<float> x_rounded;
  if (std::any_of(jobs.begin(), jobs.end(), [](const MatmulJob& j) {
        return bf16_operands(j.w) && !integer_operands(j.w);
      })) {
    x_rounded.assign(x_in, x_in + n * cols);
    round_to_bf16(x_rounded.data(), n * cols);
  }
  // BF16 weights take the rounded x as BF16 bit patterns, through the CPU's BF16 dot products.
  const GemvBF16Dot bf16_dot = gemv_bf16_dot_kernel();
  const auto dot_products = [&](const WeightMatrix& w) {
    return bf16_dot != nullptr && bf16_operands(w) && !w.quant && w.dtype == tensor::DType::kBF16;
  };
  std::vector<uint16_t> x_bf16;
  if (std::any_of(jobs.begin(), jobs.end(),
                  [&](const MatmulJob& j) { return dot_products(j.w); })) {
    x_bf16.resize(x_rounded.size());
    for (size_t i = 0; i < x_rounded.size(); ++i) x_bf16[i] = core::f32_to_bf16(x_rounded[i]);
  }
  // Integer products: x quantised once per activation block size its jobs need.
  QuantizedActivations x_q32, x_q256;
  for (const MatmulJob& j : jobs) {
    if (!integer_operands(j.w)) continue;
    QuantizedActivations& xq = activation_block(*j.w.quant) == 32 ? x_q32 : x_q256;
    if (xq.block == 0) quantize_activations(x_in, n, cols, activation_block(*j.w.quant), &xq);
  }
  const int threads = num_threads();
  int64_t total_rows = 0;
  for (const auto& j : jobs) total_rows += j.w.rows;
  // About four chunks per thread: dynamic scheduling then balances uneven progress (a thread
  // preempted by another process) without losing streaming locality.
  const auto chunks = row_chunks(jobs, total_rows / (4 * threads));
  const int64_t count = static_cast<int64_t>(chunks.size());
  const bool parallel = count > 1 && total_rows * cols * n >= kMinParallelWork;
  auto chunk = [&](int64_t c, int) {
    const RowChunk& ch = chunks[c];
    const WeightMatrix& w = jobs[ch.job].w;
    float* y = jobs[ch.job].y;
    const bool bf16 = bf16_operands(w);
    const float* x = bf16 ? x_rounded.data() : x_in;
    if (integer_operands(w)) {
      const QuantizedActivations& xq = activation_block(*w.quant) == 32 ? x_q32 : x_q256;
      QuantRow x_rows[kGemvMaxRows];
      for (int64_t i = 0; i < n; ++i) x_rows[i] = xq.row(i);
      best_quant_dot().gemv(*w.quant, w.data + static_cast<size_t>(ch.r0) * w.row_bytes(), ch.rows,
                            cols, x_rows, static_cast<int>(n), y + ch.r0, w.rows);
      return;
    }
    if (w.quant) {
      // Blocks of a few rows dequantised into L1/L2 and multiplied from there.
      thread_local std::vector<float> rows_f32;
      for (int64_t b = 0; b < ch.rows; b += kQuantGemvRows) {
        const int64_t nb = std::min(kQuantGemvRows, ch.rows - b);
        rows_f32.resize(static_cast<size_t>(nb * cols));
        rows_to_f32(w, ch.r0 + b, nb, rows_f32.data());
        if (bf16) round_to_bf16(rows_f32.data(), nb * cols);
        const auto* wf = reinterpret_cast<const uint8_t*>(rows_f32.data());
        for (int64_t i = 0; i < n; i += kGemvMaxInputs) {
          int nx = static_cast<int>(std::min<int64_t>(kGemvMaxInputs, n - i));
          k.gemv(tensor::DType::kF32, wf, nb, cols, x + i * cols, nx, cols,
                 y + i * w.rows + ch.r0 + b, w.rows);
        }
      }
      return;
    }
    const uint8_t* wb = w.data + static_cast<size_t>(ch.r0) * w.row_bytes();
    const bool dot = dot_products(w);
    for (int64_t i = 0; i < n; i += kGemvMaxInputs) {
      int nx = static_cast<int>(std::min<int64_t>(kGemvMaxInputs, n - i));
      if (dot) {
        bf16_dot(wb, ch.rows, cols, x_bf16.data() + i * cols, nx, cols, y + i * w.rows + ch.r0,
                 w.rows);
      } else {
        k.gemv(w.dtype, wb, ch.rows, cols, x + i * cols, nx, cols, y + i * w.rows + ch.r0, w.rows);
      }
    }
  };
  if (parallel) {
    engine_pool().run(count, chunk);
  } else {
    for (int64_t c = 0; c < count; ++c) chunk(c, 0);
  }
}

// Rows of x given to oneDNN for n rows: multiples of 16 up to 128, then of 64.
int64_t padded_rows(int64_t n) {
  const int64_t step = n <= 128 ? 16 : 64;
  return (n + step - 1) / step * step;
}

// x rounded to BF16 (round to nearest even), for the BF16 products.
std::vector<uint16_t> to_bf16(const float* x, int64_t count) {
  std::vector<uint16_t> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out[i] = core::f32_to_bf16(x[i]);
  return out;
}

// Many activation rows: one block of weight rows per task, multiplied by oneDNN on the task's
// thread. Where the CPU multiplies BF16 natively, BF16 weights are used as stored and quantised
// ones are dequantised block by block to BF16 (x rounded to BF16 once per call); otherwise every
// stored type but F32 is widened block by block into a per-thread fp32 scratch. The product of a
// block goes to a contiguous scratch (oneDNN's fastest kernels want a dense output) and is copied
// into its columns of y.
void gemm_path(std::span<const MatmulJob> jobs, const float* x, int64_t n, int64_t cols) {
  // oneDNN compiles one kernel per shape: x is padded with zero rows to a multiple of
  // padded_rows(n), so the varying batch sizes of evaluation and decoding reuse a few kernels.
  const int64_t np = padded_rows(n);
  std::vector<float> x_padded;
  if (np != n) {
    x_padded.assign(static_cast<size_t>(np * cols), 0.0f);
    std::memcpy(x_padded.data(), x, sizeof(float) * static_cast<size_t>(n * cols));
    x = x_padded.data();
  }
  std::vector<uint16_t> x_bf16;
  if (std::any_of(jobs.begin(), jobs.end(), [](const MatmulJob& j) { return bf16_operands(j.w); }))
    x_bf16 = to_bf16(x, np * cols);
  const auto chunks = row_chunks(jobs, kGemmBlockRows);
  const int64_t count = static_cast<int64_t>(chunks.size());
  engine_pool().run(count, [&](int64_t c, int) {
    thread_local std::vector<float> widened;  // kept between calls
    thread_local std::vector<uint16_t> narrowed;
    thread_local std::vector<float> product;
    const RowChunk& ch = chunks[c];
    const WeightMatrix& w = jobs[ch.job].w;
    const uint8_t* wb = w.data + static_cast<size_t>(ch.r0) * w.row_bytes();
    const size_t block = static_cast<size_t>(ch.rows * cols);
    product.resize(static_cast<size_t>(np * ch.rows));
    if (bf16_operands(w)) {
      const auto* wh = reinterpret_cast<const uint16_t*>(wb);
      if (w.quant) {
        widened.resize(block);
        narrowed.resize(block);
        rows_to_f32(w, ch.r0, ch.rows, widened.data());
        for (size_t i = 0; i < block; ++i) narrowed[i] = core::f32_to_bf16(widened[i]);
        wh = narrowed.data();
      }
      gemm_bf16(np, ch.rows, cols, x_bf16.data(), wh, product.data());
    } else {
      const float* wf = reinterpret_cast<const float*>(wb);
      if (w.quant || w.dtype != tensor::DType::kF32) {
        widened.resize(block);
        rows_to_f32(w, ch.r0, ch.rows, widened.data());
        wf = widened.data();
      }
      gemm_f32(np, ch.rows, cols, x, wf, product.data());
    }
    float* y = jobs[ch.job].y + ch.r0;
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(y + i * w.rows, product.data() + i * ch.rows, sizeof(float) * ch.rows);
    }
  });
}

}  // namespace

WeightMatrix WeightMatrix::slice_rows(int64_t begin, int64_t count) const {
  AMALGAM_CHECK(begin >= 0 && count >= 0 && begin + count <= rows,
                "row slice [{}, {}) outside a matrix of {} rows", begin, begin + count, rows);
  WeightMatrix m = *this;
  m.data = data + static_cast<size_t>(begin) * row_bytes();
  m.rows = count;
  return m;
}

WeightMatrix quantized_matrix(const gguf::QuantizedMatrix& q) {
  WeightMatrix m{tensor::DType::kF32, q.data, q.rows, q.cols, q.type};
  return m;
}

void rows_to_f32(const WeightMatrix& w, int64_t r0, int64_t count, float* out) {
  const uint8_t* src = w.data + static_cast<size_t>(r0) * w.row_bytes();
  if (!w.quant) {
    best_kernels().to_f32(w.dtype, src, out, count * w.cols);
    return;
  }
  const size_t rb = w.row_bytes();
  for (int64_t r = 0; r < count; ++r) {
    gguf::dequantize_row(*w.quant, src + r * rb, w.cols, out + r * w.cols);
  }
}

WeightMatrix weight_matrix(const tensor::TensorView& view, const std::string& name) {
  AMALGAM_CHECK(tensor::is_float_dtype(view.dtype), "tensor '{}': dtype {} is not F32/BF16/F16",
                name, tensor::dtype_name(view.dtype));
  AMALGAM_CHECK(view.shape.size() == 2, "tensor '{}': expected a 2-D matrix, got shape {}", name,
                tensor::shape_string(view.shape));
  return WeightMatrix{view.dtype, view.data, view.shape[0], view.shape[1]};
}

WeightMatrix weight_matrix_of_stack(const tensor::TensorView& view, int64_t index,
                                    const std::string& name) {
  AMALGAM_CHECK(tensor::is_float_dtype(view.dtype), "tensor '{}': dtype {} is not F32/BF16/F16",
                name, tensor::dtype_name(view.dtype));
  AMALGAM_CHECK(view.shape.size() == 3, "tensor '{}': expected a 3-D stack, got shape {}", name,
                tensor::shape_string(view.shape));
  AMALGAM_CHECK(index >= 0 && index < view.shape[0], "tensor '{}': index {} outside {} matrices",
                name, index, view.shape[0]);
  WeightMatrix m{view.dtype, view.data, view.shape[1], view.shape[2]};
  m.data += static_cast<size_t>(index) * static_cast<size_t>(m.rows) * m.row_bytes();
  return m;
}

void matmul_many(std::span<const MatmulJob> jobs, const float* x, int64_t n) {
  if (n <= 0 || jobs.empty()) return;
  const int64_t cols = jobs[0].w.cols;
  for (const auto& j : jobs) {
    AMALGAM_CHECK(j.w.cols == cols, "matmul_many: matrices of {} and {} columns", cols, j.w.cols);
  }
  if (n <= kGemvMaxRows) {
    gemv_path(jobs, x, n, cols);
  } else {
    gemm_path(jobs, x, n, cols);
  }
}

void matmul(const WeightMatrix& w, const float* x, int64_t n, float* y) {
  const MatmulJob job{w, y};
  matmul_many({&job, 1}, x, n);
}

}  // namespace amalgam::infer
