#!/usr/bin/env bash
# The CPU forward beside PyTorch on the GPU machine's CPU (no GPU used): ours (bench-backbone, a
# CPU build carried as .device/bin/bench-backbone) with `--backend cpu` (backbone/cpu.rs) and
# `--backend ndarray` (Burn's ndarray backend), and transformers' DINOv3ViTModel eager, fp32,
# random weights, 224 px; first on 2 cores pinned with taskset, then on 16.
#   bash benchmarks/device_cpu.sh          (rows in $OUT/cpu2.jsonl and $OUT/cpu16.jsonl)
set -uo pipefail
BIN="$(pwd)/.device/bin/bench-backbone"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Flags' | cut -c1-120
grep -o -m1 'avx512[a-z_]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
common=(--ours "$BIN" --device cpu --dtypes f32 --iters 5 --max-seconds 15 --warmup 1)
taskset -c 0,1 python3 benchmarks/bench_backbone.py "${common[@]}" --backend cpu,ndarray --presets vit-tiny,vits16 \
  --batches 1,16 --json "$OUT/cpu2.jsonl" > "$OUT/cpu2-small.log" 2>&1
taskset -c 0,1 python3 benchmarks/bench_backbone.py "${common[@]}" --backend cpu --presets vitb16 \
  --batches 1,16 --json "$OUT/cpu2.jsonl" > "$OUT/cpu2-vitb.log" 2>&1
taskset -c 0-15 python3 benchmarks/bench_backbone.py "${common[@]}" --backend cpu,ndarray --presets vits16,vitb16 \
  --batches 1,16 --json "$OUT/cpu16.jsonl" > "$OUT/cpu16.log" 2>&1
python3 benchmarks/bench_backbone.py --from-json "$OUT/cpu2.jsonl"
python3 benchmarks/bench_backbone.py --from-json "$OUT/cpu16.jsonl"
