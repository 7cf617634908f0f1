"""Reproduce the distortion lab's two models from scratch: trained side by side on the same batches, measured,
and installed as the bundled models only when asked.

    python -m dimr reproduce                   # CPU: one process per model, half the cores each; resumable
    python -m dimr reproduce --device cuda     # the same recipe and batches on one GPU
    python -m dimr reproduce --install         # afterwards, install each model better than the bundled one
    python -m dimr reproduce --device cuda --max-minutes 8 --continue-bundled   # more images for the bundled pair

Each model trains in its own `python -m dimr train` process on its config in dimr/lab/configs/ (steps, batch and recipe
from there), both kept at the same step (dimr.lab.lockstep), with one progress bar and ETA for the pair. Run it again
with the same --out to continue an interrupted run. Then each model is measured as the app samples it
(`python -m dimr distortion --samples 500`, stored beside its weights, with a grid of its samples) and the two
are printed side by side. Everything stays under --out (default runs/reproduce) unless --install is given, and
`--install` replaces a bundled model only with one better on every headline number of the measure (misdrawn rate,
judge-feature FID, precision, recall, on as many samples); it says which numbers keep the others out.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dimr.atomic import replaced_atomically
from dimr.lab.distortion import STORED_RESULT, stored_result
from dimr.lab.train_config import load_config
from dimr.sampling.loading import CHECKPOINTS_DIR

MODELS = ("tiny-dimr", "tiny-baseline")  # the bundled pair, by config name
POLL_SECONDS = 5


def steps_done(run_dir):
    """The last step a run logged (0 before its first log line). The trainer may be writing a line as this reads:
    only lines that end in a newline are complete."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        return 0
    text = log.read_text()
    lines = text[: text.rfind("\n") + 1].splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def finished(info, total):
    """True when an exported run is done: all its steps, or its time budget spent (not stopped by a signal)."""
    return info["steps"] >= total or info.get("stopped_by", "").startswith("time")


def train_all(configs, out, device, threads, max_steps=None, max_minutes=None, init_from=None):
    """Train the models of `configs` (names or files) in lockstep, one process each; a progress bar until all
    exit. Raises if one fails. `max_minutes` ends both at the same step once one has trained that long;
    `init_from(name)`, when given, is the exported model each run starts from."""
    from tqdm import tqdm

    names = {config: load_config(config)["name"] for config in configs}
    total = max_steps or max(load_config(config)["train"]["max_steps"] for config in configs)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    processes = {}
    for config, name in names.items():
        exported = out / name / "model" / "training.json"
        if exported.is_file() and finished(json.loads(exported.read_text()), total):
            continue  # finished in an earlier run
        command = [sys.executable, "-m", "dimr", "train", "--config", str(config), "--device", device, "--resume",
                   "--run-dir", str(out / name), "--export", str(out / name / "model"), "--sync-dir",
                   str(out / "sync"), "--no-progress"]
        if max_steps:
            command += ["--max-steps", str(max_steps)]
        if max_minutes:
            command += ["--max-minutes", str(max_minutes)]
        if init_from:
            command += ["--init-from", str(init_from(name))]
        if device == "cpu":
            command += ["--threads", str(threads)]
        (out / name).mkdir(parents=True, exist_ok=True)
        log = open(out / f"{name}.log", "a")
        processes[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    bar = tqdm(total=total, desc="training both models", unit="step", dynamic_ncols=True, smoothing=0.05)
    failed = []
    try:
        while processes:
            time.sleep(POLL_SECONDS)
            bar.update(max(0, min(steps_done(out / name) for name in names.values()) - bar.n))
            for name, (process, log) in list(processes.items()):
                if process.poll() is not None:
                    log.close()
                    del processes[name]
                    if process.returncode:
                        failed.append(name)
    finally:
        # Ctrl-C: each trainer saves a checkpoint on SIGTERM, so a later run continues where this one stopped.
        for process, _ in processes.values():
            process.terminate()
        for process, _ in processes.values():
            process.wait()
        bar.close()
    if failed:
        tails = "\n".join(f"--- {name}: {out / f'{name}.log'}\n" + "\n".join(
            (out / f"{name}.log").read_text().splitlines()[-8:]) for name in failed)
        raise RuntimeError(f"training failed for {', '.join(failed)}:\n{tails}")


def measure_all(names, out, device, samples):
    """The distortion measure of the exported models, all at once; skipped where already stored."""
    pending = {}
    for name in names:
        model = out / name / "model"
        stored = model / STORED_RESULT
        if stored.is_file() and stored.stat().st_mtime > (model / "diffusion_pytorch_model.safetensors").stat().st_mtime:
            continue
        command = [sys.executable, "-m", "dimr", "distortion", "--model", str(model), "--samples", str(samples),
                   "--device", device, "--store", "--save-grid", str(out / name / "grid.png"), "--grid-samples", "80"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if device == "cpu" else None
        with open(out / f"{name}-distortion.log", "w") as log:
            pending[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    failed = [name for name, process in pending.items() if process.wait()]
    if failed:
        raise RuntimeError(f"measuring {', '.join(failed)} failed; see {out}/<name>-distortion.log")


def summary(names, out):
    """The models side by side: training and the measure (markdown table)."""
    lines = ["| model | images seen | train min | misdrawn (95% CI) | FID (floor) | precision | recall |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        model = out / name / "model"
        info = json.loads((model / "training.json").read_text())
        r = json.loads((model / STORED_RESULT).read_text())
        low, high = r["ci95"]
        lines.append(f"| {name} | {info['images_seen']:,} | {info['train_minutes']:.0f} | {100 * r['rate']:.1f}% "
                     f"({100 * low:.1f}-{100 * high:.1f}) | {r['fid']:.2f} ({r['real']['fid']:.2f}) | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} |")
    return "\n".join(lines)


# The measure's headline numbers, each with the direction that is better.
HEADLINE = {"rate": "lower", "fid": "lower", "precision": "higher", "recall": "higher"}


def shortfalls(new, bundled):
    """Why the measure `new` is not better than `bundled` on every headline number ([] when it is)."""
    if bundled is None:
        return []
    if new["samples"] != bundled["samples"]:
        return [f"measured on {new['samples']} samples, the bundled model on {bundled['samples']}"]
    reasons = []
    for key, better in HEADLINE.items():
        ahead = new[key] < bundled[key] if better == "lower" else new[key] > bundled[key]
        if not ahead:
            reasons.append(f"{key} {new[key]:.3f} against the bundled {bundled[key]:.3f} ({better} is better)")
    return reasons


def install(names, out):
    """Replace each bundled model (and its README grid) with the reproduced one, where that one is better on every
    headline number; say why for each model kept. Returns the names installed."""
    installed = []
    for name in names:
        target = CHECKPOINTS_DIR / name
        reasons = shortfalls(json.loads((out / name / "model" / STORED_RESULT).read_text()),
                             stored_result(target))
        if reasons:
            print(f"kept the bundled {name}: the new one is not better on every headline number: {'; '.join(reasons)}")
            continue
        with replaced_atomically(target) as partial:
            shutil.copytree(out / name / "model", partial)
        with replaced_atomically(Path("assets") / f"shapes_{name.replace('-', '_')}.png") as partial:
            shutil.copyfile(out / name / "grid.png", partial)
        print(f"installed {target}")
        installed.append(name)
    return installed


def add_cli_arguments(parser):
    parser.add_argument("--configs", nargs="+", default=list(MODELS),
                        help="the training configs (names in dimr/lab/configs/ or files; default: tiny-dimr tiny-baseline)")
    parser.add_argument("--out", default="runs/reproduce",
                        help="where runs, models, logs and grids go (default runs/reproduce); rerun to continue")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both models share it)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="CPU threads per model (default: half the cores)")
    parser.add_argument("--max-steps", type=int, help="stop both at this step instead of the configs' max_steps "
                                                      "(a shorter run: fewer images, a worse model)")
    parser.add_argument("--max-minutes", type=float, help="stop both at the same step once one has trained this long")
    parser.add_argument("--continue-bundled", action="store_true",
                        help="start from the bundled models' weights instead of from scratch (fresh optimiser)")
    parser.add_argument("--samples", type=int, default=500, help="samples of the distortion measure")
    parser.add_argument("--install", action="store_true",
                        help="at the end, replace each bundled model with its new one if better on every headline number")


def cli_main(args):
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ValueError(f"--max-minutes must be more than 0, got {args.max_minutes}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device} asked for, but torch sees no CUDA device; use --device cpu")
    names = [load_config(config)["name"] for config in args.configs]  # a bad config fails here, before training
    if (args.install or args.continue_bundled) and not set(names) <= set(MODELS):
        raise ValueError(f"--install and --continue-bundled work on the bundled models {', '.join(MODELS)}; these "
                         f"configs train {', '.join(names)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    train_all(args.configs, out, args.device, args.threads, args.max_steps, args.max_minutes,
              init_from=(lambda name: CHECKPOINTS_DIR / name) if args.continue_bundled else None)
    measure_all(names, out, args.device, args.samples)
    table = summary(names, out)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min; models in {out}/<name>/model")
    if args.install:
        install(names, out)
    else:
        print("the bundled models are unchanged; `--install` replaces each with its new one if that is better")
    return 0
