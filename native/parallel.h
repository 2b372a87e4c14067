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

// Threads for `count` items of at least `perThread` each, at most `maxThreads` and not
// more than the CPUs when `cpuBound` (a wait-bound job, like removals, wants more).
inline size_t ThreadsFor(size_t count, size_t perThread, size_t maxThreads, bool cpuBound) {
  size_t n = std::max<size_t>(1, count / std::max<size_t>(1, perThread));
  if (cpuBound) {
    const unsigned cpus = std::thread::hardware_concurrency();
    n = std::min<size_t>(n, cpus > 0 ? cpus : 1);
  }
  return std::min(n, std::max<size_t>(1, maxThreads));
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
