#include "infer/gemm.h"

#include <omp.h>

#include <atomic>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "core/error.h"

namespace amalgam::infer {

namespace {

using dnnl::memory;

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::atomic<bool> g_reduced_precision{true};

// oneDNN parallelises a call over omp_get_max_threads() threads; the caller is already one thread
// of the engine's pool, so the call runs on it alone. The setting is the calling thread's own
// (OpenMP keeps it per thread) and is restored for other OpenMP code running on that thread.
class SingleThreaded {
 public:
  SingleThreaded() : previous_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreaded() { omp_set_num_threads(previous_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int previous_;
};

// One matmul primitive per shape and type, created (and JIT-compiled) once per thread.
struct Shape {
  memory::data_type type;
  int64_t n, rows, cols;
  bool operator<(const Shape& o) const {
    return std::tie(type, n, rows, cols) < std::tie(o.type, o.n, o.rows, o.cols);
  }
};

struct Prepared {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
};

const Prepared& prepared(const Shape& s) {
  thread_local std::map<Shape, Prepared> cache;
  auto it = cache.find(s);
  if (it != cache.end()) return it->second;
  // x (n, cols) row-major; w^T (cols, rows) as a view of w (rows, cols): strides {1, cols}.
  const memory::desc x(memory::dims{s.n, s.cols}, s.type, memory::dims{s.cols, 1});
  const memory::desc w(memory::dims{s.cols, s.rows}, s.type, memory::dims{1, s.cols});
  const memory::desc y(memory::dims{s.n, s.rows}, memory::data_type::f32,
                       memory::dims{s.rows, 1});
  try {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(x, w, y), cpu_engine());
    dnnl::matmul primitive(pd);
    return cache.emplace(s, Prepared{std::move(pd), std::move(primitive)}).first->second;
  } catch (const dnnl::error& e) {
    fail("matrix product {}x{}x{}: oneDNN could not create it: {}", s.n, s.rows, s.cols,
         e.what());
  }
}

void run(memory::data_type type, int64_t n, int64_t rows, int64_t cols, const void* x,
         const void* w, float* y) {
  if (n <= 0 || rows <= 0) return;
  SingleThreaded single;
  const Prepared& p = prepared(Shape{type, n, rows, cols});
  thread_local dnnl::stream stream(cpu_engine());
  memory xm(p.pd.src_desc(), cpu_engine(), const_cast<void*>(x));
  memory wm(p.pd.weights_desc(), cpu_engine(), const_cast<void*>(w));
  memory ym(p.pd.dst_desc(), cpu_engine(), y);
  p.primitive.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
  stream.wait();
}

}  // namespace

void gemm_f32(int64_t n, int64_t rows, int64_t cols, const float* x, const float* w, float* y) {
  run(memory::data_type::f32, n, rows, cols, x, w, y);
}

void gemm_bf16(int64_t n, int64_t rows, int64_t cols, const uint16_t* x, const uint16_t* w,
               float* y) {
  run(memory::data_type::bf16, n, rows, cols, x, w, y);
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  SingleThreaded single;
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k,
                                          alpha, a, lda, b, ldb, beta, c, ldc);
  AMALGAM_CHECK(status == dnnl_success, "matrix product {}x{}x{}: oneDNN sgemm failed ({})", m, n,
                k, static_cast<int>(status));
}

bool cpu_has_native_bf16() {
  // oneDNN's ISA values are nested bit sets: AMX includes AVX512-BF16.
  static const bool has = [] {
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
    return (isa & bf16) == bf16;
  }();
  return has;
}

void set_reduced_precision_products(bool enabled) { g_reduced_precision = enabled; }
bool reduced_precision_products() { return g_reduced_precision && cpu_has_native_bf16(); }

}  // namespace amalgam::infer
