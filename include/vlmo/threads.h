// CPU set-up: LibTorch starts with one intra-op thread on some machines, and glibc's malloc
// hands large tensors back to the kernel on every free.
#pragma once

namespace vlmo {
// n > 0: use n threads; n == 0: OMP_NUM_THREADS if set, else every core. Returns the count.
int init_threads(int n = 0);

// Keeps freed host memory in the process for reuse (glibc: no mmap for large blocks, no trimming
// of the heap). Without it every tensor above glibc's mmap threshold (at most 32 MiB) is mapped
// and unmapped again each step, and its pages are faulted in and zeroed anew: a VLMo-Base
// pre-training step on 2 threads spent ~15 % of its time there (8.3 M minor faults per run). The process
// then keeps its peak memory until it exits, as LibTorch's CUDA caching allocator does on a GPU.
// Does nothing (returns false) when the user tunes malloc already (MALLOC_MMAP_MAX_,
// MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES), when VLMO_SYSTEM_MALLOC is set,
// off glibc, or when another allocator (a sanitizer's, jemalloc) ignores mallopt.
bool keep_freed_host_memory();
// The opposite, for a long-running server whose peaks come from its clients: blocks of 1 MiB and
// more are mapped and unmapped, and free heap beyond 4 MiB goes back to the kernel, so a burst of
// large requests does not stay in the process. Same conditions as above.
bool return_freed_host_memory();
}  // namespace vlmo
