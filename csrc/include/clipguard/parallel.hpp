// A minimal static-partition parallel_for on std::thread. The kernels run with the GIL released,
// so several Python threads may call them at once; each call owns its workers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace clipguard {

// Number of worker threads: CLIPGUARD_NUM_THREADS if set, else all hardware threads.
inline int num_threads() {
  if (const char* env = std::getenv("CLIPGUARD_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Calls fn(begin, end) on disjoint chunks of [0, n). Work smaller than `grain` items per thread
// stays on the calling thread (thread start-up costs more than it saves). Exceptions thrown by
// workers are rethrown on the caller.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  const int64_t max_workers = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int workers = static_cast<int>(std::min<int64_t>(num_threads(), max_workers));
  if (workers <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  const int64_t chunk = (n + workers - 1) / workers;
  auto run = [&](int64_t b, int64_t e) {
    try {
      fn(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  for (int w = 1; w < workers; ++w) {
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back(run, b, e);
  }
  run(0, std::min(n, chunk));
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace clipguard
