#!/usr/bin/env bash
# Installs everything the project needs on Debian 12 or 13 from Debian's archive, then builds it.
# Usage: scripts/setup.sh [BUILD_DIR]   (default: build). Idempotent.
#        scripts/setup.sh --no-build      packages and vocabulary only (scripts/sanitize.sh builds its own way)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

PACKAGES=(
  build-essential cmake pkg-config
  python3                 # the test suite's scripts (tests/CMakeLists.txt asks CMake for the interpreter)
  "${VLMO_TORCH_PACKAGE:-libtorch-dev}"  # LibTorch (CPU; scripts/cuda_build.sh takes libtorch-cuda-dev)
  libopenblas0-openmp     # fast fp32 BLAS for LibTorch (else ~30x slower matmul)
  libdnnl-dev             # oneDNN: the attention layers' batched products on the CPU
  ocl-icd-opencl-dev      # OpenCL headers: Debian 12's oneDNN CMake package requires them (a Recommends only)
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
  libboost-dev            # Boost.Beast / Asio (header-only): the server's HTTP/1.1 parsing and serialisation
)

. scripts/compiler_cache.sh
scripts/apt_install.sh "${PACKAGES[@]}" "${CACHE_PACKAGES[@]}"

scripts/fetch_vocab.sh
[ "$BUILD_DIR" != --no-build ] || exit 0

JOBS=$(nproc)
# oneDNN is optional to the CMake project, but this set-up installs it: its absence is an error here.
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DVLMO_REQUIRE_DNNL=ON "${CACHE_LAUNCHER[@]}" >/dev/null
cache_stats_start
cmake --build "$BUILD_DIR" -j "$JOBS"
cache_stats setup
echo "setup: built $BUILD_DIR/vlmo"
