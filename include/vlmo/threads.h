// CPU thread set-up: LibTorch starts with one intra-op thread on some machines.
#pragma once

namespace vlmo {
// n > 0: use n threads; n == 0: OMP_NUM_THREADS if set, else every core. Returns the count.
int init_threads(int n = 0);
}  // namespace vlmo
