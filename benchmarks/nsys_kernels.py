"""The kernels of an `nsys stats --report cuda_gpu_kern_sum --format csv` on stdin as a markdown
table: GPU time per forward (the total divided by --forwards), share, calls per forward.

    nsys stats -q --report cuda_gpu_kern_sum --format csv run.nsys-rep | python3 nsys_kernels.py --forwards 13
"""
import argparse
import csv
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--forwards", type=int, required=True)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    lines = [line for line in sys.stdin if line.count(",") > 3]
    rows = list(csv.DictReader(lines))
    if not rows:
        sys.exit("no kernel rows in the nsys report")
    n = args.forwards
    total = sum(float(r["Total Time (ns)"]) for r in rows)
    print(f"{total / n / 1e6:.2f} ms of kernels per forward ({n} forwards)")
    print("| kernel | ms per forward | share | calls per forward |")
    print("|---|---|---|---|")
    for r in rows[: args.top]:
        t = float(r["Total Time (ns)"])
        print(f"| {r['Name'][:110]} | {t / n / 1e6:.3f} | {100 * t / total:.1f}% | {int(r['Instances']) / n:g} |")


if __name__ == "__main__":
    main()
