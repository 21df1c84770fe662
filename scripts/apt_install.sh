#!/usr/bin/env bash
# Installs the given Debian packages that are not installed yet (apt-get, with sudo when not root),
# without Recommends: every package the project needs is named by its scripts. apt's own output goes
# to a log that is shown only when the install fails.
# Usage: scripts/apt_install.sh PACKAGE...
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
echo "apt_install: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
start=$(date +%s)
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$LOG" 2>&1; then
  tail -n 30 "$LOG" >&2
  echo "apt_install: installing ${missing[*]} failed (apt-get's last lines above)" >&2
  exit 1
fi
echo "apt_install: $(grep -c '^Setting up ' "$LOG" || true) packages set up in $(( $(date +%s) - start )) s"
