#!/usr/bin/env bash
# The README's test command: set up (Debian packages + build), then run the whole test suite; on a
# Debian 12 machine also build and test in a Debian 13 root (LibTorch 2.6); then the checking
# build (sanitizers, fuzzers). Each stage prints its wall time; the last line sums them up.
# Switches: VLMO_DEBIAN13=0 skips the Debian 13 stage, VLMO_SANITIZE=0 the checking build.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=()
stage_start=$(date +%s)
stage_done() {
  local now; now=$(date +%s)
  STAGES+=("$1 $(( now - stage_start )) s")
  echo "test.sh: stage \"$1\" took $(( now - stage_start )) s"
  stage_start=$now
}

scripts/setup.sh build
# The browser test's own needs: Debian's Chromium, and playwright-core (pinned in
# tests/browser/package-lock.json) to drive it. In this script a missing browser fails the test.
scripts/apt_install.sh chromium python3
npm ci --prefix tests/browser --no-audit --no-fund --silent
stage_done "set-up and build ($(. /etc/os-release && echo "Debian $VERSION_ID"))"
VLMO_REQUIRE_BROWSER=1 ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
stage_done "test suite ($(. /etc/os-release && echo "Debian $VERSION_ID"))"

# The second platform: Debian 13 (trixie, LibTorch 2.6) in a root made from Debian's archive
# (scripts/debian13.sh; kept outside the clone and reused). Its unit tests (fused attention on,
# scaled_dot_product_attention) and every reference fixture with both attention paths
# (VLMO_DEBIAN13_LABELS picks other ctest labels; "." runs every test).
if [ "${VLMO_DEBIAN13:-1}" != 0 ] && [ "$(. /etc/os-release && echo "$VERSION_ID")" != 13 ]; then
  scripts/debian13.sh bash -c 'scripts/apt_install.sh python3 && scripts/setup.sh build-debian13'
  stage_done "Debian 13 root, set-up and build"
  scripts/debian13.sh ctest --test-dir build-debian13 --output-on-failure -j "$(nproc)" -L "${VLMO_DEBIAN13_LABELS:-fast|fixtures}"
  stage_done "Debian 13 tests"
fi

# The checking build: ASan + UBSan over the unit tests, and every fuzzer for 30 s
# (VLMO_SANITIZE=0 skips it, e.g. for a quick local run).
if [ "${VLMO_SANITIZE:-1}" != 0 ]; then
  scripts/sanitize.sh "${VLMO_FUZZ_SECONDS:-30}"
  stage_done "sanitizers and fuzzers"
fi
echo "test.sh: all stages passed:"
printf '  %s\n' "${STAGES[@]}"
