#!/usr/bin/env bash
# The README's main job: set up (Debian packages, vocabulary, build), check the model against the
# official reference fixtures when they are present, then run the built-in demo (`vlmo demo`):
# three pre-training stages and retrieval fine-tuning on a procedural world (docs/demo.md).
# Usage: scripts/run.sh [--check-only] [DEMO OPTIONS...]
#   --check-only   set up and check the fixtures, no demo (what CI runs in each fresh root)
#   VLMO_BUILD_DIR picks the build folder (default build; the Debian 13 root's is build-debian13).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${VLMO_BUILD_DIR:-build}
CHECK_ONLY=0
if [ "${1:-}" = "--check-only" ]; then CHECK_ONLY=1; shift; fi
scripts/setup.sh "$BUILD_DIR"
FIXTURES=${VLMO_FIXTURES:-../shared/fixtures/reference}
if [ -d "$FIXTURES" ]; then
  for dir in "$FIXTURES"/*/; do
    "./$BUILD_DIR/vlmo" check-reference "${dir%/}" | tail -n 1
  done
elif [ "$CHECK_ONLY" = 1 ]; then
  echo "run.sh: no reference fixtures at $FIXTURES (VLMO_FIXTURES) to check" >&2
  exit 1
fi
[ "$CHECK_ONLY" = 0 ] || exit 0
exec "./$BUILD_DIR/vlmo" demo "$@"
