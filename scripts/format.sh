#!/usr/bin/env bash
# Formats the project's C++ files with clang-format and the style in .clang-format: every .cpp and
# .h in src/, app/, include/, bench/, fuzz/, examples/ and tests/ (that folder's own files, not its
# subfolders), or the FILEs given.
# Usage: scripts/format.sh [--check] [FILE...]
#   --check: change nothing; list the files that are not formatted and exit 1 if there are any.
#
# Always Debian 12's clang-format (14): another version formats some constructs differently, so the
# result would depend on the machine. The script runs itself in the Debian 12 root of
# scripts/debian_root.sh (which needs root privileges) and installs clang-format there with
# scripts/apt_install.sh. Inside a root of that script (scripts/test.sh's stages), or with
# VLMO_ON_HOST=1 on a Debian 12 machine, it runs where it is.
set -euo pipefail
ARGS=()
FILES=()
for a in "$@"; do
  case "$a" in
    --check) ARGS+=(--check) ;;
    -*) echo "usage: scripts/format.sh [--check] [FILE...]" >&2; exit 2 ;;
    *) [ -f "$a" ] || { echo "format: no file $a" >&2; exit 2; }
       FILES+=("$(realpath "$a")") ;;  # absolute: the clone has the same path in the Debian root
  esac
done
cd "$(dirname "$0")/.."
if [ ! -f /.vlmo-root-ready ] && [ "${VLMO_ON_HOST:-0}" != 1 ]; then
  exec scripts/debian_root.sh 12 scripts/format.sh "${ARGS[@]}" "${FILES[@]}"
fi
release=$(. /etc/os-release && echo "${ID:-}-${VERSION_ID:-}")
[ "$release" = debian-12 ] || { echo "format: needs Debian 12's clang-format; this is $release" >&2; exit 2; }
CHECK=0
[ ${#ARGS[@]} -eq 0 ] || CHECK=1
scripts/apt_install.sh clang-format
version=$(clang-format --version)
case "$version" in
  *" version 14."*) ;;
  *) echo "format: expected Debian 12's clang-format 14, found: $version" >&2; exit 2 ;;
esac

if [ ${#FILES[@]} -eq 0 ]; then
  mapfile -t FILES < <({ find src app include bench fuzz examples -type f \( -name '*.cpp' -o -name '*.h' \);
                         find tests -maxdepth 1 -type f \( -name '*.cpp' -o -name '*.h' \); } | LC_ALL=C sort)
fi

if [ "$CHECK" = 0 ]; then
  printf '%s\0' "${FILES[@]}" | xargs -0 -n 16 -P "$(nproc)" clang-format -i --style=file --fallback-style=none
  echo "format: formatted ${#FILES[@]} files with $version"
  exit 0
fi
# Each file that clang-format would change, by name.
unformatted=$(printf '%s\0' "${FILES[@]}" | xargs -0 -n 1 -P "$(nproc)" sh -c \
  'clang-format --style=file --fallback-style=none "$0" | cmp -s - "$0" || echo "$0"' | LC_ALL=C sort)
if [ -n "$unformatted" ]; then
  echo "format: $(echo "$unformatted" | wc -l) of ${#FILES[@]} files are not formatted (scripts/format.sh formats them):"
  echo "$unformatted" | sed 's/^/  /'
  exit 1
fi
echo "format: all ${#FILES[@]} files are formatted ($version)"
