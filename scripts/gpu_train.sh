#!/usr/bin/env bash
# Train the distortion lab's models on one GPU and pack everything the repo needs into OUTDIR.
#
#   scripts/gpu_train.sh OUTDIR MINUTES [DEVICE]          e.g. scripts/gpu_train.sh "$OUT" 5
#
# tiny-dimr and tiny-baseline train side by side as two processes in lockstep (same batches, and both stop
# at the same step once MINUTES of training have passed); the shapes classifier trains beside them. Then the
# EMA models are exported, sample grids drawn and the distortion rates (500 samples each, and real data)
# measured. OUTDIR receives few files (the device tool returns at most 8, 16 MiB each):
#   tiny-dimr.tar, tiny-baseline.tar   checkpoints/<name>/ (config.json, safetensors, training.json)
#   extras.tar                         checkpoints/shapes-classifier/, assets/shapes_*.png, runs/gpu logs
#   summary.md                         timings, step counts and the distortion table (also printed)
#   shapes_tiny_dimr.png, shapes_tiny_baseline.png   one row per class, for a first look
# Unpack in the repo root: for f in OUTDIR/*.tar; do tar -xf "$f"; done
#
# Environment: PYTHON (default python3), COMPILE=1 (torch.compile; slower start, may be faster after),
# SAMPLES (default 500), TRAIN_ARGS / CLASSIFIER_ARGS (extra arguments, e.g. for a CPU smoke test).
# Needs torch, safetensors, diffusers (and its dependencies), tqdm, pillow; not gradio.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_train.sh OUTDIR MINUTES [DEVICE]}
MINUTES=${2:?usage: scripts/gpu_train.sh OUTDIR MINUTES [DEVICE]}
DEVICE=${3:-cuda}
PY=${PYTHON:-python3}
SAMPLES=${SAMPLES:-500}
WORK=runs/gpu
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$WORK" && mkdir -p "$WORK/sync"
started=$(date +%s)

"$PY" - <<PYEOF
import torch, diffusers, safetensors
print("torch", torch.__version__, "diffusers", diffusers.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PYEOF

compile=()
[[ "${COMPILE:-0}" == 1 ]] && compile=(--compile)
pids=()
for name in tiny-dimr tiny-baseline; do
  # shellcheck disable=SC2086
  "$PY" -m dimr train --config "configs/$name.json" --device "$DEVICE" --max-minutes "$MINUTES" \
    --run-dir "$WORK/$name" --export "checkpoints/$name" --sync-dir "$WORK/sync" --sample-minutes 2 \
    --no-progress "${compile[@]}" ${TRAIN_ARGS:-} > "$WORK/$name.log" 2>&1 &
  pids+=($!)
done
# shellcheck disable=SC2086
"$PY" -m dimr.classifier --device "$DEVICE" --images 100000 --epochs 6 ${CLASSIFIER_ARGS:-} \
  > "$WORK/classifier.log" 2>&1 &
pids+=($!)
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for log in "$WORK"/*.log; do echo "== $log"; tail -n 5 "$log"; done
if [[ $failed == 1 ]]; then
  tar -cf "$OUT/extras.tar" "$WORK"
  echo "a training process failed; logs are in $OUT/extras.tar" >&2
  exit 1
fi
trained=$(date +%s)

for name in tiny-dimr tiny-baseline; do
  "$PY" - "$name" "$DEVICE" <<'PYEOF'
import sys
from dimr.loading import load_pipeline
from dimr.train import class_grid, save_png
name, device = sys.argv[1], sys.argv[2]
pipe = load_pipeline(name, device=device)
save_png(class_grid(pipe.model), f"assets/shapes_{name.replace('-', '_')}.png")
PYEOF
done
for model in real tiny-dimr tiny-baseline; do
  "$PY" -m dimr distortion --model "$model" --samples "$SAMPLES" --device "$DEVICE" \
    --json "$WORK/distortion_$model.json" --save-grid "$WORK/distortion_$model.png" | tee "$WORK/distortion_$model.txt"
done

{
  echo "# GPU training run ($(date -u +%FT%TZ))"
  echo
  echo "device: $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')"
  echo "command: scripts/gpu_train.sh OUTDIR $MINUTES $DEVICE (COMPILE=${COMPILE:-0})"
  echo "wall time: training $((trained - started)) s, total $(( $(date +%s) - started )) s"
  echo
  for name in tiny-dimr tiny-baseline; do
    echo "$name: $(cat "checkpoints/$name/training.json" | tr -d '\n ')"
    echo "  last log line: $(tail -n 1 "$WORK/$name/log.jsonl")"
  done
  echo "classifier: $(grep -o '"validation_accuracy": [0-9.]*' checkpoints/shapes-classifier/config.json)"
  echo
  "$PY" - "$WORK" <<'PYEOF'
import json, sys
work = sys.argv[1]
print("| model | distortion rate | 95% CI (Wilson) | flagged / samples |")
print("|---|---|---|---|")
for model in ("real", "tiny-dimr", "tiny-baseline"):
    r = json.load(open(f"{work}/distortion_{model}.json"))
    print(f"| {model} | {100 * r['rate']:.1f}% | {100 * r['ci95'][0]:.1f}%-{100 * r['ci95'][1]:.1f}% | {r['flagged']} / {r['samples']} |")
PYEOF
} > "$OUT/summary.md"
cat "$OUT/summary.md"

tar -cf "$OUT/tiny-dimr.tar" checkpoints/tiny-dimr
tar -cf "$OUT/tiny-baseline.tar" checkpoints/tiny-baseline
rm -rf "$WORK/sync"
tar -cf "$OUT/extras.tar" checkpoints/shapes-classifier assets/shapes_tiny_dimr.png assets/shapes_tiny_baseline.png \
  --exclude='checkpoint' "$WORK"
cp assets/shapes_tiny_dimr.png assets/shapes_tiny_baseline.png "$OUT/"
ls -l "$OUT"
