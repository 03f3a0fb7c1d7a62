"""A synthetic DINOv3 checkpoint of a preset, and transformers' time to load it and answer.

    python3 benchmarks/load_ckpt.py write /tmp/ckpt-7b --preset vit7b16 --dtype bf16
    python3 benchmarks/load_ckpt.py load /tmp/ckpt-7b --batch 32      # transformers' side
    python3 benchmarks/load_ckpt.py run -- .device/bench-backbone ...   # any command: wall s, peak RSS

`write` draws random weights of the preset on the GPU (bench_backbone.py's model_for) and saves
them as a Hugging Face folder (config.json, safetensors shards of 5 GB and their index), the
layout sv-model's `TchDinov3::from_dir` streams. `load` times, from this process's start
(importing torch included), transformers' `from_pretrained` onto the GPU and the first batch's
features on the host, and prints one JSON line with the peak host RSS. `run` runs a command and
prints its wall time and peak RSS (ru_maxrss of the child) as one JSON line.
"""
import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402


def rss_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024.0


def write(args):
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_backbone import model_for
    torch.manual_seed(0)
    model = model_for(args.preset, args.dtype, "cuda")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    t = time.perf_counter()
    model.save_pretrained(args.dir, max_shard_size="5GB", safe_serialization=True)
    size = sum(os.path.getsize(os.path.join(args.dir, f)) for f in os.listdir(args.dir))
    print(json.dumps({"wrote": args.dir, "preset": args.preset, "dtype": args.dtype, "bytes": size,
                      "params": sum(p.numel() for p in model.parameters()), "save_s": time.perf_counter() - t}))


def load(args):
    import torch
    from transformers import DINOv3ViTModel
    t_import = time.perf_counter() - T0
    torch.backends.cuda.matmul.allow_tf32 = False
    model = DINOv3ViTModel.from_pretrained(args.dir, dtype=torch.bfloat16).to("cuda").eval()
    torch.cuda.synchronize()
    t_load = time.perf_counter() - T0
    x = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        out = model(pixel_values=x).last_hidden_state
        f = torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=1).float().cpu()
    t_first = time.perf_counter() - T0
    print(json.dumps({"impl_": "transformers from_pretrained", "dir": args.dir, "batch": args.batch,
                      "import_s": t_import, "load_s": t_load, "start_to_first_s": t_first,
                      "rss_peak_mb": rss_mb(), "gpu_peak_mb": torch.cuda.max_memory_allocated() / 1048576.0,
                      "features": list(f.shape)}))


def run(args):
    t = time.perf_counter()
    rc = subprocess.call(args.cmd)
    print(json.dumps({"cmd": " ".join(args.cmd), "rc": rc, "wall_s": time.perf_counter() - t,
                      "child_rss_peak_mb": rss_mb(resource.RUSAGE_CHILDREN)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir")
    w.add_argument("--preset", default="vit7b16")
    w.add_argument("--dtype", default="bf16")
    lo = sub.add_parser("load")
    lo.add_argument("dir")
    lo.add_argument("--batch", type=int, default=32)
    r = sub.add_parser("run")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.what == "run" and args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    {"write": write, "load": load, "run": run}[args.what](args)


if __name__ == "__main__":
    main()
