#!/usr/bin/env bash
# The GPU sampling benchmark in one call: DiMR-XL/2R sampling, ours (fast mode) vs the official path.
#
#   benchmarks/gpu_run.sh OUTDIR [more benchmarks/sampling.py arguments]
#
# Needs, in the repo: .official/ (a copy of github.com/qihao067/DiMR: git -C MIRROR archive HEAD | tar -x -C
# .official) and, where the machine's Python lacks a package, its wheels in .whl/ (scripts/carried_wheels.sh);
# both are git-ignored. Writes OUTDIR/sampling.json (rewritten after every measurement, so a cut-off run
# keeps what it measured) and OUTDIR/sampling.log. No measurement starts after BUDGET seconds (default
# 240); the whole script is killed after BUDGET + 90. Copy sampling.json to benchmarks/results/<device>.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/gpu_run.sh OUTDIR [sampling.py arguments]}
shift
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-240}
mkdir -p "$OUT"
source scripts/carried_wheels.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true
official=()
[[ -f .official/dpm_solver.py ]] && official=(--official-repo .official)
timeout --signal=INT --kill-after=15 $((BUDGET + 90)) \
  "$PY" benchmarks/sampling.py "${official[@]}" --max-seconds "$BUDGET" --out "$OUT/sampling.json" "$@" 2>&1 \
  | tee "$OUT/sampling.log"
