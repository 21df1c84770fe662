#include "vlmo/threads.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace vlmo {

int init_threads(int n) {
  if (n <= 0) {
    const char* env = std::getenv("OMP_NUM_THREADS");
    n = env ? std::atoi(env) : 0;
    if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
    if (n <= 0) n = 1;
  }
  at::set_num_threads(n);
  return n;
}

namespace {
bool malloc_tuned_by_user() {
  for (const char* v :
       {"VLMO_SYSTEM_MALLOC", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"})
    if (std::getenv(v)) return true;
  return false;
}
}  // namespace

bool keep_freed_host_memory() {
#if defined(__GLIBC__)
  if (malloc_tuned_by_user()) return false;
  // mallopt returns 1 on success; -1 as the trim threshold disables trimming (mallopt(3)).
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1;
#else
  return false;
#endif
}

bool return_freed_host_memory() {
#if defined(__GLIBC__)
  if (malloc_tuned_by_user()) return false;
  // Fixed thresholds (a set value also stops glibc raising them after each large free).
  return mallopt(M_MMAP_MAX, 65536) == 1 && mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 4 << 20) == 1;
#else
  return false;
#endif
}

}  // namespace vlmo
