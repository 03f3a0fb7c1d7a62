#!/usr/bin/env bash
# The serving chain end to end, timed: the README's main run -> quantize (512 calibration
# samples) -> export -> miner start (bundle load) -> 1,000-challenge validator replay -> full load
# test with the bad-input corpus. Release build, CPU. Numbers go to benchmarks/RESULTS.md.
#   bash benchmarks/serving.sh [run-folder]   (default: the newest runs/curriculum-*)
#   SV_BIN=<dir> uses binaries already built there (e.g. the debug ones CI's test build made).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sv-target}"
BIN="${SV_BIN:-$CARGO_TARGET_DIR/release}"
[ -n "${SV_BIN:-}" ] || cargo build --release -p sv-train -p sv-miner --bins
out=$(mktemp -d)
miner_pid=""
trap '[ -n "$miner_pid" ] && kill "$miner_pid" 2>/dev/null; true' EXIT
t() { local s; s=$(date +%s%N); "$@"; echo "   [$(( ($(date +%s%N) - s) / 1000000 )) ms] $*" >&2; }

RUN="${1:-}"
if [ -z "$RUN" ]; then
  ls -d runs/curriculum-*/ >/dev/null 2>&1 || t "$BIN/sv-train" --experiment experiments/curriculum.toml
  RUN="$(ls -dt runs/curriculum-*/ | head -1)"
fi
MINER_HOTKEY=5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty
echo "== quantize $RUN (512 calibration samples, all calibrators)"
t "$BIN/sv-train" quantize --run "$RUN" --samples 512 --sim-samples 100
echo "== export (FP32 and INT8)"
t "$BIN/sv-train" export --run "$RUN" --out "$out/bundle" --hotkey "$MINER_HOTKEY"
t "$BIN/sv-train" export --run "$RUN" --out "$out/bundle-int8" --hotkey "$MINER_HOTKEY" --int8
du -sb "$out/bundle" "$out/bundle-int8"
t "$BIN/sv-train" card "$out/bundle"
echo "== miner"
REPLAY_HOTKEY="$("$BIN/sv-replay" --print-hotkey)"
"$BIN/sv-miner" --bundle "$out/bundle" --host 127.0.0.1 --port 18191 --hotkey "$MINER_HOTKEY" \
  --allow "$REPLAY_HOTKEY,5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY" --prediction-log "$out/predlog" &
miner_pid=$!
for _ in $(seq 1 120); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18191/health', timeout=1)" 2>/dev/null && break
  sleep 0.5
done
if [ -n "${SV_BT_PYTHON:-}" ]; then
  echo "== bittensor's own dendrite (//Alice)"
  python3 -c "import lance,sys; open(sys.argv[2],'wb').write(lance.dataset(sys.argv[1]).to_table(columns=['image'],limit=1).column('image')[0].as_py())" \
    "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dataset']['store'])" "$RUN/resolved.json")" "$out/challenge.jpg"
  "$SV_BT_PYTHON" crates/sv-miner/tests/dendrite_test.py --port 18191 --miner-hotkey "$MINER_HOTKEY" --image "$out/challenge.jpg" --count 20
fi
echo "== validator replay, 1,000 challenges from the test split"
STORE="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dataset']['store'])" "$RUN/resolved.json")"
t "$BIN/sv-replay" --store "$STORE" --miner 127.0.0.1:18191 --miner-hotkey "$MINER_HOTKEY" --count 1000 --bundle "$out/bundle" --json "$out/replay.json"
echo "== load (full settings) and bad-input corpus"
t "$BIN/sv-load" --addr 127.0.0.1:18191 --abuse --json "$out/load.json"
kill -TERM "$miner_pid"; wait "$miner_pid" || true; miner_pid=""
echo "outputs in $out"
