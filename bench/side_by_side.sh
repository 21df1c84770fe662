#!/usr/bin/env bash
# Speed side by side, in one run on one machine: this project's `vlmo bench` on the Debian 12 build
# (build/, LibTorch 1.13) and the Debian 13 build (build-debian13/ in the root of
# scripts/debian_root.sh 13, LibTorch 2.6), and the official implementation on the same LibTorch of each
# (../shared/tools/official/cpu_bench.py on Debian's python3-torch). Base preset, 224 px, batch 8,
# the same thread count everywhere; runs one at a time. Prints one JSON line per measurement
# (with "stack" and "impl" added) and a table at the end.
#
# Usage: bench/side_by_side.sh OFFICIAL_VLMO_DIR [ROUNDS]
#   OFFICIAL_VLMO_DIR: the vlmo/ folder of microsoft/unilm (holding vlmo/modules/vlmo_module.py);
#   ROUNDS (default 1): how many times the whole set repeats, alternating the implementations
#   (the table keeps each one's best). Env: THREADS (default: every core), STEPS (default 2).
# Needs: both builds made (scripts/setup.sh build; scripts/debian_root.sh 13 scripts/setup.sh build-debian13),
# python3-torch python3-numpy python3-scipy python3-pil python3-tqdm on the host and in the root.
set -euo pipefail
cd "$(dirname "$0")/.."
REF=$(cd "${1:?usage: bench/side_by_side.sh OFFICIAL_VLMO_DIR [ROUNDS]}" && pwd -P)
ROUNDS=${2:-1}
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-2}
OFFICIAL=$(cd ../shared/tools/official && pwd -P)
OUT=$(mktemp -d)
# The official code must be readable inside the root: copy it into the (bind-mounted) build folder.
mkdir -p build-debian13/official-ref
cp -r "$REF/." build-debian13/official-ref/
REF13=$(pwd -P)/build-debian13/official-ref

run() {  # STACK IMPL PRECISION TASKS COMMAND...
  local stack=$1 impl=$2 precision=$3 tasks=$4; shift 4
  echo "side_by_side: $stack $impl $precision $tasks" >&2
  if ! "$@" > "$OUT/line" 2> "$OUT/err"; then
    echo "side_by_side: $stack $impl $precision $tasks failed: $(tail -n 3 "$OUT/err" | tr '\n' ' ')" >&2
    return 0
  fi
  grep '^{' "$OUT/line" | while read -r line; do
    echo "$line" | /usr/bin/python3 -c "import json,sys; j=json.loads(sys.stdin.read()); j.update(stack=sys.argv[1], impl=sys.argv[2]); print(json.dumps(j))" "$stack" "$impl"
  done | tee -a "$OUT/all.jsonl"
}

vlmo_bench() {  # STACK PRECISION TASKS
  local bin=build/vlmo prefix=()
  [ "$1" = debian13 ] && bin=build-debian13/vlmo && prefix=(scripts/debian_root.sh 13)
  run "$1" vlmo "$2" "$3" "${prefix[@]}" "$bin" bench --preset base --image-size 224 --batch 8 --steps "$STEPS" \
    --warmup 1 --threads "$THREADS" --precision "$2" --task "$3" --json --quiet
}
official_bench() {  # STACK PRECISION TASKS
  if [ "$1" = debian13 ]; then
    # Debian 13's python3-torch is built without libuv, which torch.distributed's TCPStore asks
    # for by default from 2.4 on: USE_LIBUV=0 selects the other store.
    run "$1" official "$2" "$3" scripts/debian_root.sh 13 env USE_LIBUV=0 python3 "$OFFICIAL/cpu_bench.py" "$REF13" --batch 8 --image-size 224 \
      --steps "$STEPS" --threads "$THREADS" --precision "$2" --task "$3"
  else
    run "$1" official "$2" "$3" /usr/bin/python3 "$OFFICIAL/cpu_bench.py" "$REF" --batch 8 --image-size 224 \
      --steps "$STEPS" --threads "$THREADS" --precision "$2" --task "$3"
  fi
}

for round in $(seq "$ROUNDS"); do
  for stack in debian12 debian13; do
    vlmo_bench "$stack" fp32 embed-image,pretrain
    official_bench "$stack" fp32 embed-image,pretrain
    vlmo_bench "$stack" bf16 embed-image,pretrain
    # The official bf16 pre-training step stops in Gloo's all_gather (no bfloat16): image embedding only.
    official_bench "$stack" bf16 embed-image
  done
done

/usr/bin/python3 - "$OUT/all.jsonl" <<'EOF'
import json, sys
best = {}
for line in open(sys.argv[1]):
    j = json.loads(line)
    key = (j["stack"], j["precision"], j["task"], j["impl"])
    best[key] = max(best.get(key, 0), j["samples_per_s"])
print("\n| stack | precision | task | vlmo samples/s | official samples/s | vlmo / official |")
print("|---|---|---|---|---|---|")
for stack in ("debian12", "debian13"):
    for precision in ("fp32", "bf16"):
        for task in ("embed-image", "pretrain"):
            v, o = best.get((stack, precision, task, "vlmo")), best.get((stack, precision, task, "official"))
            if v is None and o is None: continue
            f = lambda x: "%.3f" % x if x is not None else "n/a"
            ratio = "%.2fx" % (v / o) if v and o else "n/a"
            print(f"| {stack} | {precision} | {task} | {f(v)} | {f(o)} | {ratio} |")
EOF
rm -rf "$OUT"
