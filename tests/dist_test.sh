#!/usr/bin/env bash
# Starts WORLD ranks of a program on 127.0.0.1 with torchrun's variables (RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port) and checks their exit statuses.
# usage: dist_test.sh WORLD EXPECT_RANK0 EXPECT_OTHERS PROGRAM ARGS...
# EXPECT_*: an exit status, or "any". Every rank is killed after 120 s (status 124).
set -u
world=$1 want0=$2 want_others=$3
shift 3
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for ((r = 0; r < world; r++)); do
  (
    RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      timeout 120 "$@" > "$dir/out.$r" 2>&1
    echo $? > "$dir/rc.$r"
  ) &
done
wait
fail=0
for ((r = 0; r < world; r++)); do
  rc=$(cat "$dir/rc.$r")
  sed "s/^/[rank $r] /" "$dir/out.$r"
  want=$want_others
  [ "$r" -eq 0 ] && want=$want0
  if [ "$want" != any ] && [ "$rc" != "$want" ]; then
    echo "rank $r exited $rc, expected $want"
    fail=1
  fi
done
exit $fail
