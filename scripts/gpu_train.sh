#!/usr/bin/env bash
# Train the distortion lab's models on one GPU and pack everything the repo needs into OUTDIR.
#
#   scripts/gpu_train.sh OUTDIR MINUTES [DEVICE]          e.g. scripts/gpu_train.sh "$OUT" 5
#
# tiny-dimr and tiny-baseline train side by side as two processes in lockstep (same batches, and both stop
# at the same step once MINUTES of training have passed). Then the EMA models are exported, sample grids drawn
# and the distortion measure (500 samples each, and real data) taken with the bundled judge, which stays as it
# is so that numbers before and after a retraining compare. OUTDIR receives few files (the device tool returns
# at most 8, 16 MiB each):
#   tiny-dimr.tar, tiny-baseline.tar   checkpoints/<name>/ (config.json, safetensors, training.json, distortion.json)
#   extras.tar                         assets/shapes_*.png, runs/gpu logs and measurements
#   summary.md                         timings, step counts and the distortion table (also printed)
#   shapes_tiny_dimr.png, shapes_tiny_baseline.png   one row per class, for a first look
# Unpack in the repo root: for f in OUTDIR/*.tar; do tar -xf "$f"; done
#
# Environment: PYTHON (default python3), COMPILE=1 (torch.compile; slower start, may be faster after),
# SAMPLES (default 500), TRAIN_ARGS (extra arguments, e.g. for a CPU smoke test).
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
# CONTINUE=1: start from the models already exported in checkpoints/ (their resumable state stays behind).
continue_from() { [[ "${CONTINUE:-0}" == 1 ]] && echo "--init-from checkpoints/$1"; return 0; }
pids=()
for name in tiny-dimr tiny-baseline; do
  # shellcheck disable=SC2086
  "$PY" -m dimr train --config "configs/$name.json" --device "$DEVICE" --max-minutes "$MINUTES" \
    --run-dir "$WORK/$name" --export "checkpoints/$name" --sync-dir "$WORK/sync" --sample-minutes 2 \
    --no-progress "${compile[@]}" $(continue_from "$name") ${TRAIN_ARGS:-} > "$WORK/$name.log" 2>&1 &
  pids+=($!)
done
names=(tiny-dimr tiny-baseline)
failed=()
for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
for log in "$WORK"/*.log; do echo "== $log"; tail -n 5 "$log"; done
trained=$(date +%s)
# Pack each model that trained, first: they come back even if something later fails (packed again below
# with their measured distortion.json).
pack() { for name in tiny-dimr tiny-baseline; do
  [[ " ${failed[*]} " == *" $name "* ]] || tar -cf "$OUT/$name.tar" "checkpoints/$name"
done; }
pack
if (( ${#failed[@]} )); then
  tar -cf "$OUT/extras.tar" --exclude='checkpoint' "$WORK"
  echo "training failed for: ${failed[*]}; logs are in $OUT/extras.tar" >&2
  exit 1
fi

# The distortion measure of real data and both models (stored next to each model for the app), and the
# README's grids: 8 samples per class, flagged ones framed in red.
evaluated=1
{
  echo "# Distortion lab training run ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo "- command: \`scripts/gpu_train.sh OUTDIR $MINUTES $DEVICE\` (COMPILE=${COMPILE:-0}); training phase $((trained - started)) s"
  for name in tiny-dimr tiny-baseline; do echo "- $name: $(tr -d '\n ' < "checkpoints/$name/training.json" | cut -c1-300)"; done
  for model in real tiny-dimr tiny-baseline; do
    store=(); [[ $model == real ]] || store=(--store)
    "$PY" -m dimr distortion --model "$model" --samples "$SAMPLES" --device "$DEVICE" "${store[@]}" \
      --json "$WORK/distortion_$model.json" --save-grid "$WORK/distortion_$model.png" || evaluated=0
  done
  for name in tiny-dimr tiny-baseline; do
    "$PY" -m dimr distortion --model "$name" --samples 80 --device "$DEVICE" \
      --save-grid "assets/shapes_${name//-/_}.png" > /dev/null || evaluated=0
  done
} > "$OUT/summary.md"
echo "total wall time: $(( $(date +%s) - started )) s" >> "$OUT/summary.md"
cat "$OUT/summary.md"

rm -rf "$WORK/sync"
grids=()
for name in tiny_dimr tiny_baseline; do
  [[ -f "assets/shapes_$name.png" ]] && grids+=("assets/shapes_$name.png") && cp "assets/shapes_$name.png" "$OUT/"
done
pack
tar -cf "$OUT/extras.tar" "${grids[@]}" --exclude='checkpoint' "$WORK"
ls -l "$OUT"
[[ $evaluated == 1 ]] || { echo "the evaluation failed (models are packed; see the output above)" >&2; exit 1; }
