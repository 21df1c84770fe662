# Sourced by scripts/setup.sh and scripts/sanitize.sh: a compiler cache (ccache) when VLMO_CCACHE_DIR
# names its folder (scripts/debian_root.sh does, for its roots: the cache lives outside them).
# Sets CACHE_PACKAGES (what to install for it) and CACHE_LAUNCHER (CMake options); empty otherwise.
CACHE_PACKAGES=()
CACHE_LAUNCHER=()
if [ -n "${VLMO_CCACHE_DIR:-}" ]; then
  CACHE_PACKAGES=(ccache)
  CACHE_LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  # The precompiled LibTorch headers (VLMO_PCH) are cached too: ccache needs these sloppiness settings for them.
  export CCACHE_DIR=$VLMO_CCACHE_DIR CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-12G} \
         CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
fi

# Prints the cache's hits and misses since cache_stats_start (after a build).
cache_stats_start() { [ -z "${VLMO_CCACHE_DIR:-}" ] || ccache --zero-stats >/dev/null; }
cache_stats() {
  [ -z "${VLMO_CCACHE_DIR:-}" ] || echo "$1: ccache: $(ccache --print-stats 2>/dev/null |
    awk -F'\t' '$1 ~ /^(direct_cache_hit|preprocessed_cache_hit)$/ {h += $2} $1 ~ /^cache_miss$/ {m += $2}
                END {printf "%d hits, %d misses", h, m}')"
}
