#!/usr/bin/env bash
# The README's test command: set up (Debian packages + build), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
# The browser test's own needs: Debian's Chromium, and playwright-core (pinned in
# tests/browser/package-lock.json) to drive it. In this script a missing browser fails the test.
scripts/apt_install.sh chromium
npm ci --prefix tests/browser --no-audit --no-fund --silent
export VLMO_REQUIRE_BROWSER=1
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
# The checking build: ASan + UBSan over the unit tests, and every fuzzer for 30 s
# (VLMO_SANITIZE=0 skips it, e.g. for a quick local run).
if [ "${VLMO_SANITIZE:-1}" != 0 ]; then
  scripts/sanitize.sh "${VLMO_FUZZ_SECONDS:-30}"
fi
