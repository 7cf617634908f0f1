#!/usr/bin/env bash
# The lab's two models on a GPU in one command: trained with the configs' recipe within a time budget, measured
# (500 samples each at the demo's settings), and left in OUTDIR to copy back. Also runs on a CPU (DEVICE=cpu).
#
#   scripts/gpu_lab.sh fetch                          # on a machine with PyPI: the wheels a GPU machine lacks
#   scripts/gpu_lab.sh OUTDIR [MINUTES] [ARGS...]     # on the GPU machine: MINUTES for everything (default 10)
#
# ARGS go to `python -m dimr reproduce` (e.g. --continue-bundled to give the bundled pair more images, or
# --samples N). Training gets MINUTES less MEASURE_MINUTES (default 2) for the measure and start-up; both models
# share the GPU in lockstep and stop at the same step. OUTDIR gets one tar per model (its weights, config,
# training.json and distortion.json), summary.md and the logs; back here, unpack them into runs/gpu-lab/ and
#   python -m dimr reproduce --out runs/gpu-lab --install     # installs each model better than the bundled one
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ${1:-} == fetch ]]; then
  # diffusers (and what it needs beyond the GPU image's packages), pure Python: no platform to match.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    "diffusers==$(grep -oP '^diffusers==\K.*' requirements.txt)" importlib_metadata==10.2.0
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  ls .whl
  exit 0
fi
OUT=${1:?usage: scripts/gpu_lab.sh OUTDIR [MINUTES] [reproduce arguments] | scripts/gpu_lab.sh fetch}
MINUTES=${2:-10}
shift $(( $# < 2 ? $# : 2 ))
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-runs/gpu-lab}
TRAIN_MINUTES=$("$PY" -c "print(max(0.05, $MINUTES - ${MEASURE_MINUTES:-2}))")
source scripts/carried_wheels.sh
mkdir -p "$OUT" "$RUN"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# A hard stop a little past the budget: whatever was exported and measured by then still comes back.
set +e
timeout --signal=INT --kill-after=30 "$("$PY" -c "print(int($MINUTES * 60 + 60))")" \
  "$PY" -m dimr reproduce --device "$DEVICE" --out "$RUN" --max-minutes "$TRAIN_MINUTES" "$@" 2>&1 \
  | tee "$OUT/reproduce.log"
status=${PIPESTATUS[0]}
set -e
for model in "$RUN"/*/model; do
  name=$(basename "$(dirname "$model")")
  tar -cf "$OUT/$name.tar" -C "$RUN" $(cd "$RUN" && ls -d "$name/model" "$name/grid.png" 2>/dev/null)
  cp "$RUN/$name.log" "$OUT/$name-train.log" 2>/dev/null || true
done
cp "$RUN/summary.md" "$OUT/" 2>/dev/null || true
exit "$status"
