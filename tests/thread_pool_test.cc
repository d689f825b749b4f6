// The engine's work-claiming pool: every chunk runs exactly once, nested and concurrent callers
// run inline, exceptions reach the caller. Each test runs under a watchdog, so that a lost
// wake-up or a livelock fails the test binary within a bounded time instead of hanging the
// suite.
#include "infer/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "infer/matmul.h"

namespace amalgam::infer {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Aborts the process when it is not destroyed within `limit`. A test that hangs can neither
// report nor be stopped from inside, so aborting (which gtest and ctest record as a failure of
// this test) is the only way to end it. The limit is generous: these tests take about a second,
// but share two cores with builds and other tests.
class Watchdog {
 public:
  explicit Watchdog(seconds limit) : thread_([this, limit] { watch(limit); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

 private:
  void watch(seconds limit) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, limit, [&] { return finished_; })) {
      const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
      std::fprintf(stderr, "watchdog: %s.%s still running after %lld s: the pool hangs\n",
                   test->test_suite_name(), test->name(), static_cast<long long>(limit.count()));
      std::abort();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  bool finished_ = false;
  std::thread thread_;
};

constexpr seconds kLimit{120};

// Many jobs of varied sizes back to back: each one follows a smaller one (the shape in which a
// late worker of the previous job could once claim a chunk of the next), workers alternate
// between spinning and sleeping, and with more threads than the machine has cores they are
// preempted between claiming a chunk and finishing it.
TEST(ThreadPoolTest, RunsEveryChunkOnceUnderStress) {
  Watchdog watchdog(kLimit);
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    ASSERT_EQ(pool.threads(), threads);
    for (int job = 0; job < 20000; ++job) {
      const int64_t chunks = job % 17;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(chunks));
      std::atomic<int> bad_worker{0};
      pool.run(chunks, [&](int64_t c, int worker) {
        if (worker < 0 || worker >= threads) ++bad_worker;
        ++hits[c];
        if ((job * 31 + c) % 97 == 0) std::this_thread::yield();
      });
      for (int64_t c = 0; c < chunks; ++c) {
        ASSERT_EQ(hits[c].load(), 1) << "threads " << threads << " job " << job << " chunk " << c;
      }
      ASSERT_EQ(bad_worker.load(), 0);
      if (job % 1000 == 0) std::this_thread::sleep_for(milliseconds(1));  // workers fall asleep
    }
  }
}

// Slow chunks, so that every thread takes part: each worker index is used by one thread at a
// time, and a chunk's nested run() executes inline on the same thread with the same index.
TEST(ThreadPoolTest, NestedRunsInlineWithTheChunksWorkerIndex) {
  Watchdog watchdog(kLimit);
  constexpr int kThreads = 3;
  ThreadPool pool(kThreads);
  std::atomic<int> inner{0}, wrong_index{0}, overlaps{0};
  std::atomic<int> busy[kThreads] = {};
  pool.run(12, [&](int64_t, int worker) {
    if (busy[worker].fetch_add(1) != 0) ++overlaps;
    const auto outer_thread = std::this_thread::get_id();
    pool.run(5, [&](int64_t, int inner_worker) {
      if (inner_worker != worker || std::this_thread::get_id() != outer_thread) ++wrong_index;
      ++inner;
    });
    std::this_thread::sleep_for(milliseconds(2));
    --busy[worker];
  });
  EXPECT_EQ(inner.load(), 60);
  EXPECT_EQ(wrong_index.load(), 0);
  EXPECT_EQ(overlaps.load(), 0);
}

// Several threads call run() at once: one gets the workers, the others run inline; all finish.
TEST(ThreadPoolTest, ConcurrentCallersAllComplete) {
  Watchdog watchdog(kLimit);
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::atomic<int64_t> sum{0};
    auto caller = [&] {
      for (int j = 0; j < 300; ++j) pool.run(8, [&](int64_t c, int) { sum += c; });
    };
    std::thread a(caller), b(caller), c(caller);
    a.join();
    b.join();
    c.join();
    EXPECT_EQ(sum.load(), 3 * 300 * 28) << threads;
  }
}

// An Error thrown in a chunk reaches the caller, whichever thread ran the chunk; chunks not yet
// started are skipped; the pool (and the calling thread) work normally afterwards.
TEST(ThreadPoolTest, ErrorInAChunkReachesTheCaller) {
  Watchdog watchdog(kLimit);
  constexpr int kThreads = 3;
  ThreadPool pool(kThreads);

  // Every chunk fails: each thread starts at most one.
  std::atomic<int> started{0};
  try {
    pool.run(100, [&](int64_t c, int) {
      ++started;
      std::this_thread::sleep_for(milliseconds(1));
      fail("chunk {} failed", c);
    });
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("failed"), std::string::npos) << e.what();
  }
  EXPECT_GE(started.load(), 1);
  EXPECT_LE(started.load(), kThreads);

  // Only a worker's chunk fails (repeated until a worker takes part): the error still arrives.
  bool worker_threw = false;
  for (int attempt = 0; attempt < 1000 && !worker_threw; ++attempt) {
    try {
      pool.run(16, [&](int64_t c, int worker) {
        if (worker != 0) fail("chunk {} failed on worker {}", c, worker);
        std::this_thread::sleep_for(milliseconds(1));
      });
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("on worker"), std::string::npos) << e.what();
      worker_threw = true;
    }
  }
  EXPECT_TRUE(worker_threw) << "no worker took part in 1000 jobs";

  // A failure inside a nested (inline) run propagates through the outer chunk.
  EXPECT_THROW(pool.run(4,
                        [&](int64_t, int) {
                          pool.run(3, [](int64_t c, int) {
                            if (c == 2) fail("inner chunk failed");
                          });
                        }),
               Error);

  // Afterwards the pool runs every chunk once, and the calling thread, which threw from inside
  // a chunk, still hands chunks to the workers instead of running them inline as if nested.
  bool workers_joined = false;
  for (int attempt = 0; attempt < 1000 && !workers_joined; ++attempt) {
    std::vector<std::atomic<int>> hits(8);
    std::atomic<bool> on_worker{false};
    pool.run(8, [&](int64_t c, int worker) {
      ++hits[c];
      if (worker != 0) on_worker = true;
      std::this_thread::sleep_for(milliseconds(1));
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    workers_joined = on_worker;
  }
  EXPECT_TRUE(workers_joined);
}

// The engine's own users: a kernel that fails inside the chunks of a parallel matmul (weights
// of a type the kernels cannot read) raises an Error in the caller, on both matmul paths.
TEST(ThreadPoolTest, KernelErrorInAParallelMatmulReachesTheCaller) {
  Watchdog watchdog(kLimit);
  set_num_threads(2);
  const int64_t rows = 1024, cols = 128;  // enough work for the pool, eight row chunks
  std::vector<uint8_t> bytes(static_cast<size_t>(rows * cols) * 8);
  const WeightMatrix w{tensor::DType::kF64, bytes.data(), rows, cols};
  for (int64_t n : {1, 16}) {  // gemv path, blocked sgemm path
    std::vector<float> x(static_cast<size_t>(n * cols), 1.0f), y(static_cast<size_t>(n * rows));
    for (int repeat = 0; repeat < 50; ++repeat) {
      EXPECT_THROW(matmul(w, x.data(), n, y.data()), Error) << n;
    }
  }
  set_num_threads(default_num_threads());
}

// Pools are made and destroyed with workers spinning, asleep or just woken.
TEST(ThreadPoolTest, DestroysPromptlyInAnyState) {
  Watchdog watchdog(kLimit);
  for (int i = 0; i < 200; ++i) {
    ThreadPool pool(1 + i % 4);
    std::atomic<int> count{0};
    if (i % 3 != 0) pool.run(1 + i % 9, [&](int64_t, int) { ++count; });
    if (i % 5 == 0) std::this_thread::sleep_for(milliseconds(1));
    EXPECT_EQ(count.load(), i % 3 != 0 ? 1 + i % 9 : 0);
  }
}

}  // namespace
}  // namespace amalgam::infer
