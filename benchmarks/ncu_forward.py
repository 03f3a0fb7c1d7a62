#!/usr/bin/env python3
"""The kernels of one forward from an `ncu --metrics gpu__time_duration.sum --csv` run of
bench-backbone: the last forward (from the last `patches` kernel, the forward's first), its
total, and each kernel's time summed, largest first. `--list N` also prints the first N
kernels in order with their grids and blocks.

    ncu --metrics gpu__time_duration.sum --csv .device/bench-backbone --backend tch --dtype bf16 \
        --iters 1 --max-seconds 0.1 --presets vitb16 --batches 256 > k.csv
    python3 benchmarks/ncu_forward.py k.csv
"""
import argparse
import collections
import csv
import re


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--list", type=int, default=0)
    args = ap.parse_args()
    rows = list(csv.reader(line for line in open(args.csv) if line.startswith('"')))
    hdr = rows[0]
    ki, vi, gi, bi = (hdr.index(h) for h in ("Kernel Name", "Metric Value", "Grid Size", "Block Size"))
    seq = [(re.sub(r"\(.*", "", r[ki])[:70], float(r[vi].replace(",", "")) / 1e3, r[gi], r[bi]) for r in rows[1:]]
    starts = [i for i, k in enumerate(seq) if k[0].startswith("patches")]
    if not starts:
        raise SystemExit(f"{args.csv}: no `patches` kernel, so no forward to find")
    last = seq[starts[-1]:]
    total = sum(k[1] for k in last)
    print(f"last forward total us {total:.1f} kernels {len(last)}")
    agg = collections.OrderedDict()
    for name, us, *_ in last:
        a = agg.setdefault(name, [0.0, 0])
        a[0] += us
        a[1] += 1
    for name, (us, n) in sorted(agg.items(), key=lambda x: -x[1][0]):
        print(f"{us:9.1f} us {100 * us / total:5.1f}% x{n:3} {us / n:8.1f}  {name}")
    for name, us, grid, block in last[: args.list]:
        print(f"   {us:8.1f} {grid:14} {block:12} {name}")


if __name__ == "__main__":
    main()
