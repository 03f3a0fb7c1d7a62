#!/usr/bin/env python3
"""Check the crate graph's layering: serving never links training or the data store.

`cargo tree -e normal` (no build) of sv-infer and sv-miner, with the default and the cuda
features, must contain none of the FORBIDDEN packages, and Burn without its `autodiff` and
`train` features; sv-model and sv-core must not contain the data store either. Prints the path
to each forbidden package found (`cargo tree -i`). (Burn 0.21's facade depends on burn-optim,
and burn-ndarray's `std` on burn-autodiff, whatever features are asked for: those crates are
compiled, but serving never instantiates their code.)

    python3 scripts/check_layering.py
"""
import subprocess, sys

FORBIDDEN = ["sv-train", "sv-data", "sv-tools", "lance", "datafusion", "parquet", "burn-train"]
FORBIDDEN_FEATURES = {"burn": {"autodiff", "train"}}
CHECKS = [
    (["-p", "sv-miner"], FORBIDDEN),
    (["-p", "sv-miner", "--features", "cuda"], FORBIDDEN),
    (["-p", "sv-infer"], FORBIDDEN),
    (["-p", "sv-model"], FORBIDDEN),
    (["-p", "sv-core"], FORBIDDEN + ["sv-model", "burn"]),
]


def packages(sel):
    """Package name -> its features, in the selection's normal dependency graph."""
    out = subprocess.run(
        ["cargo", "tree", *sel, "-e", "normal", "--prefix", "none", "-f", "{p}|{f}", "--target", "x86_64-unknown-linux-gnu"],
        check=True, capture_output=True, text=True,
    ).stdout
    pkgs = {}
    for line in out.splitlines():
        if "|" in line:
            p, f = line.split("|", 1)
            pkgs.setdefault(p.split()[0], set()).update(x for x in f.split(" (")[0].split(",") if x)
    return pkgs


def main():
    bad = 0
    for sel, forbidden in CHECKS:
        pkgs = packages(sel)
        found = sorted(p for p in pkgs if p in forbidden)
        name = " ".join(sel)
        for p, feats in FORBIDDEN_FEATURES.items():
            if feats & pkgs.get(p, set()):
                bad += 1
                print(f"{name}: {p} has the training features {sorted(feats & pkgs[p])}")
        if not found:
            print(f"{name}: ok (none of {', '.join(forbidden)})")
            continue
        bad += 1
        for p in found:
            path = subprocess.run(["cargo", "tree", *sel, "-e", "normal", "-i", p], capture_output=True, text=True).stdout
            print(f"{name}: links {p}:\n{path}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
