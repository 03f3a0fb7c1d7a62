"""Our DINOv3 forward (bench-backbone, Burn) beside PyTorch on the same machine, in one run.

For every (preset, batch, dtype) it times transformers' DINOv3ViTModel with random weights of
the same config, eager and (with --compile) `torch.compile`, runs our binary on the same
configurations, and prints one table: images/s, p50 latency, achieved TFLOP/s and % of the chip's
peak, ours / eager and ours / compiled. Timing matches bench-backbone's: the input lives on the
device, each batch is timed until its features ([CLS, mean of patches]) are on the host.

    python3 benchmarks/bench_backbone.py --ours target/release/bench-backbone \\
        --device cuda --backend cuda --presets vits16,vitb16 --batches 1,256 --dtypes f32,bf16 --compile
    taskset -c 0,1 python3 benchmarks/bench_backbone.py --ours ... --device cpu --backend cpu,ndarray \\
        --presets vits16 --batches 1,16 --dtypes f32

Writes the rows as JSON lines to --json if given. Needs torch and transformers (>= 4.56).
"""
import argparse
import json
import os
import subprocess
import sys
import time

try:
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
except ImportError:  # --from-json only needs the standard library
    torch = None

# (hidden, layers, heads, intermediate, gated): sv-train's Dinov3Config::preset.
PRESETS = {
    "vit-tiny": (192, 4, 3, 768, False),
    "vits16": (384, 12, 6, 1536, False),
    "vits16plus": (384, 12, 6, 1536, True),
    "vitb16": (768, 12, 12, 3072, False),
    "vitl16": (1024, 24, 16, 4096, False),
    "vith16plus": (1280, 32, 20, 5120, True),
    "vit7b16": (4096, 40, 32, 8192, True),
}
DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}  # torch dtype names
# Dense peak TFLOP/s (SXM datasheets): f32 without tensor cores, bf16/f16 tensor cores.
PEAKS = {"H100": {"f32": 67.0, "bf16": 989.0, "f16": 989.0}, "H200": {"f32": 67.0, "bf16": 989.0, "f16": 989.0}}


def flops_per_image(preset, size=224, patch=16, regs=4):
    d, layers, _, inter, gated = PRESETS[preset]
    n = (size // patch) ** 2
    t = n + 1 + regs
    per_layer = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + (3 if gated else 2) * 2 * t * d * inter
    return 2 * n * d * 3 * patch * patch + layers * per_layer


def model_for(preset, dtype, device):
    d, layers, heads, inter, gated = PRESETS[preset]
    cfg = DINOv3ViTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
                          hidden_act="silu" if gated else "gelu", use_gated_mlp=gated, num_register_tokens=4,
                          patch_size=16, image_size=224, key_bias=False, layerscale_value=1.0)
    # Built on the device in the target dtype: a 7B model drawn on the host in f32 takes minutes.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, DTYPES[dtype]))
    try:
        with torch.device(device):
            return DINOv3ViTModel(cfg).eval()
    finally:
        torch.set_default_dtype(previous)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_torch(fn, x, device, warmup, iters, max_seconds):
    t = time.perf_counter()
    fn(x)
    sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn(x)
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < max(iters, 2) and (len(times) < 2 or time.perf_counter() - start < max_seconds):
        t = time.perf_counter()
        fn(x).float().cpu()
        times.append(time.perf_counter() - t)
    return first, times


def features(model):
    def f(x):
        out = model(pixel_values=x).last_hidden_state
        return torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=1)
    return f


def row(impl, args, preset, batch, dtype, first, times):
    times = sorted(times)
    mean = sum(times) / len(times)
    fl = flops_per_image(preset)
    return {"impl_": impl, "backend": args.device, "dtype": dtype, "preset": preset, "batch": batch,
            "threads": torch.get_num_threads(), "first_s": first, "timed": len(times),
            "p50_ms": times[round((len(times) - 1) * 0.5)] * 1e3, "p90_ms": times[round((len(times) - 1) * 0.9)] * 1e3,
            "p99_ms": times[round((len(times) - 1) * 0.99)] * 1e3,
            "mean_ms": mean * 1e3, "img_s": batch / mean, "gflop_per_img": fl / 1e9, "tflops": fl * batch / mean / 1e12}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", help="path of the bench-backbone binary (needed unless --from-json or --skip-ours)")
    ap.add_argument("--ours-args", default="", help="extra arguments of our binary, space-separated (e.g. '--weights device')")
    ap.add_argument("--backend", default="cpu", help="our backends, comma-separated (cpu, ndarray, flex, cuda, tch)")
    ap.add_argument("--head", action="store_true", help="also time our stage-1 path (backbone + head, bench-backbone --head)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--presets", default="vits16")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--dtypes", default="f32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (default mode)")
    ap.add_argument("--compile-modes", default="default",
                    help="torch.compile modes with --compile, comma-separated (default, reduce-overhead = CUDA graphs, max-autotune)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--json", help="append every row to this JSON-lines file")
    ap.add_argument("--from-json", help="only print the table of the rows in this JSON-lines file")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            # Only benchmark rows: the file may also hold load_ckpt.py's process rows and tables.
            rows = [r for r in (json.loads(l) for l in f if l.startswith("{")) if "preset" in r and "impl_" in r]
        chip = next((r["chip"] for r in rows if r.get("chip")), "CPU")
        print_table(rows, chip)
        return
    if not args.ours and not args.skip_ours:
        sys.exit("--ours is needed (the bench-backbone binary), unless --skip-ours or --from-json")
    threads = len(os.sched_getaffinity(0))
    if torch is None:
        sys.exit("bench_backbone.py needs torch and transformers (only --from-json works without them)")
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    presets = [p for p in args.presets.split(",") if p]
    batches = [int(b) for b in args.batches.split(",") if b]
    dtypes = [d for d in args.dtypes.split(",") if d]
    rows = []
    chip = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{threads}"

    def add(r):
        r["chip"] = chip
        rows.append(r)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")

    print(f"# {chip}; torch {torch.__version__}; {threads} CPU threads", flush=True)

    for dtype in dtypes:
        for backend in ([] if args.skip_ours else [b for b in args.backend.split(",") if b]):
            cmd = [args.ours, "--backend", backend, "--dtype", dtype, "--presets", ",".join(presets),
                   "--batches", ",".join(map(str, batches)), "--warmup", str(args.warmup), "--iters", str(args.iters),
                   "--max-seconds", str(args.max_seconds)] + args.ours_args.split()
            for extra in ([], ["--head"]) if args.head else ([],):
                t = time.perf_counter()
                p = subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, text=True)  # stderr (its table) passes through
                for l in p.stdout:
                    if l.startswith("{"):
                        add(json.loads(l))
                if p.wait() != 0:
                    print(f"ours failed ({p.returncode}) after {time.perf_counter() - t:.1f}s: {' '.join(cmd + extra)}", flush=True)
        if args.skip_torch:
            continue
        for preset in presets:
            model = model_for(preset, dtype, args.device)
            impls = [("torch-eager", features(model))]
            if args.compile:
                for mode in [m for m in args.compile_modes.split(",") if m]:
                    name = "torch-compile" if mode == "default" else f"torch-compile-{mode}"
                    impls.append((name, torch.compile(features(model), mode=mode)))
            for batch in batches:
                x = torch.randn(batch, 3, 224, 224, device=args.device, dtype=getattr(torch, DTYPES[dtype]))
                for name, fn in impls:
                    with torch.inference_mode():
                        first, times = time_torch(fn, x, args.device, args.warmup, args.iters, args.max_seconds)
                    r = row(name, args, preset, batch, dtype, first, times)
                    add(r)
                    print(f"  {name} {preset} b{batch} {dtype}: {r['img_s']:.1f} img/s, p50 {r['p50_ms']:.2f} ms", flush=True)
            del model, impls
            if args.device == "cuda":
                torch.cuda.empty_cache()

    print_table(rows, chip)


def print_table(rows, chip):
    peak = next((v for k, v in PEAKS.items() if k in chip), None)
    key = lambda r: (r["preset"], r["batch"], r["dtype"], r["threads"])
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["impl_"]] = r
    print(f"\n{chip}\n")
    print("| preset | batch | dtype | threads | impl | img/s | p50 ms | first s | TFLOP/s | % peak | ours/eager | ours/compiled |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in sorted(by):
        g = by[k]
        for name in sorted(g, key=lambda n: (n.startswith("torch"), n)):
            r = g[name]
            pct = f"{100 * r['tflops'] / peak[r['dtype']]:.1f}" if peak else "-"
            ours = not name.startswith("torch")
            ratio = lambda ref: f"{r['img_s'] / g[ref]['img_s']:.2f}" if ours and ref in g else ""
            print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {name} | {r['img_s']:.1f} | {r['p50_ms']:.2f} | {r['first_s']:.1f} | "
                  f"{r['tflops']:.2f} | {pct} | {ratio('torch-eager')} | {ratio('torch-compile')} |")


if __name__ == "__main__":
    main()
