// The CPU's peak arithmetic rate, measured (vlmo/bench.h: measure_cpu_peak): every thread runs a
// loop of independent multiply-adds on the widest vectors the CPU has for the precision, with
// enough accumulators to keep every pipe busy, so the loop runs at the core's issue rate.
// GCC 12 warns that its own intrinsics' headers read an uninitialised vector (their
// _mm512_undefined_* placeholders); nothing here reads one.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include "vlmo/bench.h"
#include "vlmo/cpu_features.h"
#include "vlmo/error.h"

namespace vlmo {

namespace {
constexpr int kAcc = 16;  // accumulators: latency 4 x 2 pipes = 8 in flight, twice that for margin
constexpr int64_t kIterations = 4000000;

// Each returns a value that depends on every accumulator, so no work can be dropped; the FLOP
// (or int8 op) count of one call is given beside it.
__attribute__((target("avx512f"))) float fma_avx512(int64_t n) {  // 16 lanes x 2 x kAcc per iteration
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(1.0f + 1e-7f * static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; ++k)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float fma_avx2(int64_t n) {  // 8 lanes x 2 x kAcc per iteration
  __m256 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_ps(1.0f + 1e-7f * static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; ++k)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  __m256 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0] + out[7];
}

// vdpbf16ps: 16 lanes, each 2 bf16 products added to an fp32 lane: 64 FLOP per instruction.
__attribute__((target("avx512f,avx512bf16"))) float dot_bf16(int64_t n) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80), b = (__m512bh)_mm512_set1_epi16(0x3380);  // 1.0, ~6e-8
  for (int64_t k = 0; k < n; ++k)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

// vpdpbusd: 16 lanes, each 4 u8 x s8 products added to an int32 lane: 128 ops per instruction.
__attribute__((target("avx512f,avx512vnni"))) float dot_int8(int64_t n) {
  __m512i acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
  for (int64_t k = 0; k < n; ++k)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  __m512i s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_epi32(s, acc[i]);
  return static_cast<float>(_mm512_reduce_add_epi32(s));
}

// vpmaddubsw: 32 u8 x s8 products added in pairs to 16-bit lanes: 64 ops per instruction.
__attribute__((target("avx2"))) float madd_int8_avx2(int64_t n) {
  __m256i acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_epi16(static_cast<short>(i));
  const __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(0);
  for (int64_t k = 0; k < n; ++k)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_add_epi16(acc[i], _mm256_maddubs_epi16(a, b));
  __m256i s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_epi16(s, acc[i]);
  return static_cast<float>(_mm256_extract_epi16(s, 0));
}

struct Kernel {
  float (*run)(int64_t);
  double ops_per_iteration;
  const char* isa;
};

// Runs `k` on `threads` threads at once; the ops of all of them over the slowest one's time.
double rate(const Kernel& k, int threads) {
  std::vector<double> seconds(threads);
  std::vector<float> sink(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      const auto t0 = std::chrono::steady_clock::now();
      sink[t] = k.run(kIterations);
      seconds[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  for (auto& th : pool) th.join();
  volatile float keep = sink[0];
  (void)keep;
  return k.ops_per_iteration * static_cast<double>(kIterations) * threads / *std::max_element(seconds.begin(), seconds.end());
}
}  // namespace

PeakRate measure_cpu_peak(const std::string& precision, int threads) {
  if (threads < 1) throw Error(cat("measure_cpu_peak: threads must be at least 1, got ", threads));
  const CpuFeatures& f = cpu_features();
  std::optional<Kernel> k;
  if (precision == "bf16" && f.has("avx512_bf16")) k = Kernel{dot_bf16, 64.0 * kAcc, "avx512_bf16 (vdpbf16ps)"};
  else if (precision == "int8" && f.has("avx512_vnni")) k = Kernel{dot_int8, 128.0 * kAcc, "avx512_vnni (vpdpbusd)"};
  else if (precision == "int8" && f.has("avx2")) k = Kernel{madd_int8_avx2, 64.0 * kAcc, "avx2 (vpmaddubsw)"};
  else if (f.has("avx512f")) k = Kernel{fma_avx512, 32.0 * kAcc, "avx512f (vfmadd, fp32)"};
  else if (f.has("avx2") && f.has("fma")) k = Kernel{fma_avx2, 16.0 * kAcc, "avx2 (vfmadd, fp32)"};
  PeakRate r;
  r.threads = threads;
  if (!k) return r;  // no vector kernel for this CPU: flops 0, percent_of_peak left out
  r.isa = k->isa;
  for (int rep = 0; rep < 3; ++rep) r.flops = std::max(r.flops, rate(*k, threads));
  return r;
}

}  // namespace vlmo
