#!/usr/bin/env python3
"""Every CPU path x precision of `vlmo bench`, one build, one sitting: shows which path is fastest
and whether it is the one the run policy picks by default.

A path is the attention option (--attention fused|plain), where the fp32 products run
(VLMO_CPU_BATCHED_MATMUL=onednn|aten) and, in bf16, how the bf16 products run (VLMO_CPU_BF16=
native|emulated). The default path is the run with none of them set. Each path runs ROUNDS times,
alternating with the others; the table keeps each path's best rate. With --cap-avx2 every run holds
the libraries to their AVX2 kernels (ATEN_CPU_CAPABILITY, OPENBLAS_CORETYPE, ONEDNN_MAX_CPU_ISA) and
the run policy to emulated bf16: the paths an AVX2-only CPU takes, on this CPU's cores.

Usage: bench/paths_table.py --build debian12|debian13 [--tasks embed-image,pretrain] [--rounds 2]
         [--precisions fp32,bf16] [--cap-avx2] [--threads N] [--jsonl FILE]
Debian 12's build is build-debian12/, Debian 13's build-debian13/, each run inside its root
(scripts/debian_root.sh). Prints one JSON line per run on stderr (and to --jsonl), then a Markdown
table on stdout: rate per task (images/s for embed-image, samples/s for the rest), the attention
kernels that ran, the fastest path per column in bold and the default marked.
"""
import argparse
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2", "VLMO_CPU_BF16": "emulated"}
# Per task: batch, timed steps, warm-up steps. Pre-training at batch 2 keeps a 2-core table within minutes.
TASKS = {"embed-image": (8, 3, 1), "embed-text": (8, 3, 1), "pretrain": (2, 1, 1), "vqa": (2, 2, 1)}


def paths(precision, cap_avx2):
    """(attention, products, bf16) triples; None for a setting left to the default."""
    bf16 = [None] if precision != "bf16" else ["emulated"] if cap_avx2 else ["native", "emulated"]
    return [(None, None, None)] + list(itertools.product(["fused", "plain"], ["onednn", "aten"], bf16))


def run(args, task, precision, path):
    att, prod, bf16 = path
    batch, steps, warmup = TASKS[task]
    env = dict(CAPS) if args.cap_avx2 else {}
    if prod:
        env["VLMO_CPU_BATCHED_MATMUL"] = prod
    if bf16:
        env["VLMO_CPU_BF16"] = bf16
    build = "build-" + args.build
    cmd = ["scripts/debian_root.sh", args.build[-2:], "env"] + [f"{k}={v}" for k, v in env.items()]
    cmd += [f"{build}/vlmo", "bench", "--task", task, "--precision", precision, "--batch", str(batch), "--steps", str(steps),
            "--warmup", str(warmup), "--threads", str(args.threads), "--json", "--quiet"]
    if att:
        cmd += ["--attention", att]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"paths_table: {' '.join(cmd)} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    got = json.loads(lines[-1])
    got["path"] = {"attention": att, "products": prod, "bf16": bf16, "cap_avx2": args.cap_avx2}
    return got


def name(path, got):
    att, prod, bf16 = path
    if att is None:
        pol = got["policy"]
        return f"default ({pol['attention']}, {pol['cpu_products']}" + (f", {pol['cpu_bf16']})" if got["precision"] == "bf16" else ")")
    return ", ".join(x for x in (att, prod, bf16) if x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", required=True, choices=["debian12", "debian13"])
    p.add_argument("--tasks", default="embed-image,pretrain")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cap-avx2", action="store_true")
    p.add_argument("--jsonl")
    args = p.parse_args()
    tasks = args.tasks.split(",")
    for t in tasks:
        if t not in TASKS:
            p.error(f"--tasks: {t!r} is not one of {', '.join(TASKS)}")
    for prec in args.precisions.split(","):
        if prec not in ("fp32", "bf16", "fp16"):
            p.error(f"--precisions: {prec!r} is not one of fp32, bf16, fp16")
    if args.rounds < 1 or args.threads < 1:
        p.error(f"--rounds and --threads must be at least 1 (got {args.rounds} and {args.threads})")
    best = {}  # (precision, path) -> {task: result}
    log = open(args.jsonl, "a") if args.jsonl else None
    for _ in range(args.rounds):
        for precision in args.precisions.split(","):
            for path in paths(precision, args.cap_avx2):
                for task in tasks:
                    got = run(args, task, precision, path)
                    if got is None:
                        continue
                    line = json.dumps(got, sort_keys=True)
                    print(line, file=sys.stderr)
                    if log:
                        log.write(line + "\n")
                        log.flush()
                    cell = best.setdefault((precision, path), {})
                    if task not in cell or got["samples_per_s"] > cell[task]["samples_per_s"]:
                        cell[task] = got
    if not best:
        sys.exit("paths_table: no run succeeded (the failures are above); is the build made? "
                 f"(scripts/debian_root.sh {args.build[-2:]} scripts/setup.sh build-{args.build})")
    first = next(iter(r for c in best.values() for r in c.values()))
    cpu = first["cpu"]
    print(f"{args.build} (LibTorch {first['libtorch']}), {cpu['model']} ({cpu['isa']}" +
          (", held to AVX2 kernels" if args.cap_avx2 else "") + f"), {args.threads} threads, best of {args.rounds}\n")
    units = {t: "images/s" if t == "embed-image" else "samples/s" for t in tasks}
    print("| precision | path | " + " | ".join(f"{t} ({units[t]}, batch {TASKS[t][0]}) | kernels" for t in tasks) + " |")
    print("|---|---|" + "---|---|" * len(tasks))
    for precision in args.precisions.split(","):
        rows = [(path, cell) for (prec, path), cell in best.items() if prec == precision]
        top = {t: max((c[t]["samples_per_s"] for _, c in rows if t in c), default=0) for t in tasks}
        for path, cell in rows:
            any_run = next(iter(cell.values()))
            cols = []
            for t in tasks:
                if t not in cell:
                    cols += ["failed", ""]
                    continue
                rate = f"{cell[t]['samples_per_s']:.3f}"
                if cell[t]["samples_per_s"] == top[t]:
                    rate = f"**{rate}**"
                kernels = ", ".join(f"{k} {v}" for k, v in sorted(cell[t].get("attention_kernels", {}).items()) if v)
                cols += [rate, kernels]
            print(f"| {precision} | {name(path, any_run)} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
