#!/usr/bin/env python3
"""Check that every metric the Grafana dashboard and the alert rules query is one a running
miner's /metrics really exports (a # TYPE line or a sample; histogram suffixes _bucket, _sum and
_count name their family).

    python3 scripts/check_dashboard.py http://127.0.0.1:8092/metrics deploy/grafana-dashboard.json deploy/alerts.yml
"""
import json, re, sys, urllib.request

SUFFIXES = ("_bucket", "_sum", "_count")


def exported(text):
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


def queried(path):
    text = open(path).read()
    if path.endswith(".json"):
        exprs = [t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]
    else:
        exprs = re.findall(r"expr:\s*(?:\|\s*\n)?(.*?)(?=\n\s*(?:for|labels|annotations):)", text, re.S)
    return {m for e in exprs for m in re.findall(r"\bsv_[a-z0-9_]+", e)}


def main():
    url, files = sys.argv[1], sys.argv[2:]
    have = exported(urllib.request.urlopen(url, timeout=10).read().decode())
    missing = []
    for f in files:
        want = queried(f)
        if not want:
            sys.exit(f"{f}: no sv_ metric found in its queries (is the parser out of date?)")
        gone = [m for m in sorted(want) if m not in have and next((m[: -len(s)] for s in SUFFIXES if m.endswith(s)), m) not in have]
        missing += [f"{f}: {m}" for m in gone]
        print(f"{f}: {len(want)} metrics queried, {len(want) - len(gone)} exported")
    if missing:
        sys.exit("metrics queried but not exported by the miner:\n  " + "\n  ".join(missing))


if __name__ == "__main__":
    main()
