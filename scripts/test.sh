#!/usr/bin/env bash
# The README's test command: on each platform, set up from nothing with the project's own scripts,
# build and test; then the checking build. Every stage prints its wall time; the last lines sum up.
#
#   Debian 12 (LibTorch 1.13): the format check (scripts/format.sh --check: seconds, so first),
#     set-up and build, the whole suite (web page in headless Chromium and the official openai
#     client against /v1/embeddings included), the main job's
#     fixture check (scripts/run.sh --check-only); on a CPU with AVX-512
#     the unit tests and the cross-batch comparisons again on the AVX2 kernels
#   Debian 13 (LibTorch 2.6): set-up and build, the unit tests and every reference fixture on both
#     attention paths, the main job's fixture check
#   checking build (Debian 12): ASan + UBSan over the unit tests, every fuzzer for 30 s
#
# Each platform runs in a Debian root made on this machine from Debian's archive
# (scripts/debian_root.sh), so nothing installed by hand on this machine takes part. The roots are
# kept outside the clone and reused; VLMO_FRESH_ROOTS=1 (.ci/run sets it) deletes and makes each
# anew at its first stage. VLMO_ON_HOST=1 runs this machine's own release on the machine itself
# instead (no roots, no root privileges beyond apt: its Debian 12 or 13 stages only).
#
# Switches: VLMO_DEBIAN13=0 skips Debian 13, VLMO_SANITIZE=0 the checking build, VLMO_AVX2_PASS=0
# the second pass on AVX2 kernels that an AVX-512 CPU gets; VLMO_DEBIAN13_LABELS
# picks Debian 13's ctest labels ("." for all); arguments go to the Debian 12 ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
FRESH=${VLMO_FRESH_ROOTS:-0}
export VLMO_FRESH_ROOTS=0  # each root is made anew once, at its first stage, not at every stage
ON_HOST=${VLMO_ON_HOST:-0}
# Build folders: the roots' own (their paths inside a root are /vlmo/src/...), the host's as always.
B12=build-debian12 ASAN=build-asan-debian12
if [ "$ON_HOST" = 1 ]; then B12=build ASAN=build-asan; fi
HOST_RELEASE=$(. /etc/os-release && echo "${VERSION_ID:-unknown}")
STAGES=()
stage_start=$(date +%s)
stage_done() {
  local now; now=$(date +%s)
  STAGES+=("$(printf '%-52s %5d s' "$1" $(( now - stage_start )))")
  echo "test.sh: stage \"$1\" took $(( now - stage_start )) s"
  stage_start=$now
}
declare -A MADE=()
# in_release 12|13 COMMAND...: runs COMMAND in that release's root (or here, with VLMO_ON_HOST=1).
in_release() {
  local release=$1; shift
  if [ "$ON_HOST" = 1 ]; then "$@"; return; fi
  local fresh=()
  if [ "$FRESH" = 1 ] && [ -z "${MADE[$release]:-}" ]; then fresh=(--fresh); fi
  MADE[$release]=1
  scripts/debian_root.sh "${fresh[@]}" "$release" "$@"
}
wants() { [ "$ON_HOST" = 0 ] || [ "$HOST_RELEASE" = "$1" ]; }
if [ "$ON_HOST" = 1 ] && [ "$HOST_RELEASE" != 12 ] && [ "$HOST_RELEASE" != 13 ]; then
  echo "test.sh: VLMO_ON_HOST=1 needs Debian 12 or 13 (this is \"$HOST_RELEASE\")" >&2
  exit 2
fi
echo "test.sh: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores;" \
     "$(grep -o -w -E 'avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_tile|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"

if wants 12; then
  # Every C++ file formatted as .clang-format says, by Debian 12's clang-format; before the build,
  # so that an unformatted tree fails in seconds.
  in_release 12 scripts/format.sh --check
  stage_done "Debian 12: root and format check"
  # The tests' own needs beyond the build's: git (the shape test), npm (playwright-core and openai,
  # pinned in tests/browser/package-lock.json and tests/openai/package-lock.json) and Debian's
  # Chromium for the web page test; the page and the OpenAI client tests must run here.
  in_release 12 bash -c 'scripts/apt_install.sh git npm chromium && scripts/setup.sh "$0" &&
                         npm ci --prefix tests/browser --no-audit --no-fund --silent &&
                         npm ci --prefix tests/openai --no-audit --no-fund --silent' "$B12"
  stage_done "Debian 12: set-up and build"
  in_release 12 env VLMO_REQUIRE_BROWSER=1 VLMO_REQUIRE_OPENAI=1 ctest --test-dir "$B12" --output-on-failure -j "$(nproc)" "$@"
  stage_done "Debian 12: test suite"
  in_release 12 env VLMO_BUILD_DIR="$B12" scripts/run.sh --check-only
  stage_done "Debian 12: scripts/run.sh fixture check"
  # On a CPU with AVX-512 the suite above ran the AVX-512 kernels; the unit tests, the server's and
  # the demo's cross-batch comparisons again with every library held to its AVX2 kernels (ATen's
  # dispatch, OpenBLAS's core type, oneDNN's ISA cap, bf16 emulated as without AVX-512): the paths
  # an AVX2-only CPU takes. (On an AVX2-only CPU the suite above already took them.) Left out: the one
  # test that runs LibTorch's native bf16 products next to the emulated ones; LibTorch still sees
  # the AVX-512 CPU and asks oneDNN for a bf16 kernel that the cap forbids.
  if grep -q -w avx512f /proc/cpuinfo && [ "${VLMO_AVX2_PASS:-1}" != 0 ]; then
    in_release 12 env ATEN_CPU_CAPABILITY=avx2 OPENBLAS_CORETYPE=Haswell ONEDNN_MAX_CPU_ISA=AVX2 \
      VLMO_CPU_BF16=emulated ctest --test-dir "$B12" --output-on-failure -j "$(nproc)" \
      -R '^(cli\.serve\.(setup|http|load)|cli\.pretrain_and_demo|cli\.dist\.pretrain)$|^[A-Z][A-Za-z0-9]*\.' \
      -E '^Precision\.EmulatedBf16ModelIsCloseToNativeBf16$'
    stage_done "Debian 12: unit and cross-batch tests on AVX2 kernels"
  fi
fi

if [ "${VLMO_DEBIAN13:-1}" != 0 ] && wants 13; then
  in_release 13 scripts/setup.sh build-debian13
  stage_done "Debian 13: root, set-up and build"
  in_release 13 ctest --test-dir build-debian13 --output-on-failure -j "$(nproc)" -L "${VLMO_DEBIAN13_LABELS:-fast|fixtures}"
  stage_done "Debian 13: unit tests and fixtures"
  in_release 13 env VLMO_BUILD_DIR=build-debian13 scripts/run.sh --check-only
  stage_done "Debian 13: scripts/run.sh fixture check"
fi

# The checking build: ASan + UBSan over the unit tests, and every fuzzer for 30 s.
if [ "${VLMO_SANITIZE:-1}" != 0 ]; then
  release=12; wants 12 || release=13
  in_release "$release" env VLMO_ASAN_DIR="$ASAN" scripts/sanitize.sh "${VLMO_FUZZ_SECONDS:-30}"
  stage_done "Debian $release: sanitizers and fuzzers"
fi
echo "test.sh: all stages passed:"
printf '  %s\n' "${STAGES[@]}"
