#!/usr/bin/env bash
# Run ON THE GPU MACHINE (prepared by scripts/gpu_prepare.sh): one call that builds against the
# PyTorch (CUDA) LibTorch (PyTorch 2.11 / CUDA 13.0 there: its torch's CMake prefix), checks the reference fixtures on cuda, runs the CUDA unit tests and
# `vlmo bench`, and prints a short table. Results also go to $OUT (or /tmp/gpu-out) as JSON lines.
# Each stage reports and the script goes on, so that one call tells as much as possible.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-/tmp/gpu-out}
mkdir -p "$RESULTS"
say() { echo "== $*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
grep PRETTY_NAME /etc/os-release
for h in jpeglib.h png.h webp/decode.h utf8proc.h nlohmann/json.hpp httplib.h faiss/IndexFlat.h cairo/cairo.h gtest/gtest.h gloo/config.h; do
  [ -e /usr/include/$h ] || [ -e /usr/include/x86_64-linux-gnu/$h ] || echo "missing /usr/include/$h"
done

# Debian packages carried in gpu-fixtures/debs, unpacked beside the system (never into /).
DEPS=/opt/deps
if [ -d gpu-fixtures/debs ]; then
  mkdir -p $DEPS
  for d in gpu-fixtures/debs/*.deb; do dpkg -x "$d" $DEPS; done
  export LD_LIBRARY_PATH=$DEPS/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  export PKG_CONFIG_PATH=$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig:$DEPS/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}
  export CPATH=$DEPS/usr/include:$DEPS/usr/include/x86_64-linux-gnu:${CPATH:-}
fi

say "build"
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
start=$(date +%s)
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DVLMO_PCH=ON -DTORCH_CUDA_ARCH_LIST=9.0 \
      -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS/usr" -DVLMO_SHARED="$PWD/gpu-fixtures/shared" > "$RESULTS/cmake.log" 2>&1 \
  || { tail -30 "$RESULTS/cmake.log"; exit 1; }
cmake --build build-cuda -j"$(nproc)" --target vlmo vlmo_tests > "$RESULTS/build.log" 2>&1 \
  || { grep -m 20 -E "error|Error" "$RESULTS/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

say "check-reference --device cuda, both attention paths"
for f in gpu-fixtures/shared/fixtures/reference/*/; do
  for attention in fused plain; do
    echo "$(basename "$f") $attention: $(./build-cuda/vlmo check-reference --device cuda --attention $attention "$f" | tail -1)"
  done
done

say "unit tests (CPU paths and the fused/plain attention checks) on this machine"
OMP_NUM_THREADS=4 timeout 300 ./build-cuda/tests/vlmo_tests --gtest_filter='Bench.*:Quantize.*:Model.*:Objectives.*:Precision.*:LossScaling.*' 2>&1 | tail -3

say "vlmo bench --device cuda (base; fp32 / bf16 / fp16, fused and plain attention)"
B=./build-cuda/vlmo
{
  for precision in fp32 bf16 fp16; do
    for attention in fused plain; do
      timeout 60 $B bench --device cuda --preset base --task pretrain --batch 64 --steps 5 --precision $precision \
        --attention $attention --json --quiet
      timeout 45 $B bench --device cuda --preset base --task embed-image --image-size 384 --batch 256 --steps 5 \
        --precision $precision --attention $attention --json --quiet
    done
  done
  timeout 60 $B bench --device cuda --preset base --task pretrain --batch 128 --steps 5 --precision bf16 --activation-checkpointing --json --quiet
  timeout 120 $B bench --device cuda --preset base --task vqa,nlvr2,irtr,embed-text --batch 32 --steps 5 --precision bf16 --json --quiet
} | tee "$RESULTS/bench.jsonl"
python3 - "$RESULTS/bench.jsonl" <<'EOF'
import json, sys
print(f"{'task':12} {'prec':>4} {'attn':>5} {'ckpt':>4} {'size':>5} {'batch':>5} {'samples/s':>10} {'TFLOP/s':>8} {'% matmul':>9} {'peak GiB':>9}")
for line in open(sys.argv[1]):
    try: j = json.loads(line)
    except ValueError: continue
    print(f"{j['task']:12} {j.get('precision', 'fp32'):>4} {j.get('attention', '?'):>5} {'yes' if j.get('activation_checkpointing') else 'no':>4} {j['image_size']:5} {j['batch']:5} {j['samples_per_s']:10.1f} {j['tflops']:8.1f} "
          f"{j['percent_of_matmul']:8.1f}% {j['peak_memory_bytes']/2**30:9.2f}")
EOF
