#!/usr/bin/env python3
"""Technique or hyper-parameter comparisons spread over Ray workers.

Every variant is an experiment TOML (`--experiments a.toml b.toml`: a technique comparison) or a
point of a grid over one base experiment (`--experiment base.toml --grid train.lr=0.001,0.01
--grid head.hidden=128,256`: the product, each point run as `sv-train train --set ...`). One Ray
task trains one variant and returns its run's `metrics.json`; the driver gathers them under
`--out/sweep-<time>/<variant>/` and writes the usual comparison table with
`sv-train compare --runs`.

Before the tasks start, the driver runs `sv-train extract` once per variant, one after the
other, so that splits and feature columns are in the store and the training tasks only read it
(features already cached make this a no-op). The store must be reachable from every worker at the
same address (s3://... or a shared folder); the `sv-train` binary must be at the same path.

    python3 scripts/ray_sweep.py --experiment experiments/baseline.toml --grid train.lr=0.001,0.003 \
        --sv-train target/release/sv-train --out runs
"""
import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import ray

FORWARDED_ENV = ("AWS_", "SV_", "LANCE_", "OBJECT_STORE_", "HF_", "RUST_LOG", "CUDA_VISIBLE")


def variants(args):
    """[(label, experiment path, [--set overrides])]"""
    out = []
    for e in args.experiments or []:
        out.append((os.path.splitext(os.path.basename(e))[0], e, []))
    if args.experiment:
        axes = []
        for g in args.grid or []:
            key, _, values = g.partition("=")
            if not key or not values:
                sys.exit(f"--grid {g!r} is not key=v1,v2,...")
            axes.append([(key, v) for v in values.split(",")])
        base = os.path.splitext(os.path.basename(args.experiment))[0]
        for point in itertools.product(*axes) if axes else [()]:
            label = base + "".join(f"-{k.split('.')[-1]}{v}" for k, v in point)
            label = re.sub(r"[^A-Za-z0-9._-]", "_", label)
            out.append((label, args.experiment, [f"{k}={v}" for k, v in point]))
    if not out:
        sys.exit("nothing to sweep: give --experiments, or --experiment with --grid")
    labels = [l for l, _, _ in out]
    if len(set(labels)) != len(labels):
        sys.exit(f"two variants share a name: {labels}")
    return out


def sets_args(sets):
    return [x for s in sets for x in ("--set", s)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", nargs="+", help="experiment TOMLs to compare")
    p.add_argument("--experiment", help="base experiment of a --grid")
    p.add_argument("--grid", action="append", help="key=v1,v2,... (repeat for a product)")
    p.add_argument("--sv-train", default="sv-train")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local one-node cluster)")
    p.add_argument("--cpus-per-run", type=float, default=1.0)
    p.add_argument("--gpus-per-run", type=float, default=0.0)
    p.add_argument("--out", default="runs")
    a = p.parse_args()
    todo = variants(a)

    # Splits and features first, one variant after the other (a no-op when cached).
    for label, exp, sets in todo:
        r = subprocess.run([a.sv_train, "extract", "--experiment", exp, *sets_args(sets)], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"extract for {label} failed: {r.stderr.strip()[-2000:]}")
        print(f"{label}: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else 'features ready'}")

    ray.init(address=a.address, runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}})

    @ray.remote
    def train(label, text, sets, binary, cwd):
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="sv-sweep-") as d:
            exp = os.path.join(d, "experiment.toml")
            with open(exp, "w") as f:
                f.write(text)
            cmd = [binary, "train", "--experiment", exp, *sets_args(sets), "--set", f"name={json.dumps(label)}"]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        if r.returncode != 0:
            raise RuntimeError(f"{label} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
        m = re.search(r"^run \S+ -> (.+)$", r.stdout, re.M)
        if not m:
            raise RuntimeError(f"{label}: no run folder in the output:\n{r.stdout[-1000:]}")
        run_dir = m.group(1).strip()
        with open(os.path.join(cwd, run_dir, "metrics.json")) as f:  # join keeps an absolute run_dir
            metrics = f.read()
        return {"label": label, "run_dir": run_dir, "metrics": metrics, "seconds": time.time() - t0}

    t0 = time.time()
    refs = []
    for label, exp, sets in todo:
        with open(exp) as f:
            text = f.read()
        refs.append(train.options(num_cpus=a.cpus_per_run, num_gpus=a.gpus_per_run).remote(label, text, sets, a.sv_train, os.getcwd()))
    sweep = os.path.join(a.out, time.strftime("sweep-%Y%m%d-%H%M%S"))
    runs, failed = [], []
    for ref, (label, _, _) in zip(refs, todo):
        try:
            res = ray.get(ref)
        except Exception as e:
            failed.append(label)
            print(f"{label} FAILED: {str(e).strip().splitlines()[-1][:500]}", file=sys.stderr)
            continue
        d = os.path.join(sweep, label)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "metrics.json"), "w") as f:
            f.write(res["metrics"])
        runs.append(d)
        print(f"{label}: {res['seconds']:.1f} s, run {res['run_dir']}")
    print(f"{len(runs)} of {len(todo)} variants trained in {time.time() - t0:.1f} s on Ray")
    if runs:
        r = subprocess.run([a.sv_train, "compare", "--runs", *runs, "--out", sweep])
        if r.returncode != 0:
            sys.exit("the comparison failed")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
