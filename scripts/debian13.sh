#!/usr/bin/env bash
# Runs a command of this project inside a Debian 13 (trixie) root made on this machine from Debian's
# own archive: the second platform CI builds and tests (LibTorch 2.6 instead of Debian 12's 1.13).
#
# Usage: scripts/debian13.sh [--cuda] COMMAND...   e.g. scripts/debian13.sh scripts/setup.sh build-debian13
#
# The root lives outside the clone ($VLMO_DEBIAN13_ROOT, default /var/tmp/vlmo-debian13; with --cuda
# $VLMO_DEBIAN13_CUDA_ROOT, default /var/tmp/vlmo-debian13-cuda, with contrib / non-free enabled for
# libtorch-cuda-dev) and is reused when present, so only a new machine pays for making it (~1 min).
# The command runs as root inside it, in a private mount namespace (nothing stays mounted after
# it), with /proc, /sys, /dev, this clone and ../shared mounted at the same paths as here, so build
# folders and test paths mean the same inside and out.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd -P)
CUDA=0
if [ "${1:-}" = "--cuda" ]; then CUDA=1; shift; fi
[ $# -gt 0 ] || { echo "usage: scripts/debian13.sh [--cuda] COMMAND..." >&2; exit 2; }
if [ "$CUDA" = 1 ]; then
  ROOT=${VLMO_DEBIAN13_CUDA_ROOT:-/var/tmp/vlmo-debian13-cuda}
  COMPONENTS="main contrib non-free non-free-firmware"
else
  ROOT=${VLMO_DEBIAN13_ROOT:-/var/tmp/vlmo-debian13}
  COMPONENTS="main"
fi
MIRROR=${VLMO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" -eq 0 ] || { echo "debian13: needs root (chroot, mount namespaces)" >&2; exit 2; }

if [ ! -f "$ROOT/.vlmo-root-ready" ]; then
  scripts/apt_install.sh debootstrap
  echo "debian13: making a Debian 13 root in $ROOT (debootstrap, minbase)"
  start=$(date +%s)
  rm -rf "$ROOT.partial"
  # Made under another name and moved into place whole: an interrupted run leaves no half root.
  debootstrap --variant=minbase --components="${COMPONENTS// /,}" trixie "$ROOT.partial" "$MIRROR" \
    > "$ROOT.partial.log" 2>&1 || { tail -n 20 "$ROOT.partial.log" >&2; exit 1; }
  echo "deb $MIRROR trixie $COMPONENTS" > "$ROOT.partial/etc/apt/sources.list"
  # Recommends stay out, as in scripts/apt_install.sh.
  echo 'APT::Install-Recommends "false";' > "$ROOT.partial/etc/apt/apt.conf.d/90vlmo"
  touch "$ROOT.partial/.vlmo-root-ready"
  rm -rf "$ROOT"
  mv "$ROOT.partial" "$ROOT"
  rm -f "$ROOT.partial.log"
  echo "debian13: root ready in $(( $(date +%s) - start )) s"
fi

# Name resolution and the host's CA certificates (npm over HTTPS), refreshed on every run.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  cp -r /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
fi

SHARED=""
[ -d ../shared ] && SHARED=$(cd ../shared && pwd -P)
export VLMO_ROOT="$ROOT" VLMO_SRC="$SRC" VLMO_SHARED_MOUNT="$SHARED"
exec unshare --mount --propagation private bash -c '
  set -euo pipefail
  mount -t proc proc "$VLMO_ROOT/proc"
  mount --rbind /dev "$VLMO_ROOT/dev"
  # /sys too: the cpuinfo library in LibTorch reads the CPU features there; without it the oneDNN bf16 / AMX
  # matrix products are not chosen and bf16 falls back to a slow reference kernel.
  mount --rbind /sys "$VLMO_ROOT/sys"
  for d in "$VLMO_SRC" $VLMO_SHARED_MOUNT; do
    mkdir -p "$VLMO_ROOT$d"
    mount --bind "$d" "$VLMO_ROOT$d"
  done
  cd "$VLMO_SRC"
  # The environment passes through (VLMO_* switches, OMP_NUM_THREADS), with the PATH of the root.
  exec chroot "$VLMO_ROOT" /usr/bin/env HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd \"\$0\" && exec \"\$@\"" "$VLMO_SRC" "$@"
' bash "$@"
