#!/usr/bin/env bash
# One device run of the LibTorch (`tch`) build, built here against a PyTorch 2.11 wheel and
# carried in .device/ (see RESULTS.md, "LibTorch"):
#   1. parity: the LibTorch forward against transformers' committed output on the GPU (f32, f16,
#      bf16; the `parity` test binary of `cargo test --features tch`);
#   2. the backbone beside transformers' DINOv3ViTModel, eager and torch.compile, on the same
#      GPU (bench_backbone.py), and our stage-1 path (backbone + head, `--head`);
#   3. ours alone in each variant (SV_TCH_FUSED, SV_TCH_GELU, SV_TCH_ATTN), and a stage profile;
#   4. (NSYS=1) kernel by kernel: ours under nsys, torch.compile under torch.profiler.
# It links the GPU machine's own PyTorch libraries (LD_LIBRARY_PATH).
# Usage: bash benchmarks/device_tch.sh [PRESETS] [BATCHES] [DTYPES]   (PROFILE=0 skips the stage profiles;
#   TABLE_ROWS="vitb16:256 vits16:1" times only those preset:batch rows instead of every PRESETS × BATCHES)
set -uo pipefail
PRESETS="${1:-vits16,vitb16}"
BATCHES="${2:-1,256}"
DTYPES="${3:-bf16,f32}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
here=$(pwd)
for f in .device/*.xz; do [ -e "$f" ] && xz -dkf "$f"; done
chmod +x .device/bench-backbone .device/parity 2>/dev/null
. benchmarks/torch_libs.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# The test binary finds its fixtures under the path it was built in.
src_dir=/work/main
if [ ! -e "$src_dir/crates/sv-train/tests/fixtures" ]; then mkdir -p /work && ln -sfn "$here" "$src_dir"; fi
echo "== parity (LibTorch forward vs transformers)"
.device/parity libtorch_forward --nocapture --test-threads 1 2>&1 | tee "$OUT/parity.log"
echo "== parity of the variants (no fused kernels, either RoPE form, subsets of the kernels, each attention kernel, exact GELU)"
for v in SV_TCH_FUSED=0 SV_TCH_FUSED=0,SV_TCH_ROPE=halves SV_TCH_FUSED=rope SV_TCH_FUSED=norm+patches SV_TCH_ATTN=flash SV_TCH_ATTN=efficient SV_TCH_GELU=exact; do
  echo "-- $v"
  env ${v//,/ } .device/parity libtorch_forward --nocapture --test-threads 1 2>&1 | tee -a "$OUT/parity-variants.log" | grep "BF16\|F16\|test result\|panicked\|Error"
done
echo "== backbone and stage 1 beside PyTorch"
for row in ${TABLE_ROWS:-all}; do
  if [ "$row" = all ]; then p=$PRESETS; b=$BATCHES; else p=${row%:*}; b=${row#*:}; fi
  taskset -c 0-7 python3 benchmarks/bench_backbone.py --ours .device/bench-backbone --device cuda --backend tch --head \
    --presets "$p" --batches "$b" --dtypes "$DTYPES" --compile --iters 200 --max-seconds 8 \
    --json "$OUT/gpu.jsonl" 2>&1 | tee -a "$OUT/gpu.log" | grep -v "^|"
done
echo "== table"
python3 benchmarks/bench_backbone.py --device cuda --from-json "$OUT/gpu.jsonl"
echo "== variants (ours alone, same call): the fused kernels, the GELU epilogue, each attention kernel"
# Kernel sets of SV_TCH_FUSED are joined with + (a comma separates variables here).
VARIANTS="${VARIANTS:-default SV_TCH_FUSED=0 SV_TCH_FUSED=rope SV_TCH_FUSED=norm SV_TCH_FUSED=patches SV_TCH_FUSED=rope+norm SV_TCH_GELU=exact SV_TCH_ATTN=flash SV_TCH_ATTN=efficient}"
# Rows (preset:batch) of the variants and profiles: by default the two targets.
for row in ${VARIANT_ROWS:-vitb16:256 vits16:1}; do
  p=${row%:*}; b=${row#*:}
  for v in $VARIANTS; do
    env $([ $v = default ] || echo ${v//,/ }) taskset -c 0-7 .device/bench-backbone --backend tch --dtype bf16 --presets $p --batches $b \
      --iters 200 --max-seconds 4 2>>"$OUT/variants.err" | sed "s/\"impl_\":\"sv-tch\"/\"impl_\":\"sv-tch $v\"/" >> "$OUT/variants.jsonl"
  done
  [ "${PROFILE:-1}" = 1 ] && SV_PROFILE=1 taskset -c 0-7 .device/bench-backbone --backend tch --dtype bf16 --presets $p --batches $b --iters 10 2>&1 >/dev/null | grep -v "^| tch"
done
python3 benchmarks/bench_backbone.py --device cuda --from-json "$OUT/variants.jsonl"
if [ "${NSYS:-0}" = 1 ]; then
  echo "== kernels (ViT-B/16 batch 256 bf16): ours under nsys, 13 forwards; torch.compile under torch.profiler"
  NSYS_BIN=$(command -v nsys || find / -xdev -name nsys -type f -perm -u+x 2>/dev/null | head -1)
  [ -n "$NSYS_BIN" ] || echo "nsys not found: no kernel table of ours"
  for v in $([ -n "$NSYS_BIN" ] && echo ${NSYS_VARIANTS:-default SV_TCH_FUSED=0}); do
    rm -f /tmp/nsys-ours.nsys-rep
    echo "-- ours, $v"
    env $([ $v = default ] || echo ${v//,/ }) "$NSYS_BIN" profile -t cuda --sample=none --cpuctxsw=none -f true -o /tmp/nsys-ours \
      .device/bench-backbone --backend tch --dtype bf16 --presets vitb16 --batches 256 --warmup 2 --iters 10 --max-seconds 60 >/dev/null 2>>"$OUT/nsys.err"
    "$NSYS_BIN" stats -q --report cuda_gpu_kern_sum --format csv /tmp/nsys-ours.nsys-rep 2>>"$OUT/nsys.err" \
      | python3 benchmarks/nsys_kernels.py --forwards 13 | tee -a "$OUT/kernels.md"
  done
  [ "${TORCH_PROFILE:-1}" = 1 ] && echo "-- torch.compile" && (cd benchmarks && taskset -c 0-7 python3 profile_torch.py --preset vitb16 --batch 256 --dtype bf16 --compile --iters 10) 2>>"$OUT/nsys.err" | tee -a "$OUT/kernels.md"
fi
