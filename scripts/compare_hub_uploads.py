#!/usr/bin/env python3
"""Upload one bundle twice to a local imitation of the Hub (scripts/hub_server.py): once with
huggingface_hub's own HfApi.upload_folder (Xet off: the classic LFS path the Hub still accepts),
once with `sv-train publish`; then check that both made the same requests (methods, routes,
headers that matter, JSON and NDJSON bodies, uploaded bytes) and that huggingface_hub's
hf_hub_download reads our model_card.json back as it is in the bundle.

    HF_HUB_DISABLE_XET=1 python compare_hub_uploads.py BUNDLE SV_TRAIN HOTKEY

Needs huggingface_hub (CI installs 2.4.0 in its own venv). The LFS uploads and verifies, which
huggingface_hub runs from a thread pool in any order, are compared as a set. huggingface_hub also sends
POST /api/validate-yaml for a README.md (an early check of its metadata; the commit checks it
again), which we do not: it is left out of the comparison, as are the downloads.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ["HF_HUB_DISABLE_XET"] = "1"
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def normalise(log_path, repo):
    out = []
    for line in open(log_path):
        r = json.loads(line)
        path = r["path"]
        if path.startswith("/api/validate-yaml") or "/resolve/" in path or path.startswith("/api/whoami"):
            continue
        path = path.replace(repo, "<repo>").replace(repo.split("/")[1], "<name>")
        h = r.get("headers", {})
        body = r.get("body") or {}
        if "ndjson" in body:
            b = [l for l in body["ndjson"] if l.get("key") != "header"]
            b.insert(0, {"key": "header", "value": {k: v for k, v in body["ndjson"][0]["value"].items() if k != "summary"}})
        elif "json" in body:
            b = body["json"]
            if isinstance(b, dict) and b.get("name") == repo.split("/")[1]:
                b = {**b, "name": "<name>"}
        else:
            b = {"len": body.get("len"), "sha256": body.get("sha256")}
        out.append({
            "method": r["method"],
            "path": path.split("?")[0],
            "content-type": h.get("content-type"),
            "accept-lfs": h.get("accept") == "application/vnd.git-lfs+json",
            "auth": "authorization" in h,
            "body": b,
        })
    # huggingface_hub uploads LFS objects from a thread pool: their PUTs and verifies come in any
    # order. Compare that phase as a set, in place.
    lfs = [i for i, r in enumerate(out) if r["path"].startswith("/__lfs/") or r["path"].endswith("/objects/verify")]
    for i, r in zip(lfs, sorted((out[i] for i in lfs), key=lambda r: json.dumps(r, sort_keys=True))):
        out[i] = r
    return out


def main():
    bundle, sv_train, hotkey = sys.argv[1:4]
    work = tempfile.mkdtemp()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    logs = {}
    server = None
    try:
        for who, repo in [("sdk", "someone/by-sdk"), ("ours", "someone/by-ours")]:
            log = os.path.join(work, f"{who}.jsonl")
            logs[who] = (log, repo)
            if server:
                server.terminate()
                server.wait()
            server = subprocess.Popen([sys.executable, os.path.join(HERE, "hub_server.py"), "--port", str(port),
                                       "--log", log, "--store", os.path.join(work, "hub-" + who), "--token", "hf_test"],
                                      stdout=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            if who == "sdk":
                from huggingface_hub import HfApi
                api = HfApi(endpoint=endpoint, token="hf_test")
                api.create_repo(repo, repo_type="model", exist_ok=True)
                api.upload_folder(folder_path=bundle, repo_id=repo, repo_type="model", commit_message="Upload")
            else:
                env = dict(os.environ, HF_ENDPOINT=endpoint, HF_TOKEN="hf_test")
                subprocess.run([sv_train, "publish", "--bundle", bundle, "--repo", repo, "--hotkey", hotkey,
                                "--message", "Upload"], check=True, env=env)
        sdk, ours = (normalise(*logs[w]) for w in ("sdk", "ours"))
        if sdk != ours:
            for i, (a, b) in enumerate(zip(sdk, ours)):
                if a != b:
                    print(f"request {i} differs:\n  huggingface_hub: {json.dumps(a)[:600]}\n  sv-train:        {json.dumps(b)[:600]}")
                    break
            print(f"{len(sdk)} requests by huggingface_hub, {len(ours)} by sv-train")
            sys.exit(1)
        from huggingface_hub import hf_hub_download
        got = hf_hub_download("someone/by-ours", "model_card.json", endpoint=endpoint, token="hf_test",
                              cache_dir=os.path.join(work, "cache"))
        assert open(got, "rb").read() == open(os.path.join(bundle, "model_card.json"), "rb").read()
        kinds = [f"{r['method']} {r['path'].split('/')[-1] or r['path']}" for r in ours]
        print(f"publish: the same {len(ours)} requests as huggingface_hub ({', '.join(kinds)}); "
              "hf_hub_download reads our model_card.json back")
    finally:
        if server:
            server.terminate()


if __name__ == "__main__":
    main()
