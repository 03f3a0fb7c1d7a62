#!/usr/bin/env python3
"""Cold start of sv-miner: seconds from process start to /health answering ("ready") and to the
first answer of /v1/challenge, for each way of starting given; optionally a load test with
sv-load against the last one.

    python3 benchmarks/miner_start.py --miner BIN --bundle DIR --image JPG \
        --mode cold:--no-bundle-kernels --mode bundle: --mode restart: [--load BIN --rates 8,16,32
        --load-args "--signed --probe-seed sv-replay --miner-hotkey HK"]

A mode is NAME:EXTRA-ARGS. Every mode gets a fresh kernel cache folder except `restart`, which
reuses the previous mode's (what a restarted miner finds). Prints one JSON line per mode.
"""
import argparse, base64, json, os, shlex, signal, subprocess, sys, tempfile, time, urllib.request

HOTKEY = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"  # //Bob


def get(url, timeout=1.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def post(url, body, timeout=60.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--miner", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--mode", action="append", required=True)
    ap.add_argument("--port", type=int, default=18291)
    ap.add_argument("--timeout", type=float, default=400.0)
    ap.add_argument("--load", help="sv-load binary: load-test the last mode's miner")
    ap.add_argument("--rates", default="8,16,32,64")
    ap.add_argument("--duration", default="8")
    ap.add_argument("--load-args", default="", help="more sv-load flags, e.g. '--signed --probe-seed sv-replay --miner-hotkey HK'")
    ap.add_argument("--json", help="append results here")
    ap.add_argument("--miner-cpus", default="", help="run the miner on these cores (taskset -c), e.g. 0-11")
    ap.add_argument("--load-cpus", default="", help="run sv-load on these cores (taskset -c), e.g. 12-15")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    image = base64.b64encode(open(a.image, "rb").read()).decode()
    work = a.workdir or tempfile.mkdtemp()
    cache = None
    # No answer cache: every request runs the model.
    cfg = os.path.join(work, "miner.toml")
    open(cfg, "w").write("[cascade]\ncache_ttl_s = 0\n")
    base = f"http://127.0.0.1:{a.port}"
    # The JSON API lives on the admin listener (the next port here).
    admin = f"127.0.0.1:{a.port + 1}"
    api = f"http://{admin}"
    for i, mode in enumerate(a.mode):
        name, _, extra = mode.partition(":")
        if name != "restart" or cache is None:
            cache = os.path.join(work, f"kcache-{i}-{name}")
        log = open(os.path.join(work, f"miner-{name}.log"), "w")
        pin = ["taskset", "-c", a.miner_cpus] if a.miner_cpus else []
        cmd = pin + [a.miner, "--bundle", a.bundle, "--host", "127.0.0.1", "--port", str(a.port), "--admin-addr", admin,
               "--hotkey", HOTKEY,
               "--kernel-cache", cache, "--config", cfg] + shlex.split(extra)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        ready = first = None
        answer = None
        try:
            while time.perf_counter() - t0 < a.timeout:
                if p.poll() is not None:
                    raise SystemExit(f"miner exited ({p.returncode}): see {log.name}\n" + open(log.name).read()[-3000:])
                try:
                    if get(base + "/health")[0] == 200:
                        ready = time.perf_counter() - t0
                        break
                except Exception:
                    time.sleep(0.02)
            if ready is None:
                raise SystemExit(f"mode {name}: not ready after {a.timeout} s")
            t1 = time.perf_counter()
            status, answer = post(api + "/v1/challenge", {"type": "image", "data": image})
            first = time.perf_counter() - t0
            first_latency = time.perf_counter() - t1
            seconds = []
            for _ in range(20):
                t = time.perf_counter()
                post(api + "/v1/challenge", {"type": "image", "data": image, "challenge_id": str(t)})
                seconds.append(time.perf_counter() - t)
            seconds.sort()
            load = None
            if a.load and i == len(a.mode) - 1:
                out = os.path.join(work, "load.json")
                pin_load = ["taskset", "-c", a.load_cpus] if a.load_cpus else []
                r = subprocess.run(pin_load + [a.load, "--addr", f"127.0.0.1:{a.port}", "--admin-addr", admin, "--rates", a.rates, "--duration", a.duration,
                                    "--max-requests", "100000", "--json", out] + shlex.split(a.load_args), capture_output=True, text=True)
                print(r.stdout + r.stderr, file=sys.stderr)
                load = json.load(open(out)).get("load") if os.path.exists(out) else None
                # The miner's own stage timings under that load (Prometheus text).
                try:
                    open(os.path.join(work, "metrics.txt"), "wb").write(get(api + "/metrics", timeout=5)[1])
                except Exception as e:
                    print(f"no /metrics: {e}", file=sys.stderr)
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        row = {"mode": name, "args": extra, "miner_cpus": a.miner_cpus or "all", "load_cpus": a.load_cpus or "all", "ready_s": round(ready, 3), "first_answer_s": round(first, 3),
               "first_latency_ms": round(first_latency * 1e3, 1),
               "repeat_p50_ms": round(seconds[len(seconds) // 2] * 1e3, 2), "answer": answer,
               "log_tail": open(log.name).read().strip().splitlines()[-4:]}
        if load is not None:
            row["load"] = load
        print(json.dumps(row), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
