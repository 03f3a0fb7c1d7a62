#!/usr/bin/env python3
"""What the GEMMs and attention alone cost in a DINOv3 forward, on the GPU, with PyTorch's own
kernels (cuBLAS/cuBLASLt, CUTLASS for row-wise FP8, flash attention): a floor under any forward
that uses those kernels — ours and `torch.compile`'s alike — and so a ceiling on the speed-up one
such forward can have over another.

Per layer of a preset at a batch: q/k/v, o, the MLP's up (and gate) and down projections, each as
bf16 `F.linear` (bias in cuBLASLt's epilogue), FP8 `torch._scaled_mm` with row-wise scales (what
our FP8 forward runs) and with per-tensor scales, and scaled-dot-product attention in bf16.
Medians of CUDA-event timings. One JSON line per kernel, then a summary line per preset.

    python3 benchmarks/gemm_bound.py --presets vitb16:256,vit7b16:32 --json out.jsonl
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

# hidden, layers, heads, MLP hidden, gated (crates/sv-model/src/backbone/dinov3.rs, Preset::config)
PRESETS = {
    "vits16": (384, 12, 6, 1536, False),
    "vitb16": (768, 12, 12, 3072, False),
    "vitl16": (1024, 24, 16, 4096, False),
    "vit7b16": (4096, 40, 32, 8192, True),
}
TOKENS = 1 + 4 + 14 * 14  # CLS, 4 registers, 224/16 squared


def timed(fn, iters, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def fp8(t):
    return t.to(torch.float8_e4m3fn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="vitb16:256,vit7b16:32")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    out = open(args.json, "a") if args.json else None

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    gpu = torch.cuda.get_device_name()
    for spec in args.presets.split(","):
        name, batch = spec.split(":")
        batch = int(batch)
        d, layers, heads, f, gated = PRESETS[name]
        m = batch * TOKENS
        shapes = {"qkv": (d, 3 * d), "o": (d, d), "up": (d, f), "down": (f, d)}
        if gated:
            shapes["gate"] = (d, f)
            shapes["up+gate"] = (d, 2 * f)
        per = {}
        for what, (k, n) in shapes.items():
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
            bias = torch.randn(n, device=dev, dtype=torch.bfloat16)
            xq, wq = fp8(x), fp8(w)
            sx_row = torch.rand(m, 1, device=dev) + 0.5
            sw_row = torch.rand(1, n, device=dev) + 0.5
            one = torch.ones((), device=dev)
            runs = {
                "bf16": lambda: F.linear(x, w, bias),
                "fp8-row": lambda: torch._scaled_mm(
                    xq, wq.t(), sx_row, sw_row, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True
                ),
                "fp8-row-nobias": lambda: torch._scaled_mm(
                    xq, wq.t(), sx_row, sw_row, out_dtype=torch.bfloat16, use_fast_accum=True
                ),
                "fp8-tensor": lambda: torch._scaled_mm(
                    xq, wq.t(), one, one, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True
                ),
                "fp8-tensor-fp8out": lambda: torch._scaled_mm(
                    xq, wq.t(), one, one, scale_result=one, out_dtype=torch.float8_e4m3fn, use_fast_accum=True
                ),
            }
            for kind, fn in runs.items():
                try:
                    ms = timed(fn, args.iters)
                except Exception as e:  # a form this build lacks: say so, go on
                    emit({"preset": name, "batch": batch, "gemm": what, "kind": kind, "error": str(e)[:200]})
                    continue
                tflops = 2 * m * k * n / ms / 1e9
                per[(what, kind)] = ms
                emit({"preset": name, "batch": batch, "gemm": what, "m": m, "k": k, "n": n, "kind": kind,
                      "ms": round(ms, 4), "tflops": round(tflops, 1), "gpu": gpu})
            del x, w, xq, wq
        hd = d // heads
        q, k_, v = (torch.randn(batch, heads, TOKENS, hd, device=dev, dtype=torch.bfloat16) for _ in range(3))
        att = timed(lambda: F.scaled_dot_product_attention(q, k_, v), args.iters)
        emit({"preset": name, "batch": batch, "gemm": "attention", "kind": "bf16", "ms": round(att, 4), "gpu": gpu})
        # Our layout: q, k, v as (B, H, T, hd) views of the q/k/v GEMM's (B, T, 3, H, hd) output,
        # and the output back to (B·T, D) rows, per attention backend.
        qkv = torch.randn(batch, TOKENS, 3, heads, hd, device=dev, dtype=torch.bfloat16)
        parts = [qkv.select(2, j).transpose(1, 2) for j in range(3)]
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", None]:
            def run():
                a = F.scaled_dot_product_attention(*parts)
                return a.transpose(1, 2).reshape(batch * TOKENS, d)

            def measure():
                layout = F.scaled_dot_product_attention(*parts).transpose(1, 2).is_contiguous()
                return timed(run, args.iters), layout

            try:
                if backend:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        ms, out_layout = measure()
                else:
                    ms, out_layout = measure()
                emit({"preset": name, "batch": batch, "gemm": "attention-ours", "kind": backend or "default",
                      "ms": round(ms, 4), "output_rows_without_copy": out_layout, "gpu": gpu})
            except Exception as e:
                emit({"preset": name, "batch": batch, "gemm": "attention-ours", "kind": backend, "error": str(e)[:200]})
        del qkv, parts
        names = ["qkv", "o", "down"] + (["up+gate"] if gated else ["up"])
        summary = {"preset": name, "batch": batch, "layers": layers, "gpu": gpu, "attention_ms": round(att * layers, 3)}
        for kind in ["bf16", "fp8-row", "fp8-tensor"]:
            if all((g, kind) in per for g in names):
                total = layers * sum(per[(g, kind)] for g in names)
                summary[f"gemm_{kind}_ms"] = round(total, 3)
                summary[f"gemm+attention_{kind}_img_s"] = round(batch / ((total + att * layers) / 1e3), 1)
        emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
