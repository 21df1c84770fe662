#!/usr/bin/env bash
# Installs everything the project needs on Debian 12 or 13 from Debian's archive, then builds it.
# Usage: scripts/setup.sh [BUILD_DIR]   (default: build). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

PACKAGES=(
  build-essential cmake pkg-config
  "${VLMO_TORCH_PACKAGE:-libtorch-dev}"  # LibTorch (CPU; scripts/cuda_build.sh takes libtorch-cuda-dev)
  libopenblas0-openmp     # fast fp32 BLAS for LibTorch (else ~30x slower matmul)
  libdnnl-dev             # oneDNN: the attention layers' batched products on the CPU (optional)
  "${VLMO_GLOO_PACKAGE:-libgloo-dev}"  # c10d Gloo headers (distributed training on CPUs; libgloo-cuda-dev with a CUDA LibTorch)
  nlohmann-json3-dev      # JSON (configs, safetensors headers, metrics)
  zlib1g-dev              # deflated zip entries in PyTorch checkpoints
  libgtest-dev            # unit tests
  libutf8proc-dev         # Unicode categories, case mapping, NFD (tokenizer)
  libjpeg62-turbo-dev     # JPEG decoding, bit-exact with PIL (libjpeg-turbo)
  libpng-dev              # PNG decoding
  libwebp-dev             # WebP decoding
  libcairo2-dev           # learning-curve charts (vlmo plot): PNG and SVG
  libfaiss-dev            # vector indexes over embedding collections (vlmo index build)
  libcpp-httplib-dev      # HTTP client of the load generator (vlmo_serve_load)
)

scripts/apt_install.sh "${PACKAGES[@]}"

scripts/fetch_vocab.sh

JOBS=$(nproc)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "setup: built $BUILD_DIR/vlmo"
