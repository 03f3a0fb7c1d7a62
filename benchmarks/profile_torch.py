"""Where PyTorch's own DINOv3 forward spends its GPU time, kernel by kernel (torch.profiler), for
comparing with ours (`nsys` on bench-backbone in device_tch.sh). Same model, input and timing
setup as bench_backbone.py: transformers' DINOv3ViTModel with random weights, eager or
`torch.compile` (default mode), input on the device, inference mode, TF32 off.

    python3 benchmarks/profile_torch.py --preset vitb16 --batch 256 --dtype bf16 --compile --iters 10

Prints the kernels by total GPU time over --iters forwards (after warm-up), with time per forward.
"""
import argparse

import torch

from bench_backbone import features, model_for


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="vitb16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = model_for(args.preset, args.dtype, "cuda")
    fn = features(model)
    if args.compile:
        fn = torch.compile(fn)
    x = torch.randn(args.batch, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        x = x.to(model.dtype)
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                fn(x).float().cpu()
            torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = e.cuda_time_total
        if t > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
            rows.append((t, e.count, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    label = f"{args.preset} batch {args.batch} {args.dtype} {'compiled' if args.compile else 'eager'}"
    print(f"torch {label}: {total / args.iters / 1e3:.2f} ms of kernels per forward ({args.iters} forwards)")
    print("| kernel | ms per forward | share | calls per forward |")
    print("|---|---|---|---|")
    for t, n, k in rows[: args.top]:
        print(f"| {k[:110]} | {t / args.iters / 1e3:.3f} | {100 * t / total:.1f}% | {n / args.iters:g} |")


if __name__ == "__main__":
    main()
