#!/usr/bin/env bash
# The CPU forward beside PyTorch on the GPU machine's CPU (no GPU used): ours (bench-backbone, a
# CPU build carried as .device/bin/bench-backbone) with `--backend cpu` (backbone/cpu, tiled GEMMs)
# and the same with `SV_CPU_GEMM=library` (the gemm crate's threading; rows `sv-cpu-libgemm`) and
# with `SV_CPU_LN=fused` (o and down always in whole-row tiles, LayerNorm in their epilogue; rows
# `sv-cpu-fusedln`),
# and transformers' DINOv3ViTModel eager, fp32, random weights, 224 px; first on 2 cores pinned
# with taskset, then on 16. Then the stage profiles (SV_CPU_PROFILE=1) and tilings of ViT-S/16
# on 2 and 16 cores. benchmarks/cpu_ab.py compares settings interleaved (for noisy hosts).
#   bash benchmarks/device_cpu.sh          (rows in $OUT/cpu2.jsonl and $OUT/cpu16.jsonl)
#   NDARRAY=1 bash benchmarks/device_cpu.sh   (also Burn's ndarray backend)
#   PREV=1 ...   (also .device/bin/bench-backbone-prev, an earlier build, ViT-S/16 only; rows sv-cpu-prev)
set -uo pipefail
BIN="$(pwd)/.device/bin/bench-backbone"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Flags' | cut -c1-120
grep -o -m1 'avx512[a-z_]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
common=(--ours "$BIN" --device cpu --dtypes f32 --iters 5 --max-seconds 15 --warmup 1 --batches 1,16)
backends=cpu
[ "${NDARRAY:-0}" = 1 ] && backends=cpu,ndarray
for cores in 2 16; do
  cpus=0-$((cores - 1))
  taskset -c "$cpus" python3 benchmarks/bench_backbone.py "${common[@]}" --backend "$backends" --presets vits16,vitb16 \
    --json "$OUT/cpu$cores.jsonl" > "$OUT/cpu$cores.log" 2>&1
  for var in SV_CPU_GEMM=library SV_CPU_LN=fused; do
    env "$var" taskset -c "$cpus" python3 benchmarks/bench_backbone.py "${common[@]}" --skip-torch --backend cpu \
      --presets vits16,vitb16 --json "$OUT/cpu$cores.jsonl" > "$OUT/cpu$cores-$var.log" 2>&1
  done
  if [ "${PREV:-0}" = 1 ]; then
    taskset -c "$cpus" python3 benchmarks/bench_backbone.py "${common[@]}" --ours "$BIN-prev" --skip-torch --backend cpu \
      --presets vits16 --json "$OUT/prev$cores.jsonl" > "$OUT/cpu$cores-prev.log" 2>&1
    sed 's/"impl_": "sv-cpu"/"impl_": "sv-cpu-prev"/' "$OUT/prev$cores.jsonl" >> "$OUT/cpu$cores.jsonl"
  fi
done
for cores in 2 16; do
  echo "== stages, $cores cores"
  SV_CPU_PROFILE=1 taskset -c 0-$((cores - 1)) "$BIN" --backend cpu --presets vits16 --batches 1,16 --iters 3 \
    --max-seconds 5 2>&1 | grep -v '^{'
done
python3 benchmarks/bench_backbone.py --from-json "$OUT/cpu2.jsonl"
python3 benchmarks/bench_backbone.py --from-json "$OUT/cpu16.jsonl"
