#!/usr/bin/env bash
# The curriculum experiment on the GPU (issue 9, item 7: 8,500 procedural images, 10 epochs,
# target < 60 s), with a cuda sv-train built here:
#   cargo build --release -p sv-train --features cuda --bin sv-train
#   strip + xz into .device/bin/sv-train.xz (ignored; carried)
#
#   bash benchmarks/device_curriculum.sh
#
# One device call, seven runs of the same experiment, each a fresh process:
#   cold       fresh store, empty kernel caches (the first run on a machine)
#   warm       a second fresh store (data and features made again), kernel caches from `cold`
#   gpu-head   the `warm` store (features reused), heads trained on the GPU
#              (`[train] device = "backbone"`): its first run, compiling the training kernels
#   gpu-head2  the same again, training kernels cached
#   cpu-head   the same store, heads on the CPU (the default), for the train stage side by side
#   cold-min   as `cold` with CubeCL's autotune at its `minimal` level (own, empty caches)
#   warm-min   as `warm` with those caches
# RUNS="cold warm" runs only those. A `tch` build (`--features tch`, built as in RESULTS.md
# "LibTorch") runs too: the GPU machine's PyTorch libraries and NVIDIA's NVRTC go on the library
# path here.
# Seconds per stage from each run's metrics.json (and the curriculum's reference model,
# difficulty scoring and head training inside `train`); results go to $OUT.
set -euo pipefail
OUT="${OUT:-/tmp/out}"
W="$(pwd)/.device/work"
B="$W/bin"
mkdir -p "$W" "$B" "$OUT"
if [ ! -x "$B/sv-train" ]; then xz -dc .device/bin/sv-train.xz > "$B/sv-train"; chmod +x "$B/sv-train"; fi
. benchmarks/torch_libs.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv,noheader
nproc

experiment() { # store, extra [train] line
  sed -e "s|store = \"datasets/procedural\"|store = \"$1\"|" -e "s|output_dir = \"runs\"|output_dir = \"$W/runs\"|" \
      -e "s|count = 1000|count = 8500|" -e "s|^epochs = 80|epochs = 10|" \
      -e "s|^\[train\]|[train]\n$2|" experiments/curriculum.toml
}

run() { # name, store, extra [train] line, kernel cache folder, autotune level
  if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $1 "* ]]; then return 0; fi
  experiment "$2" "$3" > "$W/$1.toml"
  echo "== $1"
  SV_KERNEL_CACHE="$W/$4" CUBECL_AUTOTUNE_LEVEL="$5" /usr/bin/time -f "wall %e s, peak %M KiB" \
    "$B/sv-train" --experiment "$W/$1.toml" > "$OUT/$1.log" 2> "$OUT/$1.err" || { tail -20 "$OUT/$1.err"; exit 1; }
  tail -1 "$OUT/$1.err"
  grep -E "^val|^test" "$OUT/$1.log"
  local run_dir
  run_dir="$(grep '^run folder' "$OUT/$1.log" | sed 's/^run folder: //')"
  python3 - "$1" "$run_dir/metrics.json" <<'PY' | tee -a "$OUT/curriculum.jsonl"
import json, sys
m = json.load(open(sys.argv[2]))
t = m["techniques"]
c = t.get("curriculum", {})
print(json.dumps({"run": sys.argv[1], "seconds": {k: round(v, 2) for k, v in m["seconds"].items()},
                  "train_parts": {"reference": round(c.get("reference_seconds", -1), 2),
                                  "difficulty": round(c.get("difficulty_seconds", -1), 2),
                                  "head": round(t.get("head_seconds", -1), 2)},
                  "val_mcc": round(m["val"]["mcc"], 4), "test_mcc": round(m["test"]["mcc"], 4),
                  "epochs_run": m["epochs_run"]}))
PY
}

run cold      "$W/store-a" ""                     kc-default balanced
run warm      "$W/store-b" ""                     kc-default balanced
run gpu-head  "$W/store-b" 'device = "backbone"'  kc-default balanced
run gpu-head2 "$W/store-b" 'device = "backbone"'  kc-default balanced
run cpu-head  "$W/store-b" 'device = "cpu"'       kc-default balanced
run cold-min  "$W/store-c" ""                     kc-minimal minimal
run warm-min  "$W/store-d" ""                     kc-minimal minimal
du -sh "$W"/kc-* 2>/dev/null || true
