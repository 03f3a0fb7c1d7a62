#!/usr/bin/env python3
"""Sharded feature extraction on a Ray cluster, committed once.

Each Ray task runs `sv-train extract --shard i/N` for its share of the store's fragments (one GPU
each when the cluster has GPUs): it writes its data files into the store and returns what it
staged, without committing. When every shard is back, the driver writes the staged files to
`--staging` and makes one commit with `sv-train extract --commit`. A failed shard is named; run
the script again with `--only i,j` to redo those alone (the staged files of the others are read
back from `--staging`). Nothing is visible in the store before the commit.

The store must be reachable from every worker at the same address: an `s3://bucket/prefix`
(credentials and endpoint from the AWS_* variables, which are passed on to the workers), or a
folder on a shared file system. The `sv-train` binary must be at the same path on every node.

    python3 scripts/ray_extract.py --experiment E.toml --shards 8 --sv-train target/release/sv-train
    # on a cluster: ray start --head on one node, ray start --address HEAD:6379 on the others, then
    python3 scripts/ray_extract.py --address auto --experiment E.toml --shards 64 ...
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import ray

FORWARDED_ENV = ("AWS_", "SV_", "LANCE_", "OBJECT_STORE_", "HF_", "RUST_LOG", "CUDA_VISIBLE")


def worker_env():
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def parse_only(text, n):
    if not text:
        return list(range(n))
    out = sorted({int(x) for x in text.split(",") if x.strip()})
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        sys.exit(f"--only {text}: shards {bad} are not in 0..{n - 1}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True, help="experiment TOML (sent to the workers as text)")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--sv-train", default="sv-train", help="path of the sv-train binary on every node")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local one-node cluster)")
    p.add_argument("--gpus-per-shard", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-shard", type=float, default=1.0)
    p.add_argument("--retries", type=int, default=1, help="Ray retries of a shard whose worker died")
    p.add_argument("--staging", default=None, help="folder for the staged shard files (default: a new temp folder)")
    p.add_argument("--only", default="", help="comma-separated shards to (re)run; the others are read from --staging")
    p.add_argument("--no-commit", action="store_true", help="stage only")
    a = p.parse_args()
    if a.shards < 1:
        sys.exit("--shards must be at least 1")
    with open(a.experiment) as f:
        experiment_text = f.read()
    staging = a.staging or tempfile.mkdtemp(prefix="sv-staged-")
    os.makedirs(staging, exist_ok=True)
    todo = parse_only(a.only, a.shards)

    ray.init(address=a.address, runtime_env={"env_vars": worker_env()}, log_to_driver=True)
    gpus = a.gpus_per_shard
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    @ray.remote(max_retries=a.retries)
    def run_shard(i, n, binary, text):
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="sv-shard-") as d:
            exp = os.path.join(d, "experiment.toml")
            with open(exp, "w") as f:
                f.write(text)
            out = os.path.join(d, "staged.json")
            cmd = [binary, "extract", "--experiment", exp, "--shard", f"{i}/{n}", "--out", out]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
            if r.returncode != 0:
                raise RuntimeError(f"shard {i}/{n} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
            with open(out) as f:
                staged = f.read()
        return {"shard": i, "staged": staged, "seconds": time.time() - t0, "log": r.stderr.strip()[-500:]}

    t0 = time.time()
    refs = {
        i: run_shard.options(num_gpus=gpus, num_cpus=a.cpus_per_shard).remote(i, a.shards, a.sv_train, experiment_text)
        for i in todo
    }
    failed = {}
    rows = 0
    for i, ref in refs.items():
        try:
            res = ray.get(ref)
        except Exception as e:  # a task error or a lost worker: name the shard, keep the others
            failed[i] = str(e).strip().splitlines()[-1][:500]
            continue
        path = os.path.join(staging, f"shard-{i:05d}-of-{a.shards:05d}.json")
        with open(path + ".tmp", "w") as f:
            f.write(res["staged"])
        os.replace(path + ".tmp", path)
        staged = json.loads(res["staged"])
        rows += staged["rows"]
        print(f"shard {i}/{a.shards}: {staged['rows']} rows, {len(staged['fragments'])} fragments, {res['seconds']:.1f} s")
    stage_s = time.time() - t0
    if failed:
        for i, why in sorted(failed.items()):
            print(f"shard {i}/{a.shards} FAILED: {why}", file=sys.stderr)
        only = ",".join(str(i) for i in sorted(failed))
        sys.exit(f"{len(failed)} shard(s) failed; nothing committed. Re-run them alone: --staging {staging} --only {only}")

    if a.no_commit:
        print(f"staged {rows} rows of shards {','.join(map(str, todo))} in {stage_s:.1f} s; staged files in {staging}")
        return
    files = [os.path.join(staging, f"shard-{i:05d}-of-{a.shards:05d}.json") for i in range(a.shards)]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        sys.exit(f"staged files missing in {staging}: {missing}; run those shards with --only")
    print(f"staged {rows} rows in {len(todo)} of {a.shards} shards in {stage_s:.1f} s ({rows / max(stage_s, 1e-9):.1f} rows/s); staged files in {staging}")
    t1 = time.time()
    r = subprocess.run([a.sv_train, "extract", "--experiment", a.experiment, "--commit", *files])
    if r.returncode != 0:
        sys.exit(f"the commit failed (exit {r.returncode}); the staged files are kept in {staging}")
    print(f"commit: {time.time() - t1:.2f} s; total {time.time() - t0:.1f} s")
    print(json.dumps({"shards": a.shards, "rows": rows, "stage_seconds": stage_s,
                      "commit_seconds": time.time() - t1, "staging": staging}))


if __name__ == "__main__":
    main()
