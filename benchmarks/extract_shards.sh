#!/usr/bin/env bash
# Feature extraction split over workers: throughput at 1, 2 and 4 shard processes beside the
# single-process extraction (the reference), on the same store and backbone, and the cost of the
# one commit. Shards run as plain processes (what a Ray task runs), then once through Ray.
#
#   benchmarks/extract_shards.sh SV_DATA SV_TRAIN [ROWS_PER_FRAGMENT] [FRAGMENTS] [PRESET]
#
# Prints a markdown table for benchmarks/RESULTS.md.
set -euo pipefail
SV_DATA=$1
SV_TRAIN=$2
per=${3:-64}
frags=${4:-8}
preset=${5:-vit-tiny}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
RAY_VENV="${SV_RAY_VENV:-$HOME/.cache/sv-ray-venv}"

for seed in $(seq 1 "$frags"); do "$SV_DATA" generate --count "$per" --seed "$seed" --out "$work/base" >/dev/null; done
rows=$(( per * frags ))
mk() {  # a fresh copy of the store, and an experiment on it
  rm -rf "$work/$1"; cp -r "$work/base" "$work/$1"
  sed -e "s|store = \"datasets/procedural\"|store = \"$work/$1\"|" -e "s|preset = \"vit-tiny\"|preset = \"$preset\"|" \
      experiments/baseline.toml >"$work/$1.toml"
}
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

mk single
t0=$(now); "$SV_TRAIN" extract --experiment "$work/single.toml" >/dev/null 2>&1; t1=$(now)
ref=$(secs "$t0" "$t1")
echo "| workers | how | staging s | commit s | rows/s | vs one process |"
echo "|---|---|---|---|---|---|"
echo "| 1 | one process (\`sv-train extract\`, commits every 1,024 rows) | $ref | (in) | $(python3 -c "print(f'{$rows/$ref:.1f}')") | 1.00 |"
shards() {  # workers, label, env...
  local w=$1 label=$2; shift 2
  mk "w$w"
  t0=$(now)
  for i in $(seq 0 $(( w - 1 ))); do
    env "$@" "$SV_TRAIN" extract --experiment "$work/w$w.toml" --shard "$i/$w" --out "$work/w$w-$i.json" 2>/dev/null &
  done
  wait
  t1=$(now)
  "$SV_TRAIN" extract --commit "$work"/w$w-*.json >/dev/null
  t2=$(now)
  s=$(secs "$t0" "$t1"); c=$(secs "$t1" "$t2")
  echo "| $w | $label | $s | $c | $(python3 -c "print(f'{$rows/($s+$c):.1f}')") | $(python3 -c "print(f'{$ref/($s+$c):.2f}')") |"
}
for w in 1 2 4; do shards "$w" "$w shard processes + one commit" SV_BENCH=1; done
# One thread per worker: a worker per device, as on a GPU node (each GPU is one worker).
for w in 1 2; do shards "$w" "$w shard processes, 1 thread each, + one commit" RAYON_NUM_THREADS=1 MATMUL_NUM_THREADS=1; done
if [ -x "$RAY_VENV/bin/python" ]; then
  mk ray
  "$RAY_VENV/bin/ray" start --head --num-cpus "$(nproc)" --disable-usage-stats >/dev/null 2>&1
  t0=$(now)
  PATH="$RAY_VENV/bin:$PATH" "$RAY_VENV/bin/python" scripts/ray_extract.py --address auto --experiment "$work/ray.toml" \
    --shards 2 --sv-train "$SV_TRAIN" --staging "$work/ray-staged" >"$work/ray.log" 2>&1
  t1=$(now)
  "$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1
  s=$(secs "$t0" "$t1")
  echo "| 2 | scripts/ray_extract.py (Ray tasks, commit included; cluster already up) | $s | (in) | $(python3 -c "print(f'{$rows/$s:.1f}')") | $(python3 -c "print(f'{$ref/$s:.2f}')") |"
fi
echo
echo "$rows rows in $frags fragments, backbone $preset (random weights), $(nproc) cores"
