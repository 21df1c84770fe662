#!/usr/bin/env bash
# Runs a command of this project inside a Debian root made on this machine from Debian's own archive
# (debootstrap, minbase): Debian 12 (bookworm, LibTorch 1.13) or Debian 13 (trixie, LibTorch 2.6).
# CI builds and tests in such roots, so that only the project's own scripts put packages there.
#
# Usage: scripts/debian_root.sh [--fresh] [--cuda] RELEASE COMMAND...     RELEASE: 12 or 13
#   e.g. scripts/debian_root.sh 13 scripts/setup.sh build-debian13
#
# The root lives outside the clone, in $VLMO_ROOTS_DIR (default /var/tmp/vlmo-roots) as debian12,
# debian13 or (--cuda: contrib / non-free enabled for libtorch-cuda-dev) debian13-cuda. It is reused
# when present, unless --fresh or VLMO_FRESH_ROOTS=1 asks for a new one: then the old root is deleted
# and a new one made from nothing before the command runs (.ci/run does this).
#
# Two caches live outside the roots, in $VLMO_CACHE_DIR (default /var/tmp/vlmo-cache)/debianNN:
# apt/ holds the downloaded .deb files (debootstrap's and apt's; a package still has to be named by
# the project's scripts to be installed from it) and ccache/ the compiler cache that scripts/setup.sh
# and scripts/sanitize.sh use inside the root (VLMO_CCACHE_DIR). VLMO_CACHE_DIR=none turns both off.
#
# The command runs as root inside the root, in a private mount namespace (nothing stays mounted after
# it), with /proc, /sys and /dev, and with this clone and ../shared mounted twice: at the same paths
# as here (so paths given on the command line mean the same inside), and at /vlmo/src and
# /vlmo/shared, where the command runs. Builds made in a root therefore see the same paths whatever
# folder the clone is in, so the compiler cache serves any clone; their folders (build-debian12,
# build-debian13, build-asan-debian12) are the roots' own, apart from the host's build/.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd -P)
CUDA=0
FRESH=${VLMO_FRESH_ROOTS:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) FRESH=1; shift ;;
    --cuda) CUDA=1; shift ;;
    *) break ;;
  esac
done
usage() { echo "usage: scripts/debian_root.sh [--fresh] [--cuda] 12|13 COMMAND..." >&2; exit 2; }
[ $# -ge 2 ] || usage
case "$1" in
  12) SUITE=bookworm ;;
  13) SUITE=trixie ;;
  *) echo "debian_root: release \"$1\": expected 12 or 13" >&2; usage ;;
esac
RELEASE=$1; shift
[ "$CUDA" = 0 ] || [ "$RELEASE" = 13 ] || { echo "debian_root: --cuda needs release 13 (libtorch-cuda-dev)" >&2; exit 2; }
NAME=debian$RELEASE
COMPONENTS="main"
if [ "$CUDA" = 1 ]; then NAME=debian13-cuda; COMPONENTS="main contrib non-free non-free-firmware"; fi
ROOTS=${VLMO_ROOTS_DIR:-/var/tmp/vlmo-roots}
ROOT=$ROOTS/$NAME
MIRROR=${VLMO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" -eq 0 ] || { echo "debian_root: needs root (debootstrap, chroot, mount namespaces)" >&2; exit 2; }
CACHE=""
if [ "${VLMO_CACHE_DIR:-}" != none ]; then
  CACHE=${VLMO_CACHE_DIR:-/var/tmp/vlmo-cache}/debian$RELEASE
  mkdir -p "$CACHE/apt" "$CACHE/ccache"
  CACHE=$(cd "$CACHE" && pwd -P)
fi

if [ "$FRESH" = 1 ] && [ -e "$ROOT" ]; then
  echo "debian_root: deleting $ROOT (a fresh root was asked for)"
  rm -rf --one-file-system "$ROOT"
fi
if [ ! -f "$ROOT/.vlmo-root-ready" ]; then
  command -v debootstrap >/dev/null || scripts/apt_install.sh debootstrap
  echo "debian_root: making a Debian $RELEASE ($SUITE) root in $ROOT (debootstrap, minbase)"
  start=$(date +%s)
  mkdir -p "$ROOTS"
  rm -rf --one-file-system "$ROOT.partial"
  # Made under another name and moved into place whole: an interrupted run leaves no half root.
  debootstrap --variant=minbase --components="${COMPONENTS// /,}" ${CACHE:+--cache-dir="$CACHE/apt"} \
    "$SUITE" "$ROOT.partial" "$MIRROR" > "$ROOT.partial.log" 2>&1 || { tail -n 20 "$ROOT.partial.log" >&2; exit 1; }
  echo "deb $MIRROR $SUITE $COMPONENTS" > "$ROOT.partial/etc/apt/sources.list"
  # Recommends stay out, as in scripts/apt_install.sh.
  echo 'APT::Install-Recommends "false";' > "$ROOT.partial/etc/apt/apt.conf.d/90vlmo"
  # Downloaded packages stay in the (mounted) cache; minbase roots already keep them.
  echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >> "$ROOT.partial/etc/apt/apt.conf.d/90vlmo"
  touch "$ROOT.partial/.vlmo-root-ready"
  mv "$ROOT.partial" "$ROOT"
  rm -f "$ROOT.partial.log"
  echo "debian_root: root ready in $(( $(date +%s) - start )) s"
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
export VLMO_ROOT="$ROOT" VLMO_SRC="$SRC" VLMO_SHARED_MOUNT="$SHARED" VLMO_ROOT_CACHE="$CACHE"
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
  mkdir -p "$VLMO_ROOT/vlmo/src"
  mount --bind "$VLMO_SRC" "$VLMO_ROOT/vlmo/src"
  if [ -n "$VLMO_SHARED_MOUNT" ]; then
    mkdir -p "$VLMO_ROOT/vlmo/shared"
    mount --bind "$VLMO_SHARED_MOUNT" "$VLMO_ROOT/vlmo/shared"
  fi
  ccache_env=()
  if [ -n "$VLMO_ROOT_CACHE" ]; then
    mkdir -p "$VLMO_ROOT/var/cache/apt/archives" "$VLMO_ROOT/var/cache/vlmo-ccache"
    mount --bind "$VLMO_ROOT_CACHE/apt" "$VLMO_ROOT/var/cache/apt/archives"
    mount --bind "$VLMO_ROOT_CACHE/ccache" "$VLMO_ROOT/var/cache/vlmo-ccache"
    ccache_env=(VLMO_CCACHE_DIR=/var/cache/vlmo-ccache)
  fi
  # The environment passes through (VLMO_* switches, OMP_NUM_THREADS), with the PATH of the root.
  exec chroot "$VLMO_ROOT" /usr/bin/env HOME=/root LANG=C.UTF-8 "${ccache_env[@]}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /vlmo/src && exec \"\$@\"" bash "$@"
' bash "$@"
