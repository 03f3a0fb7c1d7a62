#!/usr/bin/env bash
# Issue 27 on the GPU machine: the `tch` build's CUDA graphs, FP8/INT8 linear layers and fast loading,
# ours beside PyTorch in the same call. Binaries built here (RESULTS.md, "LibTorch": the torch
# 2.11 wheel; CUDA_HOME = the nvidia-cuda-runtime/-crt 13.0 wheels' nvidia/cu13) and carried
# as .device/*.xz: bench-backbone and tch-fidelity (`cargo build --release -p sv-model
# --features tch --examples`).
#   (and sv-model's lib tests: `cargo test --release -p sv-model --features tch --lib --no-run`,
#   carried as .device/sv-model-tests.xz).
#   PARTS="1 2 3" picks the parts (default 1):
#   1: ViT-S/16 batch 1 (graphs on and off, + head from host pixels) beside eager,
#           torch.compile and torch.compile(mode="reduce-overhead"); the exported kernels (NVRTC,
#           a kernel folder's PTX, with and without NVRTC on the library path).
#   4: sv-model's GPU unit tests; bf16/FP8/INT8 fidelity over 2,048 inputs; ViT-B/16 batch 256
#           bf16, FP8 and INT8 beside torch.compile; ViT-S/16 batch 1 in each.
#   2: ViT-7B/16 batch 32: ours bf16, FP8 and INT8 with weights drawn on the device beside
#           torch.compile, process start to first batch and peak host RSS;
#   3: a synthetic 7B safetensors checkpoint, loaded by ours (streamed shard by shard) and by
#           transformers' from_pretrained: process start to first answer, peak host RSS.
#   5: sv-miner (tch) serving a ViT-S/16 bundle: ready and first answer with NVRTC, with the
#           bundle's PTX and restarted; signed axon load (sv-load --signed) at rising rates.
#   6: sv-train quantize (tch) of that run: the simulated variants per calibrator beside the real
#           bf16, FP8 and INT8 kernels, fidelity over 2,048 fresh challenges.
#   Parts run in the order 1, 4, 5, 6, 2, 3. What to carry (64 MiB a call): the three
#   .device/*.xz for 1-4 (4.2 MB; name the files: .device's subfolders are too big to go along); `.device/miner` for 5 (sv-miner, sv-load, bundle.tar.xz: 42 MB;
#   MINER_MODES="cold bundle restart", MINER_RATES); `.device/quant` for 6 (sv-train 46 MB and
#   the run: 51 MB; FIDELITY_IMAGES, QUANT_TIMEOUT, QUANT_VARIANTS). Results of 2026-12-05: RESULTS.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=0
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
for f in .device/*.xz; do [ -e "$f" ] && xz -dkf "$f"; done
chmod +x .device/bench-backbone .device/tch-fidelity .device/sv-model-tests 2>/dev/null
. benchmarks/torch_libs.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
B=.device/bench-backbone
has() { [[ " ${PARTS:-1} " == *" $1 "* ]]; }
PY="taskset -c 0-7 python3 benchmarks/bench_backbone.py --ours $B --device cuda --backend tch --dtypes bf16"
if has 1; then
  echo "== ViT-S/16 batch 1: ours (CUDA graphs, the default) and PyTorch"
  $PY --head --presets vits16 --batches 1 --compile --compile-modes default,reduce-overhead \
    --iters 3000 --max-seconds 5 --json "$OUT/b1.jsonl" 2>&1 | grep -v "^|"
  echo "== ViT-S/16 batch 1: ours without graphs (SV_TCH_GRAPHS=0)"
  for extra in "" "--head"; do
    SV_TCH_GRAPHS=0 taskset -c 0-7 $B --backend tch --dtype bf16 --presets vits16 --batches 1 --iters 3000 --max-seconds 5 $extra \
      2>>"$OUT/b1.err" | sed 's/"impl_":"sv-tch/"impl_":"sv-tch nographs/' >> "$OUT/b1.jsonl"
  done
  python3 benchmarks/bench_backbone.py --device cuda --from-json "$OUT/b1.jsonl"
  echo "== exported kernels: NVRTC at load, then the PTX it wrote to a kernel folder, then that PTX with NVRTC off the library path"
  K=/tmp/kdir; rm -rf "$K" /tmp/nonvrtc; mkdir -p /tmp/nonvrtc
  for d in $(echo "$LD_LIBRARY_PATH" | tr : ' '); do for l in "$d"/*.so*; do
    case "$(basename "$l")" in libnvrtc*) ;; *) [ -e "$l" ] && ln -sf "$l" /tmp/nonvrtc/ ;; esac; done; done
  KB="--backend tch --dtype bf16 --presets vits16 --batches 1 --iters 200 --max-seconds 2"
  for run in "nvrtc|$LD_LIBRARY_PATH|--kernel-dir $K" "ptx|$LD_LIBRARY_PATH|--kernel-dir $K" "ptx-no-nvrtc|/tmp/nonvrtc|--kernel-dir $K" "no-ptx-no-nvrtc|/tmp/nonvrtc|"; do
    IFS='|' read -r name libs extra <<< "$run"
    LD_LIBRARY_PATH="$libs" taskset -c 0-7 $B $KB $extra 2>>"$OUT/kernels.err" \
      | sed "s/\"impl_\":\"sv-tch/\"impl_\":\"sv-tch $name/" | tee -a "$OUT/kernels.jsonl" | cut -c1-400
  done
  ls -la "$K/tch" | tee -a "$OUT/kernels.err"
  grep -i "warn\|error" "$OUT/kernels.err" | head -5
fi
if has 4; then
  echo "== sv-model's unit tests of the tch build on the GPU (quantised GEMMs against f32, kernels, exported PTX)"
  [ -x .device/sv-model-tests ] && .device/sv-model-tests --test-threads 1 --nocapture backbone::tch 2>&1 | tee "$OUT/tests.txt" | grep -E "^test |relative|panicked|result" 
  echo "== bf16, FP8 and INT8 against f32: decision agreement over 2,048 inputs (ViT-B/16)"
  taskset -c 0-7 .device/tch-fidelity --preset vitb16 --images 2048 --batch 64 2>"$OUT/fidelity.err" | tee "$OUT/fidelity.jsonl"
  tail -3 "$OUT/fidelity.err"
  echo "== ViT-B/16 batch 256: ours bf16 and PyTorch"
  $PY --presets vitb16 --batches 256 --compile --iters 200 --max-seconds 6 --json "$OUT/b256.jsonl" 2>&1 | grep -v "^|"
  echo "== ViT-B/16 batch 256: ours FP8 and INT8 (SV_TCH_LINEAR=fp8|int8)"
  for lin in fp8 int8; do
    SV_TCH_LINEAR=$lin taskset -c 0-7 $B --backend tch --dtype bf16 --presets vitb16 --batches 256 --iters 200 --max-seconds 6 \
      2>>"$OUT/b256.err" | sed "s/\"impl_\":\"sv-tch/\"impl_\":\"sv-tch $lin/" >> "$OUT/b256.jsonl"
  done
  grep -v Memory.cpp "$OUT/b256.err" | grep -i -A2 "^error\|caused" | head -8
  python3 benchmarks/bench_backbone.py --device cuda --from-json "$OUT/b256.jsonl"
  echo "== ViT-S/16 batch 1: ours bf16, FP8 and INT8 (graphs on)"
  for lin in native fp8 int8; do
    SV_TCH_LINEAR=$lin taskset -c 0-7 $B --backend tch --dtype bf16 --presets vits16 --batches 1 --iters 3000 --max-seconds 4 \
      2>>"$OUT/b1q.err" | sed "s/\"impl_\":\"sv-tch/\"impl_\":\"sv-tch $lin/" >> "$OUT/b1q.jsonl"
  done
  grep -v Memory.cpp "$OUT/b1q.err" | grep -i "error\|caused" | head -5
  python3 benchmarks/bench_backbone.py --device cuda --from-json "$OUT/b1q.jsonl"
fi
if has 5; then
  echo "== the miner on the GPU: a ViT-S/16 bundle (bf16, its PTX under kernels/tch/), signed axon requests"
  # .device/miner (carried): sv-miner (--features tch) and sv-load stripped and xz'd, and
  # bundle.tar.xz (benchmarks/miner_vits16.toml, exported with --dtype bf16 on a tch build).
  MW=/tmp/minerwork; rm -rf "$MW"; mkdir -p "$MW"
  for f in sv-miner sv-load; do xz -dc ".device/miner/$f.xz" > "$MW/$f" && chmod +x "$MW/$f"; done
  tar -xJf .device/miner/bundle.tar.xz -C "$MW"
  RH=5EZLa8k7dMxZVHtgF3buzPdquMbWnHAQCpvSE4KzjrKwcjsD  # `sv-replay --print-hotkey`: the key of sv-load's --probe-seed sv-replay
  HK=5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty
  # cold: NVRTC compiles the kernels (a fresh cache, the bundle's PTX left out); bundle: the
  # bundle's PTX; restart: the cache the last start left. The load goes to the last.
  MODES=()
  for m in ${MINER_MODES:-cold bundle restart}; do
    if [ "$m" = cold ]; then MODES+=(--mode "cold:--no-bundle-kernels --allow $RH"); else MODES+=(--mode "$m:--allow $RH"); fi
  done
  # MINER_CPUS / LOAD_CPUS (taskset lists, e.g. 0-11 and 12-15) keep the load generator off the
  # miner's cores; MINER_TAG names a second run's files.
  python3 benchmarks/miner_start.py --miner "$MW/sv-miner" --bundle "$MW/bundle" --image crates/sv-train/tests/fixtures/photo.jpg \
    --workdir "$MW" "${MODES[@]}" --miner-cpus "${MINER_CPUS:-}" --load-cpus "${LOAD_CPUS:-}" \
    --load "$MW/sv-load" --rates ${MINER_RATES:-100,200,500,1000,1500,2000} --duration 6 \
    --load-args "--signed --probe-seed sv-replay --miner-hotkey $HK" --json "$OUT/miner.jsonl" 2> "$OUT/load${MINER_TAG:-}.txt"
  cat "$OUT/load${MINER_TAG:-}.txt"
  grep -i "tch\\|kernel\\|graph\\|warm\\|ready" "$MW"/miner-*.log | head -20
  # One file (a call brings back a limited number): the miner's logs and its /metrics after the load.
  (grep -hv Memory.cpp "$MW"/miner-*.log | tail -n 30; grep -E "^sv_(stage|request|batch|cache|queue|shed)" "$MW/metrics.txt") > "$OUT/miner-detail${MINER_TAG:-}.txt" 2>&1
  grep -E "stage1|axon" "$MW/metrics.txt" | grep -E "_sum|_count|le=\"0.01\"|le=\"0.025\"" | head -20
fi
if has 6; then
  echo "== sv-train quantize on the GPU: the simulated variants per calibrator beside the real bf16/FP8/INT8 kernels"
  # .device/quant (carried alone): sv-train (--features tch) stripped and xz'd, and mb.tar.xz, the
  # miner_vits16.toml run and its store as made here under /tmp/mb (the run names that path).
  rm -rf /tmp/mb && tar -xJf .device/quant/mb.tar.xz -C / && xz -dc .device/quant/sv-train.xz > /tmp/sv-train && chmod +x /tmp/sv-train
  RUN=$(ls -d /tmp/mb/runs/miner-vits16-* | head -1)
  # Straight to files (a pipe's buffer is lost when the call's time limit kills it). Every variant
  # runs on the forward's device (the GPU); the simulated ones run Burn's own forward there (not
  # timed on a GPU yet: on LibTorch's CPU one took over 2 minutes). QUANT_VARIANTS (e.g.
  # fp32,tch-bf16,tch-fp8,tch-int8) runs only those variants.
  # SV_TCH_DEVICE=auto: the run was trained here on LibTorch's CPU and records it; quantise on the GPU.
  (cd /tmp/mb && SV_TCH_DEVICE=auto timeout "${QUANT_TIMEOUT:-400}" taskset -c 0-15 /tmp/sv-train quantize --run "$RUN" --samples 256 --sim-samples 45 \
    --fidelity-images "${FIDELITY_IMAGES:-2048}" ${QUANT_VARIANTS:+--variants "$QUANT_VARIANTS"} > "$OUT/quantize.txt" 2> "$OUT/quantize.err"); grep -v "^ *$" "$OUT/quantize.txt"
  cp "$RUN/int8/report.json" "$OUT/quantize.json" 2>/dev/null; grep -v Memory.cpp "$OUT/quantize.err" | tail -3
fi
if has 2; then
  echo "== ViT-7B/16 batch 32: ours bf16, FP8 and INT8 (weights drawn on the device), process start to first batch"
  for lin in native fp8 int8; do
    python3 benchmarks/load_ckpt.py run -- env SV_TCH_LINEAR=$lin taskset -c 0-7 $B --backend tch --dtype bf16 --presets vit7b16 \
      --batches 32 --weights device --iters 30 --max-seconds 8 2>>"$OUT/b7b.err" \
      | sed "s/\"impl_\":\"sv-tch/\"impl_\":\"sv-tch $lin/" | tee -a "$OUT/b7b.jsonl"
  done
  tail -4 "$OUT/b7b.err"
  echo "== ViT-7B/16 batch 32: PyTorch eager and torch.compile"
  $PY --skip-ours --presets vit7b16 --batches 32 --compile --iters 30 --max-seconds 8 --json "$OUT/b7b.jsonl" 2>&1 | grep -v "^|"
  python3 benchmarks/bench_backbone.py --device cuda --from-json "$OUT/b7b.jsonl"
fi
if has 3; then
  echo "== a synthetic 7B checkpoint, loaded by ours and by transformers"
  CK=/tmp/ckpt-7b
  rm -rf "$CK"
  python3 benchmarks/load_ckpt.py write "$CK" --preset vit7b16 --dtype bf16 | tee "$OUT/ckpt.jsonl"
  ls -la "$CK" | tee -a "$OUT/ckpt.txt"
  for run in warm cold; do
    if [ $run = cold ]; then sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && echo "page cache dropped" || echo "page cache NOT dropped (no permission): the cold run reads from the cache"; fi
    python3 benchmarks/load_ckpt.py run -- taskset -c 0-7 $B --backend tch --dtype bf16 --presets vit7b16 --batches 32 \
      --weights "$CK" --iters 5 --max-seconds 3 2>>"$OUT/ckpt.err" | sed "s/\"impl_\":\"sv-tch/\"impl_\":\"sv-tch $run/" | tee -a "$OUT/ckpt.jsonl"
  done
  tail -3 "$OUT/ckpt.err"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  python3 benchmarks/load_ckpt.py run -- taskset -c 0-7 python3 benchmarks/load_ckpt.py load "$CK" --batch 32 2>>"$OUT/ckpt.err" | tee -a "$OUT/ckpt.jsonl"
  tail -3 "$OUT/ckpt.err"
  rm -rf "$CK"
fi
