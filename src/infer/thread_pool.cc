#include "infer/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <utility>

namespace amalgam::infer {

namespace {

// The worker index of the chunk this thread is running, or -1: a run() from inside a chunk
// runs inline under the same index, so indices stay unique among the threads in chunks.
thread_local int t_chunk_worker = -1;

std::mutex g_pool_mutex;
std::unique_ptr<ThreadPool> g_pool;

constexpr auto kWorkerSpin = std::chrono::microseconds(50);
constexpr auto kCallerSpin = std::chrono::microseconds(20);

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { worker_main(w); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work(uint32_t generation, int worker) {
  uint64_t cur = claim_.load(std::memory_order_acquire);
  while (true) {
    if (static_cast<uint32_t>(cur >> 32) != generation) return;
    // claim_ was read with acquire, so job_ holds this generation's count or a later job's, and
    // a later job exists only once every chunk of this one is done.
    const uint64_t job = job_.load(std::memory_order_relaxed);
    if (static_cast<uint32_t>(job >> 32) != generation) return;
    const int64_t chunk = static_cast<int64_t>(cur & 0xffffffffu);
    if (chunk >= static_cast<int64_t>(job & 0xffffffffu)) return;
    if (!claim_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) continue;
    run_chunk(chunk, worker);
    done_.fetch_add(1, std::memory_order_release);
    cur = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::run_chunk(int64_t chunk, int worker) {
  // After a failure the remaining chunks are skipped, but still counted as done, so that the
  // caller's wait ends exactly when no thread is inside a chunk any more.
  if (failed_.load(std::memory_order_relaxed)) return;
  t_chunk_worker = worker;
  try {
    call_(ctx_, chunk, worker);
  } catch (...) {
    if (!failed_.exchange(true, std::memory_order_relaxed)) error_ = std::current_exception();
  }
  t_chunk_worker = -1;
}

void ThreadPool::worker_main(int worker) {
  uint32_t seen = 0;
  while (true) {
    uint32_t g = generation_.load(std::memory_order_acquire);
    if (g == seen) {
      // Spin briefly: the next job of a decode step usually follows within microseconds.
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; g == seen; ++i) {
        _mm_pause();
        g = generation_.load(std::memory_order_acquire);
        if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kWorkerSpin) break;
      }
    }
    if (g == seen) {
      sleepers_.fetch_add(1);
      if (generation_.load() == seen) generation_.wait(seen);
      sleepers_.fetch_sub(1);
      continue;
    }
    seen = g;
    if (stop_.load()) return;
    work(g, worker);
  }
}

void ThreadPool::run_erased(int64_t chunks, void* ctx, Call call) {
  if (chunks <= 0) return;
  if (t_chunk_worker >= 0) {
    for (int64_t c = 0; c < chunks; ++c) call(ctx, c, t_chunk_worker);
    return;
  }
  std::unique_lock<std::mutex> lock(run_mutex_, std::defer_lock);
  if (workers_.empty() || chunks == 1 || chunks >= (int64_t{1} << 32) || !lock.try_lock()) {
    for (int64_t c = 0; c < chunks; ++c) call(ctx, c, 0);
    return;
  }
  ctx_ = ctx;
  call_ = call;
  error_ = nullptr;
  failed_.store(false, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  const uint32_t generation = generation_.load(std::memory_order_relaxed) + 1;
  job_.store(static_cast<uint64_t>(generation) << 32 | static_cast<uint64_t>(chunks),
             std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(generation) << 32, std::memory_order_release);
  generation_.store(generation);
  if (sleepers_.load() > 0) generation_.notify_all();
  work(generation, 0);
  // Wait for chunks claimed by workers; yield after a short spin so that a worker preempted on
  // this core can finish. done_ counts only this job's chunks, each once, so it reaches
  // `chunks` exactly.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; done_.load(std::memory_order_acquire) != chunks; ++i) {
    if (i < 64 || std::chrono::steady_clock::now() - start < kCallerSpin) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace amalgam::infer

namespace amalgam::infer {

ThreadPool& engine_pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = std::make_unique<ThreadPool>(default_num_threads());
  return *g_pool;
}

int default_num_threads() {
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

void set_num_threads(int threads) {
  threads = std::max(1, threads);
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool || g_pool->threads() != threads) {
    g_pool.reset();
    g_pool = std::make_unique<ThreadPool>(threads);
  }
}

int num_threads() { return engine_pool().threads(); }

}  // namespace amalgam::infer
