#!/usr/bin/env bash
# Run HERE (a Debian machine with ../shared) before a device session: fills gpu-fixtures/ (git-ignored)
# with what scripts/gpu_check.sh needs on the GPU machine, where ../shared and the package
# registries are out of reach: the four reference fixtures, the BERT vocabulary, and the .deb files
# of the Debian -dev packages the build needs (unpacked there only where a header is missing).
# Then: run(command="bash scripts/gpu_check.sh", carry=["gpu-fixtures", "data"]).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${VLMO_SHARED:-../shared}
OUT=gpu-fixtures
rm -rf "$OUT"
# shared/ mirrors ../shared for the tests (VLMO_SHARED): the reference fixtures and the photo goldens.
mkdir -p "$OUT/shared/fixtures/images" "$OUT/debs"
cp -r "$SHARED"/fixtures/reference "$OUT/shared/fixtures/"
cp "$SHARED"/fixtures/images/expected.safetensors "$OUT/shared/fixtures/images/"
scripts/fetch_vocab.sh
# Headers and link-time files; the runtime libraries they name are in the GPU image or carried too.
PKGS=(libjpeg62-turbo-dev libjpeg62-turbo libpng-dev libwebp-dev libwebp7 libutf8proc-dev libutf8proc2
      nlohmann-json3-dev libcpp-httplib-dev libcpp-httplib0.11 libfaiss-dev libgtest-dev
      libgloo-dev libgloo0 libcairo2-dev libcairo2 libpixman-1-0 zlib1g-dev)
(cd "$OUT/debs" && apt-get download "${PKGS[@]}" >/dev/null)
du -sh "$OUT"
echo "gpu_prepare: carry gpu-fixtures and data (64 MiB limit in all)"
