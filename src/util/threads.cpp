#include "vlmo/threads.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <thread>

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

}  // namespace vlmo
