#!/usr/bin/env bash
# The GPU serving chain on the device machine (issue 9, items 5 and 7), with binaries built here:
#   cargo build --release -p sv-train -p sv-miner --features sv-miner/cuda --bins
#   strip + xz sv-train, sv-miner and sv-load into .device/bin/*.xz (ignored; carried). The three
#   are 84 MB compressed, over the 64 MiB that travels: phase `run` carries sv-train and sv-load,
#   phase `serve` sv-miner, in two calls made back to back (the machine keeps .device/work while
#   it is warm).
#
#   bash benchmarks/device_miner.sh run     curriculum experiment on 8,500 procedural images,
#                                           10 epochs (seconds per stage), then export with
#                                           kernel caches for batch 1..16
#   bash benchmarks/device_miner.sh serve   miner start with the bundle's kernel caches and
#                                           restarted, p50/p99 under load (sv-load), PyTorch
#                                           eager batch-1/16 forward of the same backbone as the
#                                           reference, then a cold start without the caches
#   bash benchmarks/device_miner.sh         both (one device call: the machine is not kept)
# Work files stay in .device/work (ignored, kept while the machine is warm); results go to $OUT.
set -euo pipefail
PHASE="${1:-all}"
if [ "$PHASE" = all ]; then bash "$0" run && bash "$0" serve; exit; fi
OUT="${OUT:-/tmp/out}"
W="$(pwd)/.device/work"
B="$W/bin"
mkdir -p "$W" "$B" "$OUT"
# Each phase needs only some binaries (what travels is limited to 64 MiB): unpack what came.
for f in sv-train sv-miner sv-load; do
  if [ ! -x "$B/$f" ] && [ -f ".device/bin/$f.xz" ]; then xz -dc ".device/bin/$f.xz" > "$B/$f"; chmod +x "$B/$f"; fi
done
export SV_KERNEL_CACHE="$W/kcache-user"
HOTKEY=5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv,noheader
nproc

case "$PHASE" in
run)
  sed -e "s|store = \"datasets/procedural\"|store = \"$W/store\"|" -e "s|output_dir = \"runs\"|output_dir = \"$W/runs\"|" \
      -e "s|count = 1000|count = 8500|" -e "s|^epochs = 80|epochs = 10|" experiments/curriculum.toml > "$W/gpu.toml"
  grep -n "count\|epochs\|store\|preset" "$W/gpu.toml"
  echo "== curriculum, 8,500 images, 10 epochs (first run: generates the store, compiles kernels)"
  /usr/bin/time -v "$B/sv-train" --experiment "$W/gpu.toml" 2> "$OUT/run1.time" | tee "$OUT/run1.log"
  grep -E "Elapsed|Maximum resident" "$OUT/run1.time"
  RUN="$(ls -dt "$W"/runs/curriculum-*/ | head -1)"
  cat "$RUN/metrics.json" 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('seconds', d.get('seconds'))" || true
  echo "== export with kernel caches for batch 1..16"
  /usr/bin/time -v "$B/sv-train" export --run "$RUN" --out "$W/bundle" --hotkey "$HOTKEY" --warm-batch 16 --force 2> "$OUT/export.time" | tee "$OUT/export.log"
  grep -E "Elapsed|Maximum resident" "$OUT/export.time"
  "$B/sv-train" card "$W/bundle" | tee "$OUT/card.txt"
  du -sh "$W/bundle" "$W/bundle/kernels" "$SV_KERNEL_CACHE"
  python3 -c "import json; print(json.load(open('$W/bundle/bundle.json'))['kernels'])"
  ;;
serve)
  IMG=crates/sv-train/tests/fixtures/photo.jpg
  echo "== miner cold starts (ready = /health answers; first = first /v1/challenge answered)"
  python3 benchmarks/miner_start.py --miner "$B/sv-miner" --bundle "$W/bundle" --image "$IMG" --workdir "$W" \
    --mode "bundle:" --mode "restart:" \
    --load "$B/sv-load" --rates 8,16,32,64,128 --duration 6 --json "$OUT/miner.jsonl" 2> "$OUT/load.txt"
  cat "$OUT/load.txt"
  echo "== PyTorch reference: the same backbone (random weights), eager, batch 1 and 16"
  python3 benchmarks/bench_backbone.py --ours /bin/true --skip-ours --device cuda --presets vit-tiny --batches 1,16 --dtypes f32 \
    --iters 50 --max-seconds 10 --json "$OUT/torch.jsonl" 2>&1 | tail -8
  echo "== miner cold start without the bundle's kernel caches (a fresh cache folder)"
  python3 benchmarks/miner_start.py --miner "$B/sv-miner" --bundle "$W/bundle" --image "$IMG" --workdir "$W" \
    --mode "cold:--no-bundle-kernels" --json "$OUT/miner.jsonl"
  ;;
esac
