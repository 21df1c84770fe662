#!/usr/bin/env bash
# The README's main job: set up (Debian packages, vocabulary, build), check the model against the
# official reference fixtures when they are present, then run the built-in demo (`vlmo demo`):
# three pre-training stages and retrieval fine-tuning on a procedural world, ~5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
FIXTURES=${VLMO_FIXTURES:-../shared/fixtures/reference}
if [ -d "$FIXTURES" ]; then
  for dir in "$FIXTURES"/*/; do
    ./build/vlmo check-reference "${dir%/}" | tail -n 1
  done
fi
exec ./build/vlmo demo "$@"
