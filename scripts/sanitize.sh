#!/usr/bin/env bash
# Checking build: clang with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), the unit
# tests under them, then every libFuzzer target for FUZZ_SECONDS each (default 30) from the seed
# corpora in fuzz/corpus/. A sanitizer report, a crash or a fuzzer finding fails the script;
# findings are kept in build-asan/fuzz-findings/.
# Usage: scripts/sanitize.sh [FUZZ_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${1:-30}
scripts/apt_install.sh clang libclang-rt-14-dev  # clang 14 and its libFuzzer / sanitizer runtimes
scripts/fetch_vocab.sh
cmake -S . -B build-asan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DVLMO_SANITIZE=ON -DVLMO_FUZZ=ON >/dev/null
cmake --build build-asan -j "$(nproc)"

# LibTorch is not instrumented; its one-time allocations at exit are not ours to report.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "sanitize: unit tests, and the program on bad data, bad arguments and a full disk, under ASan + UBSan"
ctest --test-dir build-asan -L fast --no-tests=error --output-on-failure -j "$(nproc)"
ctest --test-dir build-asan -R 'cli\.faults\.(cases|disk)' --no-tests=error --output-on-failure -j "$(nproc)"

mkdir -p build-asan/fuzz-findings
for name in safetensors torch_checkpoint tar json_lines image tokenizer serve; do
  work=build-asan/fuzz-corpus/$name
  mkdir -p "$work"
  echo "sanitize: fuzz_$name for ${FUZZ_SECONDS} s"
  build-asan/fuzz/fuzz_$name -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix=build-asan/fuzz-findings/$name- -print_final_stats=1 "$work" "fuzz/corpus/$name" 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|.*ERROR)' || true
  if ls build-asan/fuzz-findings/$name-* >/dev/null 2>&1; then
    echo "sanitize: fuzz_$name found a failing input: $(ls build-asan/fuzz-findings/$name-* | head -1)" >&2
    exit 1
  fi
done
echo "sanitize: all passed"
