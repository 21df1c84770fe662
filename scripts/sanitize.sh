#!/usr/bin/env bash
# Checking build: clang with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/, or VLMO_ASAN_DIR), the unit
# tests under them, then every libFuzzer target for FUZZ_SECONDS each (default 30) from the seed
# corpora in fuzz/corpus/. A sanitizer report, a crash or a fuzzer finding fails the script;
# findings are kept in its fuzz-findings/.
# Usage: scripts/sanitize.sh [FUZZ_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${1:-30}
B=${VLMO_ASAN_DIR:-build-asan}  # the build folder (scripts/test.sh's Debian root has its own)
. scripts/compiler_cache.sh
scripts/setup.sh --no-build  # the libraries the build needs
# clang, its libFuzzer / sanitizer runtimes and its OpenMP (FAISS asks for it) -- the release's default clang: 14 on Debian 12, 19 on 13.
# llvm: llvm-symbolizer, which turns a sanitizer's or fuzzer's report into file:line.
scripts/apt_install.sh clang libclang-rt-dev libomp-dev llvm "${CACHE_PACKAGES[@]}"
cmake -S . -B "$B" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DVLMO_SANITIZE=ON -DVLMO_FUZZ=ON "${CACHE_LAUNCHER[@]}" >/dev/null
cache_stats_start
cmake --build "$B" -j "$(nproc)"
cache_stats sanitize

# LibTorch is not instrumented; its one-time allocations at exit are not ours to report.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "sanitize: unit tests, and the program on bad data, bad arguments and a full disk, under ASan + UBSan"
ctest --test-dir "$B" -L fast --no-tests=error --output-on-failure -j "$(nproc)"
ctest --test-dir "$B" -R 'cli\.faults\.(cases|disk)' --no-tests=error --output-on-failure -j "$(nproc)"

mkdir -p $B/fuzz-findings
for name in safetensors torch_checkpoint tar json_lines image tokenizer serve; do
  work=$B/fuzz-corpus/$name
  mkdir -p "$work"
  echo "sanitize: fuzz_$name for ${FUZZ_SECONDS} s"
  $B/fuzz/fuzz_$name -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix=$B/fuzz-findings/$name- -print_final_stats=1 "$work" "fuzz/corpus/$name" 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|.*ERROR)' || true
  if ls $B/fuzz-findings/$name-* >/dev/null 2>&1; then
    echo "sanitize: fuzz_$name found a failing input: $(ls $B/fuzz-findings/$name-* | head -1)" >&2
    exit 1
  fi
done
echo "sanitize: all passed"
