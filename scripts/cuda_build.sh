#!/usr/bin/env bash
# The CUDA build, compiled and linked on a machine without a GPU: every target against Debian 13's
# CUDA LibTorch (libtorch-cuda-dev 2.6, CUDA 12.4, NCCL; contrib) in a Debian 13 root
# (scripts/debian_root.sh --cuda 13, kept outside the clone and reused), so the CUDA and NCCL code paths
# (VLMO_WITH_CUDA, VLMO_WITH_NCCL) are compiled in. Debian's nvidia-cudnn is an installer that
# downloads cuDNN from NVIDIA when installed, which cannot work offline: a stand-in package takes
# its place and cuDNN 9 comes from this machine's CUDA toolkit ($VLMO_CUDNN_DIR, default
# /usr/local/cuda/lib64). Nothing is run on a GPU here; scripts/gpu_check.sh does that.
# Usage: scripts/cuda_build.sh [BUILD_DIR]   (default build-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build-cuda}
if [ "${VLMO_CUDA_BUILD_INSIDE:-0}" != 1 ]; then
  CUDNN=${VLMO_CUDNN_DIR:-/usr/local/cuda/lib64}
  [ -e "$CUDNN/libcudnn.so.9" ] || { echo "cuda_build: no cuDNN 9 at $CUDNN (set VLMO_CUDNN_DIR)" >&2; exit 2; }
  # The link needs libcudnn.so.9 only (libtorch_cuda names it; the engines are loaded at run time).
  mkdir -p "$BUILD_DIR.cudnn"
  cp -L "$CUDNN/libcudnn.so.9" "$BUILD_DIR.cudnn/"
  VLMO_CUDA_BUILD_INSIDE=1 VLMO_CUDNN_COPY="$(pwd -P)/$BUILD_DIR.cudnn" exec scripts/debian_root.sh --cuda 13 "scripts/cuda_build.sh" "$BUILD_DIR"
fi

# Inside the root.
if ! dpkg -s nvidia-cudnn >/dev/null 2>&1; then
  apt-get update -qq
  version=$(apt-cache show nvidia-cudnn | sed -n 's/^Version: //p' | head -1)
  pkg=$(mktemp -d)
  mkdir -p "$pkg/DEBIAN"
  cat > "$pkg/DEBIAN/control" <<CONTROL
Package: nvidia-cudnn
Version: $version
Architecture: amd64
Maintainer: vlmo build <vlmo@localhost>
Description: stand-in for the cuDNN download installer (vlmo scripts/cuda_build.sh)
 cuDNN 9 comes from the CUDA toolkit of the build machine.
CONTROL
  dpkg-deb --build "$pkg" "$pkg/nvidia-cudnn.deb" >/dev/null
  dpkg -i "$pkg/nvidia-cudnn.deb" >/dev/null
  rm -rf "$pkg"
fi
install -m 0644 "$VLMO_CUDNN_COPY/libcudnn.so.9" /usr/local/lib/libcudnn.so.9
ln -sf libcudnn.so.9 /usr/local/lib/libcudnn.so
ldconfig
# The CUDA toolkit of the same release as Debian's CUDA runtime (12.4): Caffe2's CMake config looks
# for nvcc and the toolkit's libraries; the NCCL headers: c10d's ProcessGroupNCCL header includes
# nccl.h (libtorch-cuda-dev depends on the library only).
scripts/apt_install.sh nvidia-cuda-toolkit libnccl-dev
VLMO_TORCH_PACKAGE=libtorch-cuda-dev VLMO_GLOO_PACKAGE=libgloo-cuda-dev scripts/setup.sh "$BUILD_DIR"
# What was compiled in: the CUDA and NCCL definitions of the library, and libtorch_cuda linked.
grep -o -E 'VLMO_WITH_(CUDA|NCCL)' "$BUILD_DIR/CMakeFiles/vlmo_lib.dir/flags.make" | sort -u | tr '\n' ' '
echo
ldd "$BUILD_DIR/vlmo" | grep -E 'libtorch_cuda|libc10_cuda|libnccl|libcudnn' | sed 's/ (0x.*//'
echo "cuda_build: every target of $BUILD_DIR built against $(dpkg-query -W -f='${Package} ${Version}' libtorch-cuda-dev)"
