#!/usr/bin/env bash
# `vlmo pretrain` as torchrun starts it: 2 processes on 127.0.0.1 (RANK, WORLD_SIZE,
# MASTER_ADDR, MASTER_PORT), stage vl on a WebDataset shard of the demo's gallery.
#   - both ranks finish; only rank 0 writes the checkpoint, the metrics and progress;
#   - a rank killed mid-run makes the other exit non-zero with a clear error within
#     --dist-timeout; the last checkpoint resumes on one process (batch 8 = 2 x 4);
#   - --contrastive-batch global: 3 steps on 2 ranks x 4, on 1 process x 8 and on 1 process x
#     4 x accumulate 2 end at the same weights (drop path and dropout on);
#   - 4 shards given as pipe: URLs are split over 2 ranks x 2 loader threads; 1 shard with
#     --resample feeds 2 ranks x 2 loader threads;
#   - `vlmo demo` (step scale 0.01) on 2 ranks: the same global batches, one report by rank 0;
#   - `vlmo finetune --task coco` on 2 ranks: each optimizer step sees the recipe's batch (3072),
#     as on 1 process; a micro-batch that does not divide it is rounded down and said.
# usage: cli_dist.sh VLMO GALLERY_DIR WORK
set -u -o pipefail
VLMO=$1 GALLERY=$2 WORK=$3
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
python3 - "$GALLERY" <<'PY'
import io, os, sys, tarfile
g = sys.argv[1]
words = ["red", "blue", "green", "circle", "square", "triangle", "left", "right"]
files = sorted(os.listdir(g))[:64]
def write(name, items):
    with tarfile.open(name, "w") as t:
        for i, f in items:
            t.add(f"{g}/{f}", arcname=f"{i:05d}.png")
            cap = " ".join(words[(i * 7 + k * 3) % 8] for k in range(5)).encode()
            info = tarfile.TarInfo(f"{i:05d}.txt"); info.size = len(cap); t.addfile(info, io.BytesIO(cap))
write("pairs.tar", list(enumerate(files)))
for s in range(4):  # the same pairs in 4 shards
    write(f"part-{s}.tar", [(i, f) for i, f in enumerate(files) if i % 4 == s])
PY
cat > tiny.json <<'J'
{"embed_dim": 32, "depth": 2, "num_heads": 2, "image_size": 32, "vlffn_start_layer_index": 1,
 "max_text_len": 16, "heads": ["mlm", "itm", "itc"], "drop_path_rate": 0}
J
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rank() {  # rank r of 2 with the rest of the arguments; output in r$r.log. Run in the background,
  # its job's pid is vlmo's own (exec), so kill reaches it.
  local r=$1 p=$2; shift 2
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$p OMP_NUM_THREADS=1 \
    exec "$VLMO" pretrain --stage vl --config tiny.json --webdataset pairs.tar --batch-size 4 --global-batch 256 --warmup 1 \
    "$@" > "r$r.log" 2>&1
}

# 1. Two ranks, 3 steps.
p=$(port)
(rank 0 "$p" --steps 3 --out a/ck.safetensors --metrics a/m.jsonl) & p0=$!
(rank 1 "$p" --steps 3 --out a/ck.safetensors --metrics a/m.jsonl) & p1=$!
mkdir -p a a1
wait $p0; rc0=$?; wait $p1; rc1=$?
cat r0.log
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat r1.log; fail "ranks exited $rc0 / $rc1"; }
grep -q "distributed: 2 processes" r0.log || fail "rank 0 does not announce the group"
# The global batch is the whole step's, as the official's batch_size: 256 / (4 x 2) = 32 each.
grep -q "optimizer steps of 256 samples (2 process(es) x 32 micro-batch(es) x 4)" r0.log ||
  fail "the step's global batch is not 256 over 2 processes"
[ -f a/ck.safetensors ] || fail "no checkpoint"
[ "$(wc -l < a/m.jsonl)" -eq 3 ] || fail "metrics: $(wc -l < a/m.jsonl) lines, expected 3 (rank 0 only)"
grep -q "step 3/3" r1.log && fail "rank 1 printed progress"
echo "ok: 2 ranks, 3 steps, one checkpoint and 3 metrics lines from rank 0"
# The same global batch on one process (batch 8 = 2 x 4): the same samples with the same
# augmentation and masks, hence the same step-1 ITC loss (ITM draws random negatives; MLM is a
# mean per rank, as with the official DDP).
OMP_NUM_THREADS=1 "$VLMO" pretrain --stage vl --config tiny.json --webdataset pairs.tar --batch-size 8 --global-batch 256 \
  --warmup 1 --steps 1 --out a1/ck.safetensors --metrics a1.jsonl > r.log 2>&1 || { mkdir -p a1; cat r.log; fail "1 process failed"; }
python3 - <<'PY' || fail "step-1 ITC loss differs between 2 x 4 and 1 x 8"
import json
two = json.loads(open("a/m.jsonl").readline())["itc_loss"]
one = json.loads(open("a1.jsonl").readline())["itc_loss"]
print(f"step-1 ITC loss: 2 processes x 4 = {two:.9f}, 1 process x 8 = {one:.9f}")
assert abs(two - one) < 1e-6 * abs(one), (two, one)
PY

# 2. Rank 1 killed mid-run: rank 0 stops with a clear error within --dist-timeout (4 s).
p=$(port)
mkdir -p b
(rank 0 "$p" --steps 100000 --checkpoint-every 1 --dist-timeout 4 --out b/ck.safetensors --metrics b/m.jsonl) & p0=$!
(rank 1 "$p" --steps 100000 --checkpoint-every 1 --dist-timeout 4 --out b/ck.safetensors --metrics b/m.jsonl) & p1=$!
trap 'kill -9 $p0 $p1 2>/dev/null' EXIT
for _ in $(seq 1 600); do [ -s b/m.jsonl ] && [ "$(wc -l < b/m.jsonl)" -ge 3 ] && break; sleep 0.1; done
kill -9 $p1
t0=$(date +%s.%N)
wait $p0; rc0=$?
dt=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
tail -2 r0.log
[ $rc0 -ne 0 ] || fail "rank 0 exited 0 after rank 1 died"
grep -q "another rank died or stopped answering" r0.log || fail "rank 0's error does not say what happened"
python3 -c "import sys; sys.exit(0 if $dt < 15 else 1)" || fail "rank 0 took $dt s to stop"
echo "ok: rank 1 killed -> rank 0 exit $rc0 after $dt s"

# 3. The last checkpoint resumes on one process with the same global batch.
steps=$(python3 -c "import json; print(int(json.loads(open('b/m.jsonl').read().splitlines()[-1])['step']))")
OMP_NUM_THREADS=1 "$VLMO" pretrain --stage vl --config tiny.json --webdataset pairs.tar --batch-size 8 --global-batch 256 \
  --warmup 1 --steps $((steps + 2)) --out b/ck.safetensors --metrics b/m.jsonl --resume b/ck.safetensors > r.log 2>&1 \
  || { cat r.log; fail "resume on one process failed"; }
last=$(python3 -c "import json; print(int(json.loads(open('b/m.jsonl').read().splitlines()[-1])['step']))")
[ "$last" -eq $((steps + 2)) ] || fail "resumed run ended at step $last"
echo "ok: resumed on 1 process from step $steps to $last"

# 4. --contrastive-batch global: the three ways of cutting a step of 8 give the same weights.
sed 's/"drop_path_rate": 0/"drop_path_rate": 0.1/' tiny.json > tiny_dp.json
global() { echo --config tiny_dp.json --contrastive-batch global --steps 3 --lr 1e-3 --checkpoint-every 0; }
p=$(port)
mkdir -p g2 g1 ga
(rank 0 "$p" $(global) --accumulate 1 --out g2/ck.safetensors --metrics g2/m.jsonl) & p0=$!
(rank 1 "$p" $(global) --accumulate 1 --out g2/ck.safetensors --metrics g2/m.jsonl) & p1=$!
wait $p0; rc0=$?; wait $p1; rc1=$?
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat r0.log r1.log; fail "global: ranks exited $rc0 / $rc1"; }
one() { OMP_NUM_THREADS=1 "$VLMO" pretrain --stage vl --webdataset pairs.tar --warmup 1 $(global) "$@" > r.log 2>&1 || { cat r.log; fail "global on 1 process ($*)"; }; }
one --batch-size 8 --accumulate 1 --out g1/ck.safetensors --metrics g1/m.jsonl
one --batch-size 4 --accumulate 2 --out ga/ck.safetensors --metrics ga/m.jsonl
python3 - <<'PY' || fail "global contrastive batch: the weights depend on how the step is split"
import json, struct
from array import array
def weights(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k.startswith("model.") and v["dtype"] == "F32":
            a, b = v["data_offsets"]
            out[k] = array("f", data[a:b])
    return out
two, one, acc = weights("g2/ck.safetensors"), weights("g1/ck.safetensors"), weights("ga/ck.safetensors")
init_moved = 0.0
def worst(x, y):
    return max(max(abs(p - q) for p, q in zip(x[k], y[k])) for k in x)
assert len(two) > 20 and two.keys() == one.keys() == acc.keys()
d21, d2a = worst(two, one), worst(two, acc)
loss = lambda p: [json.loads(l)["itc_loss"] for l in open(p)]
print(f"global batch, weights after 3 steps: |2x4 - 1x8| = {d21:.2e}, |2x4 - 1x4x2| = {d2a:.2e}; "
      f"ITC loss by step 2x4 {loss('g2/m.jsonl')}, 1x8 {loss('g1/m.jsonl')}")
assert d21 < 2e-5 and d2a < 2e-5, (d21, d2a)
PY
echo "ok: --contrastive-batch global: 2 ranks x 4 = 1 x 8 = 1 x 4 x 2"

# 5. Shards split by rank and loader thread, read through pipe: URLs; resampling.
shards() {  # rank r with the shard arguments
  local r=$1 p=$2; shift 2
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$p OMP_NUM_THREADS=1 \
    exec "$VLMO" pretrain --stage vl --config tiny.json --batch-size 4 --accumulate 1 --warmup 1 --steps 4 \
    --loader-threads 2 --checkpoint-every 0 "$@" > "s$r.log" 2>&1
}
mkdir -p s1 s2
p=$(port)
(shards 0 "$p" --webdataset "pipe:cat part-{0..3}.tar" --out s1/ck.safetensors --metrics s1/m.jsonl) & p0=$!
(shards 1 "$p" --webdataset "pipe:cat part-{0..3}.tar" --out s1/ck.safetensors --metrics s1/m.jsonl) & p1=$!
wait $p0; rc0=$?; wait $p1; rc1=$?
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat s0.log s1.log; fail "pipe: shards: ranks exited $rc0 / $rc1"; }
grep -q "webdataset: 4 shard(s), split over 2 rank(s) x 2 loader thread(s)" s0.log || { cat s0.log; fail "no shard split"; }
[ "$(wc -l < s1/m.jsonl)" -eq 4 ] || fail "pipe: shards: $(wc -l < s1/m.jsonl) metrics lines, expected 4"
p=$(port)
(shards 0 "$p" --webdataset pairs.tar --resample --out s2/ck.safetensors --metrics s2/m.jsonl) & p0=$!
(shards 1 "$p" --webdataset pairs.tar --resample --out s2/ck.safetensors --metrics s2/m.jsonl) & p1=$!
wait $p0; rc0=$?; wait $p1; rc1=$?
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat s0.log s1.log; fail "--resample: ranks exited $rc0 / $rc1"; }
grep -q "webdataset: 1 shard(s), resampled by 2 rank(s) x 2 loader thread(s)" s0.log || { cat s0.log; fail "no resampling"; }
echo "ok: 4 pipe: shards split over 2 ranks x 2 loader threads; 1 shard resampled by the same"

# 6. The demo on 2 processes: every stage keeps its global batch; rank 0 alone reports.
p=$(port)
demo() { RANK=$1 WORLD_SIZE=2 LOCAL_RANK=$1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$p OMP_NUM_THREADS=1 \
  exec "$VLMO" demo --step-scale 0.01 --quiet --seed 3 --out demo2 > "d$1.log" 2>&1; }
(demo 0) & p0=$!
(demo 1) & p1=$!
wait $p0; rc0=$?; wait $p1; rc1=$?
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat d0.log d1.log; fail "demo on 2 processes: exit $rc0 / $rc1"; }
grep -q "VLMo demo: shapes world" d0.log || fail "rank 0 printed no summary"
grep -q "VLMo demo" d1.log && fail "rank 1 printed the summary too"
python3 - <<'PY' || fail "demo on 2 processes: report"
import json
r = json.load(open("demo2/report.json"))
assert r["processes"] == 2, r["processes"]
batches = {k: v["batch"] for k, v in r["stages"].items()}
print("demo on 2 processes: global batches", batches)
rc = r["recipe"]  # every stage keeps the recipe's global batch (each rank takes half of it)
want = {"stage1-image": rc["stage1_batch"], "stage2-text": rc["stage2_batch"], "stage3-vl": rc["stage3_batch"],
        "finetune-retrieval": rc["retrieval_batch"], "finetune-vqa": rc["vqa_batch"], "finetune-nlvr2": rc["nlvr2_batch"]}
assert batches == want, (batches, want)
for k in ("retrieval", "vqa", "nlvr2"):
    assert k in r, k
PY
echo "ok: the demo on 2 processes"

# 7. Fine-tuning on 2 processes: the recipe's batch (COCO retrieval: 3072) per optimizer step,
# accumulate = 3072 / (--batch-size x 2), as on one process with 3072 / --batch-size.
python3 - "$GALLERY" <<'PY'
import json, os, sys
files = sorted(os.listdir(sys.argv[1]))[:32]
words = ["red", "blue", "green", "circle", "square", "triangle"]
images = [{"filename": f, "split": "train" if i < 24 else "val",
           "sentences": [{"raw": f"a {words[i % 6]} {words[(i + 3) % 6]}"}]} for i, f in enumerate(files)]
json.dump({"images": images}, open("karpathy.json", "w"))
PY
ft() {  # ft RANK PORT WORLD BATCH OUT: one finetune process of WORLD
  RANK=$1 WORLD_SIZE=$3 LOCAL_RANK=$1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$2 OMP_NUM_THREADS=1 \
    exec "$VLMO" finetune --task coco --init a/ck.safetensors --karpathy karpathy.json --images "$GALLERY" --image-size 32 \
    --batch-size "$4" --steps 1 --val-every 0 --checkpoint-every 0 --out "$5/ck.safetensors" --metrics "$5/m.jsonl" > "$5.$1.log" 2>&1
}
mkdir -p f2 f1 fr
p=$(port)
(ft 0 "$p" 2 32 f2) & p0=$!
(ft 1 "$p" 2 32 f2) & p1=$!
wait $p0; rc0=$?; wait $p1; rc1=$?
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat f2.0.log f2.1.log; fail "finetune on 2 processes: exit $rc0 / $rc1"; }
(ft 0 "$(port)" 1 64 f1) || { cat f1.0.log; fail "finetune on 1 process"; }
p=$(port)
(ft 0 "$p" 2 40 fr) & p0=$!
(ft 1 "$p" 2 40 fr) & p1=$!
wait $p0; rc0=$?; wait $p1; rc1=$?
[ $rc0 -eq 0 ] && [ $rc1 -eq 0 ] || { cat fr.0.log fr.1.log; fail "finetune on 2 processes, batch 40: exit $rc0 / $rc1"; }
grep -q "3072 is not a multiple of --batch-size 40 x 2 process(es) = 80: 38 micro-batch(es) per step, 3040 samples" fr.0.log \
  || { cat fr.0.log; fail "the rounded step batch is not stated"; }
python3 - <<'PY' || fail "finetune: the optimizer step does not see the recipe's batch"
import json
two, one, rounded = (json.loads(open(f"{d}/m.jsonl").readline()) for d in ("f2", "f1", "fr"))
print(f"finetune coco, samples per optimizer step: 2 processes x 32 = {two['samples']:.0f}, "
      f"1 process x 64 = {one['samples']:.0f}, 2 processes x 40 = {rounded['samples']:.0f}")
assert two["samples"] == 3072 and one["samples"] == 3072 and rounded["samples"] == 3040, (two, one, rounded)
PY
grep -q "1 steps of 3072 samples (2 process(es) x 48 micro-batch(es) x 32)" f2.0.log || { cat f2.0.log; fail "the step batch line"; }
echo "ok: finetune on 2 processes: 3072 samples per step (48 micro-batches x 32 x 2), as on 1 process (48 x 64)"
