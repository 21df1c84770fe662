#!/usr/bin/env bash
# The README's main job: set up (Debian packages + build), then run the built-in self-check:
# the model against every reference fixture made by the official implementation, and the
# architecture of the base preset. (Becomes `vlmo demo` once the pre-training demo exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
FIXTURES=${VLMO_FIXTURES:-../shared/fixtures/reference}
status=0
for dir in "$FIXTURES"/*/; do
  ./build/vlmo check-reference "${dir%/}" | tail -n 1 || status=1
done
./build/vlmo info --preset base
exit $status
