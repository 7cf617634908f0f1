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
# shellcheck disable=SC2086
"$PY" -m dimr.classifier --device "$DEVICE" --images 100000 --epochs 6 ${CLASSIFIER_ARGS:-} \
  > "$WORK/classifier.log" 2>&1 &
pids+=($!)
names=(tiny-dimr tiny-baseline classifier)
failed=()
for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
for log in "$WORK"/*.log; do echo "== $log"; tail -n 5 "$log"; done
trained=$(date +%s)
# Pack each model that trained, first: they come back even if something later fails.
for name in tiny-dimr tiny-baseline; do
  [[ " ${failed[*]} " == *" $name "* ]] || tar -cf "$OUT/$name.tar" "checkpoints/$name"
done
if (( ${#failed[@]} )); then
  tar -cf "$OUT/extras.tar" --exclude='checkpoint' "$WORK"
  echo "training failed for: ${failed[*]}; logs are in $OUT/extras.tar" >&2
  exit 1
fi

# One process for everything after training: grids, distortion rates, summary (imports once).
evaluated=0
"$PY" - "$DEVICE" "$SAMPLES" "$WORK" "$MINUTES" "$((trained - started))" "${COMPILE:-0}" > "$OUT/summary.md" <<'PYEOF' && evaluated=1
import json, sys, time
import torch
from dimr.classifier import load_classifier
from dimr.distortion import distortion_rate, format_result, generated_images, real_images
from dimr.loading import load_pipeline
from dimr.train import class_grid, device_name, save_png, tile

device, samples, work, minutes, train_seconds, compile_flag = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
start = time.monotonic()
print(f"# Distortion lab training run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
print(f"- device: {device_name(device)}; torch {torch.__version__}")
print(f"- command: `scripts/gpu_train.sh OUTDIR {minutes} {device}` (COMPILE={compile_flag})")
for name in ("tiny-dimr", "tiny-baseline"):
    info = json.load(open(f"checkpoints/{name}/training.json"))
    logs = [json.loads(line) for line in open(f"{work}/{name}/log.jsonl")]
    rates = [r["steps_per_s"] for r in logs[1:]] or [logs[-1]["steps_per_s"]]
    print(f"- {name}: {info['steps']} steps x batch {info['batch_size']} = {info['images_seen']:,} images in "
          f"{info['train_minutes']} min ({sum(rates) / len(rates):.1f} steps/s on average beside the other model); "
          f"last loss {logs[-1]['loss']} (per branch {logs[-1]['branch_losses']})")
    pipe = load_pipeline(name, device=device)
    save_png(class_grid(pipe.model), f"assets/shapes_{name.replace('-', '_')}.png")
classifier_info = json.load(open("checkpoints/shapes-classifier/config.json"))
print(f"- classifier: validation accuracy {classifier_info['validation_accuracy']} on "
      f"{classifier_info['validation_images']} held-out shapes")
print(f"- wall time: training phase {train_seconds} s (both models and the classifier)\n")
classifier = load_classifier(device=device)
results, strict = {}, {}  # strict: a secondary threshold (0.9), fixed in advance, to see how sensitive the rate is
for model in ("real", "tiny-dimr", "tiny-baseline"):
    if model == "real":
        images, labels = real_images(samples)
    else:
        images, labels = generated_images(model, samples, device=device, progress=False)
    results[model] = distortion_rate(images, labels, classifier)
    strict[model] = distortion_rate(images, labels, classifier, threshold=0.9)
    save_png(tile(images, 10, scale=2), f"{work}/distortion_{model}.png")
    json.dump({"model": model, **results[model]}, open(f"{work}/distortion_{model}.json", "w"), indent=1)
    print(format_result(model, results[model]).replace("\n", "\n\n") + "\n")
print("| model | distortion rate | 95% CI (Wilson) | flagged / samples | rate at p < 0.9 (95% CI) |")
print("|---|---|---|---|---|")
for model, r in results.items():
    q = strict[model]
    print(f"| {model} | {100 * r['rate']:.1f}% | {100 * r['ci95'][0]:.1f}%-{100 * r['ci95'][1]:.1f}% | "
          f"{r['flagged']} / {r['samples']} | {100 * q['rate']:.1f}% ({100 * q['ci95'][0]:.1f}%-{100 * q['ci95'][1]:.1f}%) |")
print(f"\n(samples: {samples} per model, 25 steps, dpm-solver-3s, guidance 1.5, seed 0; evaluation took "
      f"{time.monotonic() - start:.0f} s)")
PYEOF
echo "total wall time: $(( $(date +%s) - started )) s" >> "$OUT/summary.md"
cat "$OUT/summary.md"

rm -rf "$WORK/sync"
grids=()
for name in tiny_dimr tiny_baseline; do
  [[ -f "assets/shapes_$name.png" ]] && grids+=("assets/shapes_$name.png") && cp "assets/shapes_$name.png" "$OUT/"
done
tar -cf "$OUT/extras.tar" checkpoints/shapes-classifier "${grids[@]}" --exclude='checkpoint' "$WORK"
ls -l "$OUT"
[[ $evaluated == 1 ]] || { echo "the evaluation failed (models are packed; see the output above)" >&2; exit 1; }
