// The engine's worker threads. A job is a number of chunks; the calling thread and the workers
// claim chunks from a shared counter, and the call returns when every chunk is done. Unlike an
// OpenMP parallel region, completion never waits for a thread that has not claimed anything: on
// a machine shared with other processes, a worker that is not scheduled in time simply takes no
// part, instead of stalling every region of a decode step until it runs again. Idle workers spin
// for a few tens of microseconds (decode issues jobs back to back) and then sleep.
//
// Jobs are numbered (the generation). Every value a worker claims against carries the
// generation it belongs to, so a worker that was descheduled for a long time and comes back
// with a finished job's generation can claim nothing: it never runs, or counts as done, a chunk
// of a later job.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace amalgam::infer {

class ThreadPool {
 public:
  // `threads` includes the calling thread: threads - 1 workers are started.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls f(chunk, worker) for every chunk in [0, chunks). `worker`, in [0, threads()), tells
  // apart the threads that run chunks of this call and of the call around it, if any (the
  // caller is 0, and so is a second caller that runs inline while the pool is busy). Runs inline
  // when there is one thread, one chunk, when called from inside a chunk (with that chunk's
  // worker index), or while another thread is using the pool. If a chunk throws, chunks not yet
  // started are skipped and the first exception is rethrown here once the started ones are done.
  template <typename F>
  void run(int64_t chunks, F&& f) {
    run_erased(chunks, &f, [](void* ctx, int64_t chunk, int worker) {
      (*static_cast<std::remove_reference_t<F>*>(ctx))(chunk, worker);
    });
  }

 private:
  using Call = void (*)(void*, int64_t, int);
  void run_erased(int64_t chunks, void* ctx, Call call);
  void worker_main(int worker);
  // Claims and runs chunks of job `generation` until none are left.
  void work(uint32_t generation, int worker);
  // Runs one claimed chunk; an exception is kept for the caller.
  void run_chunk(int64_t chunk, int worker);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  // The current job. ctx_/call_ are written before the job is published and read only by a
  // thread that has claimed one of its chunks, so never while they change; error_ is then
  // written by the one thread that sets failed_, and read by the caller once done_ is complete.
  void* ctx_ = nullptr;
  Call call_ = nullptr;
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
  // generation << 32 | chunk count, and generation << 32 | next chunk: a claim is made only if
  // both carry the worker's generation, so it can never be checked against the count of
  // another job.
  std::atomic<uint64_t> job_{0};
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};  // chunks of the current job finished or skipped
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

// The pool of the inference engine.
ThreadPool& engine_pool();
// Sets the number of threads of the engine (the caller included); OpenBLAS runs single-threaded
// inside the pool's chunks. Not to be called while a forward pass runs.
void set_num_threads(int threads);
int num_threads();
// All hardware threads: the pool's size until set_num_threads is called.
int default_num_threads();

}  // namespace amalgam::infer
