"""Recipe ablations of the shapes models at equal compute: each arm trains from scratch on the same data order for
the same number of steps and batch, then is judged by the distortion measure on the same noise and classes.

    python scripts/ablate.py dimr/lab/configs/ablations/stage1.json [--parallel 2] [--only ARM ...]

An arms file: {"stage": "stage1", "steps": 1500, "batch_size": 64, "samples": 200,
               "arms": [{"name": "current", "config": "tiny-dimr"},
                        {"name": "v-cosine", "config": "tiny-dimr",
                         "set": {"diffusion.prediction_type": "v_prediction", "train.lr": 0.002}}]}
("set" overrides config fields by dotted path; an arm may also set its own "steps" and "batch_size".)

Every arm runs as two processes of one CPU thread each (`python -m dimr train`, then `python -m dimr distortion`),
`--parallel` arms at a time. Everything goes to runs/ablations/<stage>/<arm>/ and is resumable: a finished arm is
skipped, an interrupted one continues from its last checkpoint. The table printed at the end (and written as
results.md) has, per arm: images seen, training minutes and images/s, the final branch's loss over the last 10%
of steps, the measure (misdrawn rate, judge-feature FID, precision and recall), and how well the final branch
denoises real renders at four noise levels (`denoising_error`: the high levels decide a sample's layout).
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not

from dimr.lab.train_config import load_config, prepare_config  # noqa: E402

RUNS = ROOT / "runs" / "ablations"


def arm_config(arm, batch_size):
    """The arm's prepared training config: its base config with the arm's overrides, named after the arm."""
    config = copy.deepcopy(load_config(arm.get("config", "tiny-dimr")))
    config["name"] = arm["name"]
    config["train"]["batch_size"] = batch_size
    for path, value in arm.get("set", {}).items():
        *parents, field = path.split(".")
        node = config
        for key in parents:
            node = node[key] if not key.isdigit() else node[int(key)]
        node[int(field) if field.isdigit() else field] = value
    return prepare_config(config)


def run_arm(arm, plan, log):
    """Train and measure one arm (skipped when its result exists); returns its row."""
    out = RUNS / plan["stage"] / arm["name"]
    result_file = out / "result.json"
    if not result_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        config = arm_config(arm, arm.get("batch_size", plan["batch_size"]))
        (out / "arm-config.json").write_text(json.dumps(config, indent=1))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        steps = arm.get("steps", plan["steps"])
        train = [sys.executable, "-m", "dimr", "train", "--config", str(out / "arm-config.json"), "--device", "cpu",
                 "--threads", "1", "--max-steps", str(steps), "--run-dir", str(out / "run"), "--resume",
                 "--export", str(out / "model"), "--no-progress", "--sample-minutes", "1e9", "--log-every", "20"]
        measure = [sys.executable, "-m", "dimr", "distortion", "--model", str(out / "model"), "--samples",
                   str(plan["samples"]), "--batch-size", "50", "--device", "cpu", "--json", str(result_file),
                   "--save-grid", str(out / "grid.png"), "--grid-samples", str(min(80, plan["samples"]))]
        for command in (train, measure):
            with open(out / "log.txt", "a") as output:
                started = time.monotonic()
                code = subprocess.call(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            log(f"{arm['name']}: {command[3]} exited {code} after {(time.monotonic() - started) / 60:.1f} min")
            if code:
                raise RuntimeError(f"arm {arm['name']}: `{' '.join(command[1:4])}` failed; see {out / 'log.txt'}")
    return row(arm["name"], out)


# The denoising check's noise levels, as abar (signal power): each model is asked at the timestep of its own
# schedule nearest in abar, so models on different schedules are compared at the same signal-to-noise ratio.
NOISE_LEVELS = (0.7, 0.3, 0.1, 0.02)
# How much the class changes that estimate (RMS against the null class), at a noise level where the layout forms:
# a model that barely listens to its class cannot draw a ring rather than a blob.
CLASS_EFFECT_LEVEL = 0.1


def denoising_error(model_dir, num_images=500):
    """RMSE (0..255 units) of the final branch's clean estimate of real renders noised to each abar of NOISE_LEVELS
    (and "class_effect", see CLASS_EFFECT_LEVEL):
    how well the model denoises at each noise level, comparable across prediction types and schedules. The
    high levels are where a sample's layout is decided; a model that fails there draws blobs from noise."""
    import torch

    from dimr.lab.distortion import REAL_SEED, branch_denoising_errors, branch_estimates, real_images
    from dimr.lab.shapes import to_model_range
    from dimr.sampling.loading import load_pipeline

    pipe = load_pipeline(model_dir, device="cpu")
    images, labels = real_images(num_images, REAL_SEED)
    x0 = to_model_range(images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    final = branch_denoising_errors(pipe, x0, labels, NOISE_LEVELS, noise)[:, -1]
    errors = {level: round(float(e.square().mean().sqrt()), 2) for level, e in zip(NOISE_LEVELS, final)}
    given, unconditional = (branch_estimates(pipe, x0, y, CLASS_EFFECT_LEVEL, noise)[-1]
                            for y in (labels, torch.full_like(labels, pipe.model.null_class)))
    errors["class_effect"] = round(float((given - unconditional).square().mean().sqrt()) * 127.5, 2)
    return errors


def row(name, out):
    result = json.loads((out / "result.json").read_text())
    cached = out / "denoising.json"
    if not cached.is_file():
        cached.write_text(json.dumps(denoising_error(out / "model")))
    denoising = json.loads(cached.read_text())
    records = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    training = json.loads((out / "model" / "training.json").read_text())
    tail = records[-max(1, len(records) // 10):]
    final_loss = sum(r["branch_losses"][-1] for r in tail) / len(tail)
    return {"arm": name, "images": training["images_seen"], "minutes": training["train_minutes"],
            "images_per_s": round(training["images_seen"] / max(training["train_minutes"] * 60, 1e-9), 1),
            "final_branch_loss": round(final_loss, 4), "misdrawn": round(result["rate"], 3),
            "fid": round(result["fid"], 2), "precision": round(result["precision"], 3),
            "recall": round(result["recall"], 3), "denoising_rmse": denoising, "per_class": result["per_class"]}


def table(rows):
    levels = " / ".join(str(k) for k in NOISE_LEVELS)
    lines = [f"| arm | images | CPU min | img/s | final-branch loss | misdrawn | FID | precision | recall | "
             f"denoising RMSE at abar = {levels} | class effect |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        denoising = " / ".join(f"{r['denoising_rmse'][str(k)]:.1f}" for k in NOISE_LEVELS)
        lines.append(f"| {r['arm']} | {r['images']:,} | {r['minutes']:.1f} | {r['images_per_s']:.0f} | "
                     f"{r['final_branch_loss']:.4f} | {100 * r['misdrawn']:.1f}% | {r['fid']:.1f} | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} | {denoising} | "
                     f"{r['denoising_rmse']['class_effect']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", help="an arms file (JSON, see above)")
    parser.add_argument("--parallel", type=int, default=2, help="arms trained at once, one CPU thread each")
    parser.add_argument("--only", nargs="+", help="run only these arms")
    args = parser.parse_args()
    plan = json.loads(Path(args.arms).read_text())
    arms = [a for a in plan["arms"] if not args.only or a["name"] in args.only]
    for arm in arms:
        arm_config(arm, arm.get("batch_size", plan["batch_size"]))  # a bad override fails here, before hours of training

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda arm: run_arm(arm, plan, log), arms))
    text = table(rows)
    (RUNS / plan["stage"] / "results.md").write_text(text + "\n")
    (RUNS / plan["stage"] / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
