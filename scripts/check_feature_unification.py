#!/usr/bin/env python3
"""Check that every package selection builds the data stack with one feature set.

Cargo unifies features per selection: without the workspace-hack crate, `-p sv-data` after
`-p sv-train`, or `--features cuda` after the default build, turned on other features of shared
crates (half, num, bitflags, tokio, ...) and rebuilt arrow, datafusion and lance. This runs
`cargo tree` (no build) for each selection and fails naming any package of sv-data's dependency
tree whose features differ between selections. The GPU and tch backends' own crates (burn,
CubeCL) may differ: their features are what the selection asks for.

    python3 scripts/check_feature_unification.py
"""
import subprocess, sys

SELECTIONS = [
    ["-p", "sv-core"],
    ["-p", "sv-model"],
    ["-p", "sv-tools"],
    ["-p", "sv-data"],
    ["-p", "sv-train"],
    ["-p", "sv-infer"],
    ["-p", "sv-miner"],
    ["--workspace"],
    ["--workspace", "--tests"],
    ["-p", "sv-train", "--features", "cuda"],
    ["-p", "sv-train", "--features", "cuda,flex"],
    ["-p", "sv-miner", "--features", "cuda"],
    ["-p", "sv-train", "-p", "sv-miner", "--features", "sv-miner/cuda"],
]


def tree(sel):
    # `--tests` stands for the test build: dev-dependencies count too.
    edges = "normal,build,dev" if "--tests" in sel else "normal,build"
    sel = [a for a in sel if a != "--tests"]
    out = subprocess.run(
        ["cargo", "tree", *sel, "-e", edges, "--prefix", "none", "-f", "{p}|{f}", "--target", "x86_64-unknown-linux-gnu"],
        check=True, capture_output=True, text=True,
    ).stdout
    pkgs = {}
    for line in out.splitlines():
        line = line.replace(" (*)", "").replace(" (proc-macro)", "").strip()
        if "|" not in line:
            continue
        p, f = line.split("|", 1)
        pkgs.setdefault(p.split(" (/")[0], set()).add(f)
    return pkgs


def main():
    trees = {" ".join(s): tree(s) for s in SELECTIONS}
    data = set(trees["-p sv-data"])
    bad = []
    for p in sorted(data):
        if p.startswith(("sv-", "workspace-hack")):
            continue
        sets = {name: frozenset(t[p]) for name, t in trees.items() if p in t}
        if len(set(sets.values())) > 1:
            bad.append((p, sets))
    for p, sets in bad:
        print(f"{p}: features differ between selections")
        for name, fs in sets.items():
            print(f"    {name:<55} {sorted(fs)}")
    if bad:
        print(f"{len(bad)} packages of the data stack would be rebuilt by another selection: "
              "run `cargo hakari generate && cargo hakari manage-deps`", file=sys.stderr)
        sys.exit(1)
    print(f"one feature set for the {len(data)} packages of the data stack across {len(SELECTIONS)} selections")


if __name__ == "__main__":
    main()
