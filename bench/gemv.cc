// Decode products against the memory bandwidth: the engine's matrix-vector product (infer::matmul
// with one activation row, on the engine's thread pool) streaming a matrix larger than the caches
// from huge-page memory, beside a plain read of the same bytes. The rows start on a cache line or
// `--offsets` bytes past one, as tensors do in checkpoints (safetensors places them at any
// multiple of 8 bytes, GGUF at multiples of 32), so the cost of lines split between loads shows
// side by side. Reports the best GB/s of `--reps` for each.
//
//   bench_gemv [--threads 2] [--mb 512] [--reps 5] [--offsets 0,16,48]

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "core/half.h"
#include "infer/gemm.h"
#include "infer/kernels.h"
#include "infer/matmul.h"
#include "infer/thread_pool.h"
#include "memory_bandwidth.h"

using namespace amalgam;

namespace {

constexpr int64_t kCols = 2048;

struct Case {
  std::string name;
  tensor::DType dtype;
  bool reduced_precision;  // BF16 weights: AVX512-BF16 dot products where the CPU has them
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode products (gemv) against the memory bandwidth, rows aligned or not"};
  int threads = 2, reps = 5;
  int64_t mb = 512;
  std::vector<int> offsets = {0, 16, 48};
  app.add_option("--threads", threads, "Engine threads")->check(CLI::PositiveNumber);
  app.add_option("--mb", mb, "Megabytes of weights per product")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "Repetitions (the best is kept)")->check(CLI::PositiveNumber);
  app.add_option("--offsets", offsets, "Bytes past a cache line where the rows start")
      ->delimiter(',')
      ->check(CLI::Range(0, 63));
  CLI11_PARSE(app, argc, argv);
  infer::set_num_threads(threads);

  const size_t bytes = static_cast<size_t>(mb) << 20;
  // Room for the largest offset; 0x3c bytes make every F32 and BF16 value a small finite number.
  bench::HugePageBuffer buffer(bytes + 64, 0x3c);
  std::vector<Case> cases = {{"F32", tensor::DType::kF32, false},
                             {"BF16, fp32 products (widened)", tensor::DType::kBF16, false}};
  if (infer::cpu_has_native_bf16()) {
    cases.push_back({"BF16, BF16 dot products", tensor::DType::kBF16, true});
  }
  std::vector<float> x(kCols, 0.5f), y;
  fmt::print("threads {}, {} MB per product, best of {}, rows of {} values\n\n", threads, mb, reps,
             kCols);
  fmt::print("| weights | rows start | product GB/s | plain read GB/s | product / read |\n");
  fmt::print("|---|---:|---:|---:|---:|\n");
  for (const Case& c : cases) {
    infer::set_reduced_precision_products(c.reduced_precision);
    const int64_t row_bytes = kCols * static_cast<int64_t>(tensor::dtype_size(c.dtype));
    const int64_t rows = static_cast<int64_t>(bytes) / row_bytes;
    y.assign(static_cast<size_t>(rows), 0.0f);
    for (int offset : offsets) {
      const infer::WeightMatrix w{c.dtype, buffer.data() + offset, rows, kCols};
      double best = 0;
      for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        infer::matmul(w, x.data(), 1, y.data());
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, static_cast<double>(rows * row_bytes) / s / 1e9);
      }
      const double read = bench::read_bandwidth(
          buffer.data() + offset, static_cast<size_t>(rows * row_bytes), threads, reps);
      fmt::print("| {} | +{} B | {:.1f} | {:.1f} | {:.2f} |\n", c.name, offset, best, read,
                 best / read);
    }
  }
  return 0;
}
