#!/usr/bin/env bash
# Stores on object storage and sharded extraction on Ray (issue 29), against a real S3 server:
# s3s-fs (crates.io), an S3 implementation over a folder, speaking the S3 REST API with SigV4
# and conditional puts. Called by .ci/run:
#
#   scripts/check_object_store.sh SV_DATA SV_TRAIN WORKDIR
#
# 1. a store is created, ingested, split and read on s3:// through the server; pylance reads it
#    through the same endpoint with the same AWS_* variables;
# 2. its feature column is extracted in one process on one store and in 2 shards on a one-node
#    Ray cluster on an identical store: the columns are identical and the sharded one is one commit;
# 3. runs train on the s3 store (a sweep of two on Ray), one is exported, and compaction works there.
set -euo pipefail
SV_DATA=$1
SV_TRAIN=$2
work=$3
mkdir -p "$work"

# The S3 server, built once into ~/.cache (its own target folder, removed after the install).
S3S_ROOT="${SV_S3S_ROOT:-$HOME/.cache/sv-s3s}"
S3S="$S3S_ROOT/bin/s3s-fs"
if [ ! -x "$S3S" ]; then
  t=$(date +%s)
  CARGO_TARGET_DIR="$S3S_ROOT/target" cargo install --locked --quiet s3s-fs --version 0.14.1 --features binary --root "$S3S_ROOT"
  rm -rf "$S3S_ROOT/target"
  echo "   s3s-fs 0.14.1 built in $(( $(date +%s) - t ))s"
fi
# Ray and pylance, in their own virtual environment.
RAY_VENV="${SV_RAY_VENV:-$HOME/.cache/sv-ray-venv}"
if [ ! -x "$RAY_VENV/bin/python" ] || ! "$RAY_VENV/bin/python" -c "import ray, lance" 2>/dev/null; then
  t=$(date +%s)
  python3 -m venv "$RAY_VENV"
  "$RAY_VENV/bin/pip" install -q --disable-pip-version-check "ray==2.60.0" "pylance==14.0.2" >/dev/null
  echo "   ray and pylance installed in $(( $(date +%s) - t ))s"
fi
PY="$RAY_VENV/bin/python"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/sv-ci"
"$S3S" --host 127.0.0.1 --port "$port" --access-key svci --secret-key svci-secret-key "$work/s3" >"$work/s3s.log" 2>&1 &
s3_pid=$!
ray_started=""
stop() {
  kill "$s3_pid" 2>/dev/null || true
  [ -n "$ray_started" ] && "$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true
}
trap stop EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=svci AWS_SECRET_ACCESS_KEY=svci-secret-key AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true

echo "   a store on s3://sv-ci/demo: generate (4 appends), ingest a folder, split, stats; pylance reads it"
for seed in 1 2 3 4; do "$SV_DATA" generate --count 30 --seed "$seed" --width 96 --height 72 --out s3://sv-ci/demo >/dev/null; done
mkdir -p "$work/imgs/Roadwork" "$work/imgs/None"
cp crates/sv-data/tests/fixtures/validator/landscape/CC1.png crates/sv-data/tests/fixtures/validator/landscape/GB1.png "$work/imgs/Roadwork/"
cp crates/sv-data/tests/fixtures/validator/inputs/portrait.png "$work/imgs/None/"
"$SV_DATA" ingest folder "$work/imgs" --store s3://sv-ci/demo
"$SV_DATA" split s3://sv-ci/demo --seed 1 >/dev/null
"$SV_DATA" stats s3://sv-ci/demo --json >"$work/stats.json"
"$PY" scripts/check_pylance.py s3://sv-ci/demo "$work/stats.json"
test -d "$work/s3/sv-ci/demo/_versions"   # the objects are in the server's folder, not on our disk
test ! -e s3:

echo "   feature extraction: one process on s3://sv-ci/one, 2 shards on Ray on s3://sv-ci/two, the same store"
for name in one two; do
  for seed in 1 2 3 4; do "$SV_DATA" generate --count 30 --seed "$seed" --width 96 --height 72 --out "s3://sv-ci/$name" >/dev/null; done
  "$SV_DATA" split "s3://sv-ci/$name" --seed 1 >/dev/null
  sed -e "s|store = \"datasets/procedural\"|store = \"s3://sv-ci/$name\"|" -e "s|output_dir = \"runs\"|output_dir = \"$work/runs\"|" \
      -e "s|epochs = 80|epochs = 5|" -e "s|challenges = 1000|challenges = 100|" -e "s|max_samples = 200|max_samples = 16|" \
      -e "s|windows = 2000|windows = 50|" experiments/baseline.toml >"$work/$name.toml"
done
"$SV_TRAIN" extract --experiment "$work/one.toml"
before=$("$PY" -c 'import lance,sys; print(lance.dataset(sys.argv[1]).version)' s3://sv-ci/two)
"$RAY_VENV/bin/ray" start --head --num-cpus 2 --disable-usage-stats >/dev/null 2>&1 && ray_started=1
PATH="$RAY_VENV/bin:$PATH" "$PY" scripts/ray_extract.py --address auto --experiment "$work/two.toml" --shards 2 \
  --sv-train "$SV_TRAIN" --staging "$work/staged"
"$PY" scripts/check_staged_extraction.py s3://sv-ci/one s3://sv-ci/two "$before"

echo "   a shard that fails is named and re-run alone; nothing is committed before"
for seed in 1 2 3 4; do "$SV_DATA" generate --count 30 --seed "$seed" --width 96 --height 72 --out s3://sv-ci/three >/dev/null; done
sed -e "s|s3://sv-ci/two|s3://sv-ci/three|" "$work/two.toml" >"$work/three.toml"
before=$("$PY" -c 'import lance,sys; print(lance.dataset(sys.argv[1]).version)' s3://sv-ci/three)
PATH="$RAY_VENV/bin:$PATH" "$PY" scripts/ray_extract.py --address auto --experiment "$work/three.toml" --shards 2 \
  --sv-train "$SV_TRAIN" --staging "$work/staged3" --only 0 --no-commit
if "$SV_TRAIN" extract --commit "$work/staged3/shard-00000-of-00002.json" 2>"$work/commit.err"; then
  echo "a commit with a shard missing succeeded"; exit 1
fi
grep -q "shards 1/2 are missing" "$work/commit.err"
PATH="$RAY_VENV/bin:$PATH" "$PY" scripts/ray_extract.py --address auto --experiment "$work/three.toml" --shards 2 \
  --sv-train "$SV_TRAIN" --staging "$work/staged3" --only 1
"$PY" scripts/check_staged_extraction.py s3://sv-ci/one s3://sv-ci/three "$before"

echo "   a sweep of 2 learning rates on Ray, compared in one table"
PATH="$RAY_VENV/bin:$PATH" "$PY" scripts/ray_sweep.py --address auto --experiment "$work/one.toml" --grid train.lr=0.001,0.003 \
  --sv-train "$SV_TRAIN" --out "$work/sweep"
ls "$work"/sweep/sweep-*/compare-*/comparison.md >/dev/null

echo "   export a run that trained on the s3 store"
run=$(ls -d "$work"/runs/one-lr0.001-*/ | head -1)
"$SV_TRAIN" export --run "$run" --out "$work/bundle" --hotkey 5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty --sim-samples 16 | tail -1

echo "   compaction on s3"
"$SV_DATA" compact s3://sv-ci/one --keep-days 0
"$PY" -c 'import lance,sys; d=lance.dataset(sys.argv[1]); assert len(d.get_fragments())==1, d.get_fragments(); print(f"   compacted: {d.count_rows()} rows in 1 fragment, version {d.version}")' s3://sv-ci/one
