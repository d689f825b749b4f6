// Single-thread throughput of the decode products of quantised weights: the integer dot products
// (infer/quant_dot.h, every kernel set this CPU runs) against dequantising rows to fp32 and the
// fp32 gemv (the path with the reduced-precision switch off), streaming a matrix of `--mb`
// megabytes (larger than the caches) of 2048-wide rows once per repetition, one activation row.
// Reports GB/s of weights per second of the thread's CPU time (so a busy machine slows the
// figures less than wall time would) and the best of `--reps`.
//
//   bench_quant_dot [--mb 256] [--reps 5] [--types "q8_0 q4_k q6_k"]

#include "infer/quant_dot.h"

#include <fmt/format.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <random>
#include <sstream>
#include <vector>

#include "gguf/format.h"
#include "gguf/quant.h"
#include "infer/kernels.h"
#include "infer/matmul.h"

using namespace amalgam;

namespace {

double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

constexpr int64_t kCols = 2048;

// Best GB/s over `reps` runs of `f` (which reads `bytes` of weights).
template <typename F>
double best_gbps(int reps, size_t bytes, F&& f) {
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = cpu_seconds();
    f();
    best = std::max(best, static_cast<double>(bytes) / (cpu_seconds() - t0) / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Integer dot products of quantised weights against dequantise-then-fp32"};
  int64_t mb = 256;
  int reps = 5;
  std::string types = "q8_0 q4_0 q5_0 q5_1 q4_k q5_k q6_k";
  app.add_option("--mb", mb, "Megabytes of weights streamed per repetition");
  app.add_option("--reps", reps, "Repetitions (best reported)");
  app.add_option("--types", types, "Block types");
  CLI11_PARSE(app, argc, argv);

  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(kCols);
  for (float& v : x) v = dist(rng);

  fmt::print(
      "single thread, {} MB of {}-wide rows per repetition, best of {}, GB/s of weights "
      "per CPU second\n",
      mb, kCols, reps);
  fmt::print("| type | dequantise + fp32 gemv |");
  const auto sets = infer::available_quant_dot();
  for (const auto* k : sets) fmt::print(" integer {} |", k->name);
  fmt::print("\n|---|---:|");
  for (size_t i = 0; i < sets.size(); ++i) fmt::print("---:|");
  fmt::print("\n");

  std::istringstream names(types);
  for (std::string name; names >> name;) {
    gguf::GgmlType type{};
    bool found = false;
    for (int t = 0; t < 64 && !found; ++t) {
      const auto candidate = static_cast<gguf::GgmlType>(t);
      if (infer::activation_block(candidate) == 0) continue;
      std::string n(gguf::type_name(candidate));
      std::transform(n.begin(), n.end(), n.begin(), ::tolower);
      if (n == name) type = candidate, found = true;
    }
    if (!found) {
      fmt::print(stderr, "bench_quant_dot: unknown block type '{}'\n", name);
      return 2;
    }
    // One small quantised tile repeated: quantising hundreds of megabytes would take minutes.
    const int64_t tile_rows = 64;
    const size_t rb = gguf::row_bytes(type, kCols);
    std::vector<float> src(static_cast<size_t>(tile_rows * kCols));
    for (float& v : src) v = dist(rng);
    std::vector<uint8_t> tile(rb * tile_rows);
    for (int64_t r = 0; r < tile_rows; ++r) {
      gguf::quantize_row(type, src.data() + r * kCols, kCols, tile.data() + r * rb);
    }
    const int64_t rows = std::max<int64_t>(tile_rows, (mb << 20) / rb / tile_rows * tile_rows);
    std::vector<uint8_t> w(rb * rows);
    for (int64_t r = 0; r < rows; r += tile_rows) {
      std::copy(tile.begin(), tile.end(), w.begin() + static_cast<int64_t>(r * rb));
    }
    std::vector<float> y(static_cast<size_t>(rows));
    const size_t bytes = w.size();

    const infer::WeightMatrix m{tensor::DType::kF32, w.data(), rows, kCols, type};
    const double fp32 = best_gbps(reps, bytes, [&] {
      thread_local std::vector<float> f(static_cast<size_t>(16 * kCols));
      for (int64_t r = 0; r < rows; r += 16) {
        infer::rows_to_f32(m, r, 16, f.data());
        infer::best_kernels().gemv(tensor::DType::kF32, reinterpret_cast<const uint8_t*>(f.data()),
                                   16, kCols, x.data(), 1, kCols, y.data() + r, rows);
      }
    });
    fmt::print("| {} | {:.2f} |", gguf::type_name(type), fp32);
    infer::QuantizedActivations xq;
    infer::quantize_activations(x.data(), 1, kCols, infer::activation_block(type), &xq);
    const infer::QuantRow row = xq.row(0);
    for (const auto* k : sets) {
      // The scalar twin is slow: a sixteenth of the matrix is enough to time it.
      const int64_t n = k == &infer::scalar_quant_dot() ? rows / 16 : rows;
      const double g =
          best_gbps(reps, rb * n, [&] { k->gemv(type, w.data(), n, kCols, &row, 1, y.data(), n); });
      fmt::print(" {:.2f} |", g);
    }
    fmt::print("\n");
  }
  return 0;
}
