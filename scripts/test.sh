#!/usr/bin/env bash
# The README's test command: set up (Debian packages + build), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
# The checking build: ASan + UBSan over the unit tests, and every fuzzer for 30 s
# (VLMO_SANITIZE=0 skips it, e.g. for a quick local run).
if [ "${VLMO_SANITIZE:-1}" != 0 ]; then
  scripts/sanitize.sh "${VLMO_FUZZ_SECONDS:-30}"
fi
