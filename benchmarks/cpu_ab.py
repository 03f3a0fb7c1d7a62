#!/usr/bin/env python3
"""A/B of CPU-forward settings, interleaved: every round runs each variant once per (cores, preset,
batch), so that a noisy host (the GPU machine's CPU is shared) moves all variants alike; prints the
median img/s of each over the rounds and its ratio to the first variant.

    python3 benchmarks/cpu_ab.py --ours .device/bin/bench-backbone --rounds 3 \\
        --variants SV_CPU_LN=model,SV_CPU_LN=fused --cores 2,16 --cases vits16:1,vits16:16,vitb16:1
    python3 benchmarks/cpu_ab.py --ours .device/bin/bench-backbone --variants bin=.device/bin/bench-backbone-prev,SV_CPU_KERNELS=1
"""
import argparse
import json
import os
import statistics
import subprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="the bench-backbone binary")
    ap.add_argument("--variants", required=True,
                    help="comma-separated NAME=VALUE environment settings; bin=PATH runs another binary instead")
    ap.add_argument("--cores", default="2,16")
    ap.add_argument("--cases", default="vits16:1,vits16:16", help="preset:batch, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", help="append every row to this JSON-lines file")
    args = ap.parse_args()
    variants = args.variants.split(",")
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    results = {}
    for rnd in range(args.rounds):
        for cores in [int(c) for c in args.cores.split(",")]:
            for preset, batch in cases:
                for var in variants:
                    name, value = var.split("=", 1)
                    binary, env = (value, dict(os.environ)) if name == "bin" else (args.ours, dict(os.environ, **{name: value}))
                    cmd = ["taskset", "-c", f"0-{cores - 1}", binary, "--backend", "cpu", "--presets", preset,
                           "--batches", str(batch), "--warmup", "1", "--iters", str(args.iters), "--max-seconds", "10"]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
                    if out.returncode != 0 or not rows:
                        print(f"failed: {var} {' '.join(cmd)}\n{out.stderr[-2000:]}", flush=True)
                        continue
                    r = rows[0]
                    r.update(variant=var, cores=cores, round=rnd)
                    results.setdefault((cores, preset, batch, var), []).append(r["img_s"])
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(r) + "\n")
                    print(f"round {rnd} {cores} cores {preset} b{batch} {var}: {r['img_s']:.1f} img/s", flush=True)
    print("\n| cores | preset | batch | variant | median img/s | runs | vs first |")
    print("|---|---|---|---|---|---|---|")
    for cores in [int(c) for c in args.cores.split(",")]:
        for preset, batch in cases:
            base = results.get((cores, preset, batch, variants[0]))
            for var in variants:
                runs = results.get((cores, preset, batch, var))
                if not runs:
                    continue
                med = statistics.median(runs)
                ratio = f"{med / statistics.median(base):.2f}" if base else ""
                print(f"| {cores} | {preset} | {batch} | {var} | {med:.1f} | {' '.join(f'{v:.1f}' for v in runs)} | {ratio} |")


if __name__ == "__main__":
    main()
