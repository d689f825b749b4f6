// Memory read bandwidth for the inference benchmarks: the bound that decoding (which streams
// every weight once per token) is measured against. This machine's bandwidth moves by up to 2x
// within minutes (other tenants share the memory bus), so benchmarks keep one buffer and measure
// right beside each run.
#pragma once

// GCC 12 reports its own intrinsic headers' "undefined register" idiom as uninitialised use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"

namespace amalgam::bench {

// Best-of-`reps` read bandwidth (GB/s) of `bytes` bytes at `p` with `threads` threads: each
// thread sums its contiguous share into 128 independent lanes (8 vector accumulators, no
// dependency stalls).
inline double read_bandwidth(const uint8_t* p, size_t bytes, int threads, int reps = 5) {
  using Clock = std::chrono::steady_clock;
  const float* f = reinterpret_cast<const float*>(p);
  const size_t blocks = bytes / sizeof(float) / 128;
  double best = 0;
  std::vector<float> sums(static_cast<size_t>(threads));
  for (int rep = 0; rep < reps; ++rep) {
    auto sum = [&](int t) {
      const size_t begin = blocks * t / threads, end = blocks * (t + 1) / threads;
#ifdef __AVX512F__
      __m512 acc[8];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (size_t block = begin; block < end; ++block) {
        const float* q = f + block * 128;
        for (int k = 0; k < 8; ++k) acc[k] = _mm512_add_ps(acc[k], _mm512_loadu_ps(q + 16 * k));
      }
      for (int k = 1; k < 8; ++k) acc[0] = _mm512_add_ps(acc[0], acc[k]);
      sums[t] = _mm512_reduce_add_ps(acc[0]);
#else
      float acc[128] = {};
      for (size_t block = begin; block < end; ++block) {
        const float* q = f + block * 128;
        for (int i = 0; i < 128; ++i) acc[i] += q[i];
      }
      sums[t] = 0;
      for (float a : acc) sums[t] += a;
#endif
    };
    const auto t0 = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 1; t < threads; ++t) workers.emplace_back(sum, t);
    sum(0);
    for (auto& w : workers) w.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, static_cast<double>(bytes) / seconds / 1e9);
  }
  return best;
}

// Anonymous memory on transparent huge pages, filled with `fill` bytes: the best case of
// streaming memory.
class HugePageBuffer {
 public:
  explicit HugePageBuffer(size_t bytes, uint8_t fill = 1) : size_(bytes) {
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("cannot allocate {} bytes", size_);
    data_ = static_cast<uint8_t*>(p);
    ::madvise(data_, size_, MADV_HUGEPAGE);  // advisory
    std::memset(data_, fill, size_);
  }
  ~HugePageBuffer() { ::munmap(data_, size_); }
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  uint8_t* data_ = nullptr;
};

// The read bandwidth of a 1 GiB huge-page buffer kept for repeated measurements.
class HugePageBandwidth {
 public:
  explicit HugePageBandwidth(int threads) : buffer_(size_t{1} << 30), threads_(threads) {}
  double measure() const { return read_bandwidth(buffer_.data(), buffer_.size(), threads_); }

 private:
  HugePageBuffer buffer_;
  int threads_;
};

}  // namespace amalgam::bench
