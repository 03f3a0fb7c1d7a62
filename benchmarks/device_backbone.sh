#!/usr/bin/env bash
# One device run of the backbone benchmark: ours (bench-backbone, built here with
# `--features cuda,flex` and carried in .device/) beside PyTorch on the same machine.
#
#   GPU part (cores 0-7):  CUDA, bf16 and f32, ours vs torch eager and torch.compile
#   CPU part (cores 8-9):  ndarray and flex vs torch on 2 pinned cores, fp32
#
# The two parts run at the same time on disjoint cores. CubeCL's PTX and autotune caches go to
# $OUT/kcache (they come back, and a later run carries them in .device/kcache to measure a warm
# start). Usage: bash benchmarks/device_backbone.sh GPU_PRESETS GPU_BATCHES CPU_PRESETS CPU_BATCHES
set -uo pipefail
BIN="$(pwd)/.device/bench-backbone"
GPU_PRESETS="${1:-vits16,vitb16}"
GPU_BATCHES="${2:-1,256}"
CPU_PRESETS="${3:-vit-tiny,vits16}"
CPU_BATCHES="${4:-1,16}"
GPU_DTYPES="${GPU_DTYPES:-bf16,f32}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT/kcache"
if [ -d .device/kcache ]; then cp -r .device/kcache/. "$OUT/kcache/"; fi
work=$(mktemp -d)
cat > "$work/cubecl.toml" <<EOF
[compilation]
cache = { file = "$OUT/kcache" }
[autotune]
cache = { file = "$OUT/kcache" }
EOF
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
here=$(pwd)
(
  cd "$work"
  taskset -c 0-7 python3 "$here/benchmarks/bench_backbone.py" --ours "$BIN" --device cuda --backend cuda \
    --presets "$GPU_PRESETS" --batches "$GPU_BATCHES" --dtypes "$GPU_DTYPES" --compile --iters 30 --max-seconds 10 \
    --json "$OUT/gpu.jsonl" > "$OUT/gpu.log" 2>&1
) &
gpu=$!
(
  for b in ndarray flex; do
    taskset -c 8,9 python3 benchmarks/bench_backbone.py --ours "$BIN" --device cpu --backend $b --skip-torch \
      --presets "$CPU_PRESETS" --batches "$CPU_BATCHES" --iters 10 --max-seconds 20 --warmup 1 --json "$OUT/cpu.jsonl"
  done
  taskset -c 8,9 python3 benchmarks/bench_backbone.py --ours "$BIN" --device cpu --skip-ours \
    --presets "$CPU_PRESETS" --batches "$CPU_BATCHES" --iters 10 --max-seconds 20 --warmup 1 --json "$OUT/cpu.jsonl"
) > "$OUT/cpu.log" 2>&1 &
cpu=$!
wait $cpu; echo "== CPU (2 pinned cores)"; cat "$OUT/cpu.log"
wait $gpu; echo "== GPU"; cat "$OUT/gpu.log"
du -sh "$OUT/kcache"; (cd "$OUT" && tar czf kcache.tgz kcache && rm -rf kcache)
echo "== tables"
python3 benchmarks/bench_backbone.py --ours "$BIN" --device cpu --from-json "$OUT/cpu.jsonl"
python3 benchmarks/bench_backbone.py --ours "$BIN" --device cuda --from-json "$OUT/gpu.jsonl"
