#!/usr/bin/env bash
# Fault tests of the vlmo program (issue "Reliability"): SIGKILL at random moments (checkpoint
# writes included) then resume; SIGTERM then resume; a full disk during a checkpoint and during
# metrics writing (a size-limited tmpfs in a mount namespace, with a user namespace when not root); bad data and bad arguments.
# Each resumed run must end byte-identical to an uninterrupted one, with no temporary file left
# and each step once in the metrics; each failing command must exit non-zero with one line that
# names what was wrong, and no LibTorch backtrace.
# Usage: cli_faults.sh VLMO SHARED_DIR WORK_DIR [part...]   parts: kill term disk cases (default all)
set -uo pipefail
VLMO=$1 SHARED=$2 WORK=$3
shift 3
PARTS=${*:-kill term disk cases}
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
note() { echo "-- $*" >&2; }

cat > tiny.json <<'EOF'
{"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32, "vlffn_start_layer_index": 1,
 "max_text_len": 16, "heads": ["mlm", "itm", "itc"]}
EOF
for i in $(seq 1 200); do echo "the cat number $i sits on a mat near door $((i % 7))"; done > corpus.txt
TRAIN=(pretrain --stage text --config tiny.json --text corpus.txt --batch-size 4 --accumulate 1 --warmup 2
       --loader-threads 2 --threads 1)

# Steps logged (lines with a loss) in a metrics file, one per line.
logged_steps() { grep '"loss"' "$1" | sed -E 's/.*"step":([0-9]+)(\.0)?[,}].*/\1/'; }
check_metrics_once() {  # FILE N: steps 1..N each exactly once, every line valid JSON
  local want got
  want=$(seq 1 "$2")
  got=$(logged_steps "$1" | sort -n)
  [ "$got" = "$want" ] || fail "$1: steps logged are not 1..$2 once each: $(echo "$got" | uniq -d | head -3 | tr '\n' ' ')"
  /usr/bin/python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1]) if l.strip()]' "$1" 2>/dev/null ||
    fail "$1: a line is not a whole JSON object"
}
same_losses() {  # REF GOT: the same loss at every step
  /usr/bin/python3 - "$1" "$2" <<'PY' || fail "$2: losses differ from $1's"
import json, sys
def losses(path):
    return {round(r["step"]): r["loss"] for r in map(json.loads, filter(str.strip, open(path))) if "loss" in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
bad = [s for s in a if a[s] != b.get(s)]
if bad or len(a) != len(b):
    print(f"steps {bad[:3]} of {len(a)} differ", file=sys.stderr)
    sys.exit(1)
PY
}
running() { ps -o stat= -p "$1" 2>/dev/null | grep -qv Z; }  # PID: alive and not a zombie
no_temporaries() {  # DIR
  local left
  left=$(find "$1" -name '*.tmp.*' | head -3)
  [ -z "$left" ] || fail "temporary files left: $left"
}

if [[ " $PARTS " == *" kill "* ]]; then
  note "SIGKILL at random moments, then resume (checkpoint every step)"
  STEPS=60
  "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 1 --out ref.safetensors --metrics ref.jsonl 2>/dev/null ||
    fail "uninterrupted run failed"
  kills=0 runs=0 done=0 progress=""
  RANDOM=7
  while [ $done -eq 0 ] && [ $runs -lt 40 ]; do
    runs=$((runs + 1))
    resume=()
    [ -f k.safetensors ] && resume=(--resume k.safetensors)
    "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 1 --out k.safetensors --metrics k.jsonl "${resume[@]}" \
      >/dev/null 2>>k.log &
    pid=$!
    if [ $kills -lt 12 ]; then
      # Kill after a few more steps (1-8), then 0-90 ms into the next step or checkpoint write;
      # one run in four is killed at a random moment of start-up instead. Waiting for progress
      # rather than a fixed time keeps the number of kills independent of the machine's speed.
      if [ $((RANDOM % 4)) -eq 0 ]; then
        sleep "0.$((RANDOM % 10))"
      else
        last=$(logged_steps k.jsonl 2>/dev/null | tail -n 1)
        target=$((${last:-0} + 1 + RANDOM % 8))
        for _ in $(seq 1 1500); do  # at most 30 s
          running $pid || break
          [ "$(logged_steps k.jsonl 2>/dev/null | tail -n 1)" -ge $target ] 2>/dev/null && break
          sleep 0.02
        done
        sleep "0.0$((RANDOM % 10))"
      fi
      if running $pid && kill -9 $pid 2>/dev/null; then kills=$((kills + 1)); fi
    fi
    wait $pid 2>/dev/null && done=1
    progress="$progress $(logged_steps k.jsonl 2>/dev/null | tail -n 1)"
  done
  note "$kills kills in $runs runs; last step logged after each run:$progress;" \
    "$(grep -c 'left by a killed run' k.log) runs removed temporaries of a kill during a write"
  [ $done -eq 1 ] || fail "the killed run never completed ($runs runs)"
  [ $kills -ge 5 ] || fail "only $kills kills landed; the test did not exercise resumption"
  cmp -s ref.safetensors k.safetensors || fail "resumed-after-kills checkpoint differs from the uninterrupted one"
  check_metrics_once k.jsonl $STEPS
  no_temporaries .
fi

if [[ " $PARTS " == *" term "* ]]; then
  note "SIGTERM mid-run: checkpoint, exit 143, resume exactly"
  STEPS=400
  "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 0 --out tref.safetensors --metrics tref.jsonl 2>/dev/null ||
    fail "uninterrupted run failed"
  "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 0 --out t.safetensors --metrics t.jsonl 2>t.err &
  pid=$!
  sleep 2
  kill -TERM $pid
  wait $pid
  rc=$?
  if [ $rc -ne 143 ]; then
    fail "SIGTERM: exit status $rc, expected 143 ($(tail -n 1 t.err))"
  else
    grep -q "interrupted by SIGTERM after step [0-9]*; checkpoint saved to t.safetensors" t.err ||
      fail "SIGTERM message: $(tail -n 1 t.err)"
    "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 0 --out t.safetensors --metrics t.jsonl \
      --resume t.safetensors 2>/dev/null || fail "resume after SIGTERM failed"
    cmp -s tref.safetensors t.safetensors || fail "resumed-after-SIGTERM checkpoint differs from the uninterrupted one"
    check_metrics_once t.jsonl $STEPS
  fi
  note "two SIGTERMs back to back are one request: checkpoint, exit 143, resume exactly"
  "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 0 --out t2.safetensors --metrics t2.jsonl 2>t2.err &
  pid=$!
  sleep 2
  kill -TERM $pid
  kill -TERM $pid
  wait $pid
  rc=$?
  if [ $rc -ne 143 ] || ! grep -q "interrupted by SIGTERM after step [0-9]*; checkpoint saved to t2.safetensors" t2.err; then
    fail "two SIGTERMs: exit status $rc, $(tail -n 1 t2.err)"
  else
    "$VLMO" "${TRAIN[@]}" --steps $STEPS --checkpoint-every 0 --out t2.safetensors --metrics t2.jsonl \
      --resume t2.safetensors 2>/dev/null || fail "resume after two SIGTERMs failed"
    cmp -s tref.safetensors t2.safetensors || fail "resumed-after-two-SIGTERMs checkpoint differs from the uninterrupted one"
    check_metrics_once t2.jsonl $STEPS
  fi
  # GNU timeout signals the child, then the child's process group: two SIGTERMs microseconds apart.
  STOPS=10 LONG=1500
  note "timeout -s TERM 2, $STOPS runs in a row, each resuming the last; then the rest uninterrupted"
  "$VLMO" "${TRAIN[@]}" --steps $LONG --checkpoint-every 0 --out lref.safetensors --metrics lref.jsonl 2>/dev/null ||
    fail "uninterrupted run failed"
  for i in $(seq 1 $STOPS); do
    resume=()
    [ -f to.safetensors ] && resume=(--resume to.safetensors)
    timeout -s TERM 2 "$VLMO" "${TRAIN[@]}" --steps $LONG --checkpoint-every 0 --out to.safetensors --metrics to.jsonl \
      "${resume[@]}" 2>to.err
    rc=$?
    if [ $rc -ne 124 ] || ! grep -q "interrupted by SIGTERM after step [0-9]*; checkpoint saved to to.safetensors" to.err; then
      fail "timeout run $i: exit status $rc (expected 124), $(tail -n 1 to.err)"
      break
    fi
  done
  note "stopped after steps:$(grep -h -o 'interrupted by SIGTERM after step [0-9]*' to.err | grep -o '[0-9]*$' | tr '\n' ' ')"
  "$VLMO" "${TRAIN[@]}" --steps $LONG --checkpoint-every 0 --out to.safetensors --metrics to.jsonl --resume to.safetensors \
    2>/dev/null || fail "the run after $STOPS timeouts failed"
  cmp -s lref.safetensors to.safetensors || fail "the checkpoint after $STOPS timeouts differs from the uninterrupted one"
  check_metrics_once to.jsonl $LONG
  same_losses lref.jsonl to.jsonl
  "$VLMO" "${TRAIN[@]}" --steps $STEPS --out i.safetensors --metrics i.jsonl 2>i.err &
  pid=$!
  sleep 1.5
  kill -INT $pid
  wait $pid
  rc=$?
  [ $rc -eq 130 ] && grep -q "interrupted by SIGINT after step [0-9]*; checkpoint saved to i.safetensors" i.err ||
    fail "SIGINT: exit status $rc, $(tail -n 1 i.err)"
  note "a second run on the same outputs is refused while the first runs"
  "$VLMO" "${TRAIN[@]}" --steps $STEPS --out busy.safetensors --metrics busy.jsonl 2>/dev/null &
  pid=$!
  sleep 1.5
  "$VLMO" "${TRAIN[@]}" --steps 5 --out busy.safetensors --metrics other.jsonl 2>busy.err
  rc=$?
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  [ $rc -ne 0 ] && grep -q "busy.safetensors: the checkpoint is in use by another running process (pid" busy.err ||
    fail "second run on the same --out: rc $rc, $(cat busy.err)"
  no_temporaries .
fi

if [[ " $PARTS " == *" disk "* ]]; then
  note "full disk during a checkpoint and during metrics writing (tmpfs)"
  "$VLMO" "${TRAIN[@]}" --steps 1 --out size.safetensors --metrics size.jsonl 2>/dev/null
  bytes=$(stat -c %s size.safetensors)
  # Room for one checkpoint and half of a second: the second write fails.
  limit=$(( (bytes * 3 / 2 / 4096 + 1) * 4096 ))
  cat > disk.sh <<EOF
set -u
mkdir -p full small
mount -t tmpfs -o size=$limit tmpfs full || exit 77
mount -t tmpfs -o size=8k tmpfs small || exit 77
"$VLMO" ${TRAIN[*]} --steps 6 --checkpoint-every 3 --out full/ck.safetensors --metrics m1.jsonl 2>ck.err
echo \$? > ck.rc
cp full/ck.safetensors ck-left.safetensors
ls full > ck.files
"$VLMO" ${TRAIN[*]} --steps 200 --checkpoint-every 5 --out mk.safetensors --metrics small/m.jsonl 2>m.err
echo \$? > m.rc
EOF
  # As root, a mount namespace alone (a chroot, as in scripts/debian_root.sh, may not make user
  # namespaces; its / is no mount point, so its propagation stays as debian_root.sh made it:
  # private); otherwise a user namespace too, where the user may mount.
  how="-rm"
  if [ "$(id -u)" -eq 0 ]; then how="-m"; mountpoint -q / || how="-m --propagation unchanged"; fi
  unshare $how bash disk.sh
  rc=$?
  if [ $rc -eq 77 ] || ! [ -f ck.rc ]; then
    echo "SKIP: cannot mount a tmpfs here (unshare $how failed: $rc)" >&2
    [ $failures -eq 0 ] && exit 77
  else
    [ "$(cat ck.rc)" != 0 ] || fail "checkpoint on a full disk: exit 0"
    grep -q "full/ck.safetensors: write failed (No space left on device); the previous file is untouched" ck.err ||
      fail "checkpoint on a full disk: $(tail -n 1 ck.err)"
    [ "$(grep -v '\.lock$' ck.files)" = "ck.safetensors" ] || fail "files left on the full disk: $(cat ck.files | tr '\n' ' ')"
    "$VLMO" "${TRAIN[@]}" --steps 6 --checkpoint-every 3 --out ck-left.safetensors --metrics m2.jsonl \
      --resume ck-left.safetensors 2>/dev/null || fail "the checkpoint left on the full disk does not resume"
    [ "$(cat m.rc)" != 0 ] || fail "metrics on a full disk: exit 0"
    grep -q "small/m.jsonl: write failed (No space left on device)" m.err || fail "metrics on a full disk: $(tail -n 1 m.err)"
    echo '{"text": "a cat"}' > one.jsonl
    [ -f mk.safetensors ] && "$VLMO" embed --model mk.safetensors --input one.jsonl --out e.safetensors >/dev/null 2>&1 ||
      fail "the checkpoint written before the metrics disk filled is not readable"
  fi
fi

if [[ " $PARTS " == *" cases "* ]]; then
  note "bad arguments and bad data: one clear line, non-zero exit, no backtrace"
  IMG=$SHARED/fixtures/images
  mkdir -p img && cp "$IMG"/*.jpg "$IMG"/*.png img/
  echo '{"images":[{"filename":"messi5.jpg","split":"train","sentences":[{"raw":""},{"raw":"  "}]}]}' > blank.json
  # A weights file whose logit_scale is NaN: every ITC step of stage vl is non-finite.
  header='{"logit_scale":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}'
  while [ $(( ${#header} % 8 )) -ne 0 ]; do header="$header "; done
  { printf "\\x$(printf %02x ${#header})\\0\\0\\0\\0\\0\\0\\0"; printf '%s' "$header"; printf '\0\0\xc0\x7f'; } > nan.safetensors
  cat > k13.json <<'EOF'
{"images": [
EOF
  for i in $(seq 1 13); do
    f=messi5.jpg; [ $i -le 3 ] && f=bad$i.jpg
    echo "{\"filename\": \"$f\", \"split\": \"train\", \"sentences\": [{\"raw\": \"a man playing football number $i\"}]}$([ $i -lt 13 ] && echo ,)" >> k13.json
  done
  echo ']}' >> k13.json
  head -c 2000 img/messi5.jpg > img/bad1.jpg && printf 'garbage' > img/bad2.jpg  # bad3.jpg is missing
  touch empty.jsonl
  run_case() {  # NAME PATTERN ARGS...: must fail with one "error:" line matching PATTERN
    local name=$1 pattern=$2
    shift 2
    "$VLMO" "$@" >case.out 2>case.err
    local rc=$?
    local last
    last=$(grep -v '^\[' case.err | grep -v '^text length' | tail -n 1)
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then fail "$name: exit status $rc"; fi
    grep -q 'frame #' case.err && fail "$name: LibTorch backtrace"
    [[ "$last" =~ ^error:\ .*$pattern ]] || fail "$name: expected 'error: ...$pattern', got: $last"
  }
  V=(--config tiny.json --steps 3 --batch-size 2 --accumulate 1 --threads 1)
  run_case "out folder missing" "checkpoint \(--out\) nodir/x.safetensors: folder nodir does not exist" \
    pretrain --stage text --text corpus.txt "${V[@]}" --out nodir/x.safetensors
  run_case "metrics folder missing" "metrics file \(--metrics\) nodir/m.jsonl: folder nodir does not exist" \
    pretrain --stage text --text corpus.txt "${V[@]}" --metrics nodir/m.jsonl
  run_case "corpus is a folder" "img: is a folder, expected a text corpus file" \
    pretrain --stage text --text img "${V[@]}" --out x.safetensors
  run_case "config is a folder" "img: is a folder, expected a model config JSON file" \
    pretrain --stage text --text corpus.txt --config img --steps 1 --out x.safetensors
  run_case "empty input path" "the input checkpoint path IN is empty" convert "" out.safetensors --preset base
  run_case "karpathy is a folder" "img: is a folder, expected a Karpathy split JSON file" \
    pretrain --stage vl --karpathy img "${V[@]}" --out x.safetensors
  run_case "captions all blank" "samples in a row could not be used .*blank caption \[empty_caption\]" \
    pretrain --stage vl --karpathy blank.json --image-root img "${V[@]}" --out x.safetensors
  run_case "NaN loss in stage vl" "5 steps in a row had a non-finite loss or gradient" \
    pretrain --stage vl --karpathy k13.json --image-root img "${V[@]}" --steps 20 --init nan.safetensors --out nan-run.safetensors
  [ -f nan-run.safetensors ] && fail "NaN run wrote a checkpoint"
  run_case "batch of 1 in stage vl" "at least 2" \
    pretrain --stage vl --karpathy k13.json --image-root img "${V[@]}" --batch-size 1 --out x.safetensors
  echo '{"images":[{"filename":"messi5.jpg","split":"test","sentences":[{"raw":"a man"}]}]}' > k-test.json
  echo '{"images":[]}' > k-none.json
  echo '{"images":[{"filename":"messi5.jpg","split":"train","sentences":[]}]}' > k-nosent.json
  for k in k-test k-none k-nosent; do
    run_case "Karpathy $k" "$k.json: no training image-caption pairs" \
      pretrain --stage vl --karpathy $k.json --image-root img "${V[@]}" --out x.safetensors
  done
  run_case "stage text, captions all blank" "samples in a row could not be used .*\[empty_caption\]" \
    pretrain --stage text --karpathy blank.json --image-root img "${V[@]}" --out x.safetensors
  run_case "finetune batch 0" "option --batch-size: must be between 1" finetune --task irtr --batch-size 0
  run_case "preprocess size" "option --size: must be between 1 and 8192" preprocess --size 100000 img/messi5.jpg
  run_case "vqa top" "option --top: must be at least 1" vqa --top -1
  run_case "search top-k" "option --top-k: must be at least 1" search --top-k -1
  run_case "warmup" "option --warmup: must be at least 0" pretrain --warmup -1
  run_case "checkpoint-every" "option --checkpoint-every: must be at least 0" pretrain --checkpoint-every -1
  run_case "loader-threads" "option --loader-threads: must be between 1" pretrain --loader-threads -1
  run_case "max-pixels" "option --max-pixels: expected a whole number" preprocess --max-pixels 1e9 img/messi5.jpg
  run_case "step-scale" "option --step-scale: must be between" demo --step-scale -1
  run_case "steps 0" "option --steps: must be at least 1" pretrain --steps 0
  run_case "device" "device \"foo\": expected cpu, cuda or cuda:N" check-reference --device foo "$SHARED/fixtures/reference/tiny-relpos"
  for cmd in "check-reference $SHARED/fixtures/reference/tiny-relpos" bench demo pretrain finetune vqa serve; do
    # shellcheck disable=SC2086
    run_case "$cmd attention" "option --attention: expected fused or plain, got \"flash\"" $cmd --attention flash
    [ "$(wc -l < case.err)" -eq 1 ] || fail "$cmd --attention flash: more than one line on stderr"
    # shellcheck disable=SC2086
    "$VLMO" $cmd --attention flash >/dev/null 2>&1; [ $? -eq 2 ] || fail "$cmd --attention flash: exit status not 2"
  done
  # The environment's switches are read before any work: a bad value is one line, exit 2.
  VLMO_CPU_BATCHED_MATMUL=blas run_case "VLMO_CPU_BATCHED_MATMUL" \
    'environment variable VLMO_CPU_BATCHED_MATMUL="blas": expected aten or onednn' bench --steps 1
  [ "$(wc -l < case.err)" -eq 1 ] || fail "VLMO_CPU_BATCHED_MATMUL=blas: more than one line on stderr"
  VLMO_CPU_BF16=fast run_case "VLMO_CPU_BF16" 'environment variable VLMO_CPU_BF16="fast": expected native or emulated' \
    pretrain --steps 1
  VLMO_CPU_BF16=fast "$VLMO" pretrain --steps 1 >/dev/null 2>&1; [ $? -eq 2 ] || fail "VLMO_CPU_BF16=fast: exit status not 2"
  "$VLMO" pretrain --stage text --text corpus.txt "${V[@]}" --steps 1 --out m1.safetensors --metrics m1.jsonl 2>/dev/null
  run_case "embed empty input" "empty.jsonl: no requests" embed --model m1.safetensors --input empty.jsonl --out e.safetensors
  run_case "tokenize to a full disk" "/dev/full: write failed \(No space left on device\)" \
    tokenize --input <(echo '{"text": "a cat"}') --output /dev/full
  "$VLMO" info --preset base >/dev/full 2>case.err && fail "info to /dev/full: exit 0"
  grep -q "^error: writing the results to standard output failed (No space left on device)" case.err ||
    fail "info to /dev/full: $(cat case.err)"
  run_case "preprocess name clash" "would both be stored as \"messi5.jpg@32\"" \
    preprocess --size 32 --out p.safetensors img/messi5.jpg ./img/messi5.jpg
  run_case "steps 1.5" "option --steps: expected a whole number" pretrain --steps 1.5
  run_case "accumulate -1" "option --accumulate: must be between 0" pretrain --accumulate -1
  run_case "negative lr" "option --lr: must be between 0 and 1" pretrain --lr -1
  run_case "image size" "option --image-size: must be between 0 and 8192" pretrain --image-size 100000
  run_case "max-skip-rate" "option --max-skip-rate: must be between 0 and 1" pretrain --max-skip-rate 2
  run_case "serve max-connections" "option --max-connections: must be between 1" serve --max-connections 0
  run_case "serve max-image-side" "option --max-image-side: expected a whole number" serve --max-image-side 1e4
  for opt in max-connections max-image-side; do
    "$VLMO" serve --$opt -5 >/dev/null 2>case.err; [ $? -eq 2 ] && [ "$(wc -l < case.err)" -eq 1 ] ||
      fail "serve --$opt -5: not one line with exit 2: $(cat case.err)"
  done

  note "vlmo index build + vlmo search over it equal the exact search of the embedding file"
  "$VLMO" embed --model m1.safetensors --out emb.safetensors img/messi5.jpg img/camera.png img/chelsea.png >/dev/null 2>&1 ||
    fail "embed failed"
  "$VLMO" index build --embeddings emb.safetensors --out idx.safetensors >/dev/null 2>idx.err || fail "index build: $(cat idx.err)"
  a=$("$VLMO" search --model m1.safetensors --index idx.safetensors --text "a man" --top-k 3 --json 2>&1)
  b=$("$VLMO" search --model m1.safetensors --index emb.safetensors --text "a man" --top-k 3 --json 2>&1)
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "search over the index differs: $a vs $b"
  run_case "ivfpq on 3 vectors" "IVF-PQ needs at least 256 vectors" index build --embeddings emb.safetensors --out i2.safetensors --type ivfpq
  run_case "index type" "index type \"lsh\": expected flat, ivfpq or hnsw" index build --embeddings emb.safetensors --out i2.safetensors --type lsh

  note "bad data that a run survives: 3 corrupt / missing of 13 pairs over many epochs; a bad UTF-8 line"
  "$VLMO" pretrain --stage vl --karpathy k13.json --image-root img "${V[@]}" --steps 30 --batch-size 4 \
    --out k13.safetensors --metrics k13.jsonl 2>k13.err || fail "13 pairs with 3 unusable: $(tail -n 1 k13.err)"
  grep -q 'bad1.jpg.*\[corrupt_image\]' k13.err || fail "corrupt image not named in the log"
  grep -q 'bad3.jpg: no such image file \[missing_file\]' k13.err || fail "missing image not named in the log"
  grep -q '"skipped_missing_file"' k13.jsonl || fail "skips not counted in the metrics"
  printf 'a cat\n\xff\xfe broken\nthe dog runs\n' > bad.txt
  "$VLMO" pretrain --stage text --text bad.txt "${V[@]}" --out b.safetensors --metrics b.jsonl 2>b.err ||
    fail "bad UTF-8 line stopped the run: $(tail -n 1 b.err)"
  grep -q 'bad.txt:2: not valid UTF-8 (byte 0) \[bad_utf8\]' b.err || fail "bad UTF-8 line not named"
  grep -q '^text length 16 tokens (max_text_len of tiny.json)' b.err || fail "text length not the config's: $(grep '^text length' b.err)"
  "$VLMO" pretrain --stage image --images img "${V[@]}" --steps 12 --out im.safetensors --metrics im.jsonl 2>im.err ||
    fail "image folder with corrupt files stopped the run: $(tail -n 1 im.err)"
  grep -q 'bad2.jpg.*\[corrupt_image\]' im.err || fail "corrupt image of the folder not named"
fi

[ $failures -eq 0 ] && echo "cli_faults: all passed ($PARTS)" >&2
exit $((failures > 0))
