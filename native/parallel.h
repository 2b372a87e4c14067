// Many independent syscalls at once (LOOP_CTL_REMOVE of a destroy, the sysfs reads and
// LOOP_GET_STATUS64s of a listing): the kernel waits or works for each, and on several
// threads those overlap. Worker threads make plain syscalls only: no JS, no N-API.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace loopfs {

// Threads for a listing's batch of `count` items (sysfs reads, LOOP_GET_STATUS64s): the
// kernel's CPU work, so no more threads than CPUs, at most 4, and one per 128 items at least
// (a thread's start costs about as much as 100 of those reads), so a small batch stays on
// the calling thread. Removals, which wait rather than work, choose their own count.
inline size_t ListingThreads(size_t count) {
  constexpr size_t kItemsPerThread = 128;
  constexpr size_t kMaxThreads = 4;
  const unsigned cpus = std::thread::hardware_concurrency();
  return std::max<size_t>(1, std::min<size_t>({count / kItemsPerThread, cpus > 0 ? cpus : 1, kMaxThreads}));
}

// work(worker, i) for every i in [0, count), on up to `threads` threads (the calling one
// among them, as worker 0), each taking the next index. Returns when every index is done.
// A thread that cannot be started leaves its share to the others.
template <typename Work>
void ParallelFor(size_t count, size_t threads, Work&& work) {
  threads = std::max<size_t>(1, std::min(threads, count));
  std::atomic<size_t> next{0};
  auto run = [&](size_t worker) {
    for (size_t i = next++; i < count; i = next++) work(worker, i);
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; t++) {
    try {
      pool.emplace_back(run, t);
    } catch (...) {
      break;
    }
  }
  run(0);
  for (auto& th : pool) th.join();
}

}  // namespace loopfs
