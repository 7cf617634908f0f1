"""Training a small pixel-space DiMR on the shapes dataset: the official recipe, scaled down.

    python -m dimr train --config dimr/lab/configs/tiny-dimr.json [--device cuda] [--max-minutes M] [--resume]
    python -m dimr train --config dimr/lab/configs/tiny-dimr.json --cost      # parameters and forward FLOPs

The recipe (the official DiMR training, as its configs and the paper describe it): epsilon prediction on Stable Diffusion's scaled-linear
schedule, timestep index k uniform in 0..999 (the model's diffusers convention), label dropout to the null
class, and the multi-scale loss: branch l, whose prediction is f = model.branch_scales[l] times smaller than
the image, is trained against the noise sum-pooled over f x f windows and divided by f, which keeps unit
variance; loss = sum_l coeff_l * MSE_l. AdamW with linear warm-up and an EMA of the weights; optionally
the learning rate decays linearly to 0 over the last train.decay_steps steps (a cool-down session).

Scaled down for runs of minutes instead of weeks (the `train` section of a config):
- lr 1e-3 with betas (0.9, 0.99): the official 2e-4 and beta1 = 0.99 average gradients over ~100 steps, which
  suits 800 epochs at batch 1024, but a few thousand steps of a 3M-parameter model need a shorter memory.
  Weight decay 0.03 as official, applied to matrices only (norm scales and biases decaying to 0 only hurts).
- 500 warm-up steps instead of 5000, EMA decay 0.999 (a ~1000-step horizon) instead of 0.9999, with the
  usual (1 + step) / (10 + step) ramp so early averages are not dominated by the random initialisation.
- gradient clipping at 1.0, which keeps the high learning rate stable.
- optionally (train.min_snr_gamma) the min-SNR-gamma loss weighting of Hang et al. (2023); the weights start
  from the official initialisation (`DiMRModel.initialize_weights`).

Speed: the dataset is rendered once onto the device as uint8; convolutions run channels-last; on CUDA the step
runs under bf16 autocast with fused AdamW (optionally torch.compile, falling back to eager if it fails), while
on CPU everything stays float32. Runs are bounded by steps and by wall-clock minutes and resume exactly from
their last checkpoint (safetensors weights, a JSON state; the optimizer state is saved with torch.save and read
back with weights_only=True). `--sync-dir` keeps several processes that share one GPU at the same step, so two
models trained side by side stop after exactly the same number of steps on exactly the same batches.
"""

import contextlib
import copy
import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dimr.atomic import newest_complete, replaced_atomically
from dimr.lab.lockstep import Lockstep
from dimr.lab.objective import alphas_cumprod, diffusion_loss, sample_timesteps
from dimr.lab.shapes import make_dataset, to_model_range
from dimr.lab.train_config import build_model, load_config, model_cost, prepare_config
from dimr.sampling.grids import class_grid, save_png
from dimr.sampling.pipeline import make_scheduler

RUNS_DIR = Path("runs")  # under the working directory
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "rng.safetensors", "optimizer.pt", "state.json")

# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Model, EMA, optimizer, data and RNG of one training run, with its checkpoint and export."""

    def __init__(self, config, run_dir, device="cpu", compile=False):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        t = config["train"]
        torch.manual_seed(t["seed"])
        self.model = build_model(config).to(self.device, memory_format=torch.channels_last).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t["lr"], betas=tuple(t["betas"]), **({"fused": True} if self.cuda else {}),
        )
        self.images, self.labels = make_dataset(config["data"]["num_images"], config["data"]["seed"], device=self.device)
        self.alphas_cumprod = alphas_cumprod(config["diffusion"]["beta_schedule"]).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(t["seed"])
        self.step = 0
        self.train_seconds = 0.0
        self.init_from = None  # the exported model this run started from, if any
        self.loss_fn = diffusion_loss
        if compile:
            self._try_compile()

    # One step ---------------------------------------------------------------------------------------

    def draw_batch(self):
        """Images, labels (after label dropout), timesteps and noise for one step, from the run's generator."""
        t = self.config["train"]
        b, g, dev = t["batch_size"], self.generator, self.device
        index = torch.randint(0, self.images.shape[0], (b,), generator=g, device=dev)
        x0 = to_model_range(self.images[index]).contiguous(memory_format=torch.channels_last)
        labels = self.labels[index]
        dropped = torch.rand(b, generator=g, device=dev) < t["label_dropout"]
        labels = torch.where(dropped, torch.full_like(labels, self.model.null_class), labels)
        timesteps = sample_timesteps(torch.randn(b, generator=g, device=dev), t["time_sampling"], t["logit_mean"],
                                     t["logit_std"])
        noise = torch.randn(x0.shape, generator=g, device=dev).contiguous(memory_format=torch.channels_last)
        return x0, labels, timesteps, noise

    def compute_loss(self, batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            t = self.config["train"]
            return self.loss_fn(self.model, *batch, self.alphas_cumprod, t["loss_coeffs"], t["min_snr_gamma"],
                                self.config["diffusion"]["prediction_type"])

    def lr_at(self, step):
        """Linear warm-up, then constant, then (with decay_steps) linear decay reaching 0 at max_steps."""
        t = self.config["train"]
        warm_up = min(1.0, (step + 1) / max(1, t["warmup_steps"]))
        decay = min(1.0, (t["max_steps"] - step) / t["decay_steps"]) if t["decay_steps"] else 1.0
        return t["lr"] * warm_up * decay

    def train_step(self, batch=None):
        """One optimizer step; returns (loss, branch losses) as device tensors (no host sync)."""
        t = self.config["train"]
        loss, branch_losses = self.compute_loss(self.draw_batch() if batch is None else batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t["grad_clip"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        return loss.detach(), torch.stack([l.detach() for l in branch_losses])

    @torch.no_grad()
    def update_ema(self):
        decay = min(self.config["train"]["ema_decay"], (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)

    def _try_compile(self):
        """torch.compile the loss; on any failure (no compiler, unsupported op) keep eager mode."""
        compiled = torch.compile(diffusion_loss)
        self.loss_fn = compiled
        try:
            # Warm-up on a throw-away batch (own generator, gradients cleared): no effect on the run.
            saved = self.generator.get_state()
            loss, _ = self.compute_loss(self.draw_batch())
            loss.backward()
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(saved)
        except Exception as err:  # torch.compile raises many kinds (backend, lowering, missing compiler)
            print(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); training eagerly")
            self.loss_fn = diffusion_loss
            self.optimizer.zero_grad(set_to_none=True)

    def scheduler(self):
        """A sampler on the run's noise settings (saved with the export as scheduler_config.json)."""
        return make_scheduler(**self.config["diffusion"])

    # Checkpoints ------------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self):
        return self.run_dir / "checkpoint"

    def save_checkpoint(self):
        """Write the resumable state next to the previous one, then swap, so a kill never leaves half a checkpoint
        (`checkpoint_step` tells a whole one; state.json is written last)."""
        with replaced_atomically(self.checkpoint_dir) as tmp:
            tmp.mkdir()
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, tmp / "model.safetensors")
            save_file({k: v.contiguous() for k, v in self.ema.state_dict().items()}, tmp / "ema.safetensors")
            save_file({"generator": self.generator.get_state()}, tmp / "rng.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            state = {"step": self.step, "train_seconds": self.train_seconds, "device": self.device.type,
                     "config": self.config, "init_from": self.init_from}
            (tmp / "state.json").write_text(json.dumps(state, indent=1))

    def load_checkpoint(self):
        """Continue from run_dir/checkpoint; the model and data sections must match the saved run."""
        path = self.checkpoint_dir
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"no checkpoint to resume in {path}; start without --resume")
        state = json.loads((path / "state.json").read_text())
        for section in ("model", "diffusion", "data"):
            if state["config"][section] != self.config[section]:
                raise ValueError(
                    f"cannot resume {path}: its '{section}' config differs from this run's "
                    f"(saved {state['config'][section]}, now {self.config[section]}); use another --run-dir"
                )
        self.model.load_state_dict(load_file(path / "model.safetensors", device=str(self.device)))
        self.ema.load_state_dict(load_file(path / "ema.safetensors", device=str(self.device)))
        optimizer_state = torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(optimizer_state)
        self.step, self.train_seconds = state["step"], state["train_seconds"]
        self.init_from = state.get("init_from")
        if state["device"] == self.device.type:
            self.generator.set_state(load_file(path / "rng.safetensors")["generator"])
        else:
            # A CPU generator state cannot drive a CUDA generator (and back): reseed from the seed and step.
            self.generator.manual_seed(self.config["train"]["seed"] * 1_000_003 + self.step)

    def export(self, out_dir, stopped_by=None):
        """Save the EMA model as a loadable checkpoint (config.json with class names + safetensors).

        training.json describes this session (and what ended it, when given); when the run continued an exported model (init_from), it also
        keeps that model's sessions and totals, so the history of the weights is never lost.
        """
        out_dir = Path(out_dir)
        with replaced_atomically(out_dir) as tmp:
            export_model = copy.deepcopy(self.ema).to("cpu", memory_format=torch.contiguous_format)
            export_model.save_pretrained(tmp, safe_serialization=True)
            self.scheduler().save_config(tmp)
            t = self.config["train"]
            info = {"config": self.config["name"], "steps": self.step, "batch_size": t["batch_size"],
                    "images_seen": self.step * t["batch_size"], "train_minutes": round(self.train_seconds / 60, 2),
                    "device": device_name(self.device), "lr": t["lr"], "warmup_steps": t["warmup_steps"],
                    "decay_steps": t["decay_steps"]}
            if stopped_by:
                info["stopped_by"] = stopped_by
            previous = Path(self.init_from or "") / "training.json"
            if self.init_from and previous.is_file():
                before = json.loads(previous.read_text())
                sessions = before.get("sessions") or [before]
                session = {**info, "init_from": str(self.init_from)}
                info["sessions"] = [*sessions, {k: v for k, v in session.items() if k != "config"}]
                info["total_steps"] = sum(x["steps"] for x in info["sessions"])
                info["total_images_seen"] = sum(x["steps"] * x["batch_size"] for x in info["sessions"])
                info["total_train_minutes"] = round(sum(x["train_minutes"] for x in info["sessions"]), 2)
            (tmp / "training.json").write_text(json.dumps(info, indent=1) + "\n")
        return out_dir


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------- the loop


def _log_record(trainer, losses, branch_losses, steps_per_s):
    """One line of log.jsonl: the interval's mean losses (total and per branch), rate and time trained."""
    mean = torch.stack(losses).mean().item()
    if not math.isfinite(mean):
        raise FloatingPointError(f"loss became {mean} at step {trainer.step}; lower train.lr in the config")
    return {"step": trainer.step, "loss": round(mean, 5),
            "branch_losses": [round(x, 5) for x in torch.stack(branch_losses).mean(0).tolist()],
            "lr": trainer.lr_at(trainer.step - 1), "steps_per_s": round(steps_per_s, 3),
            "images_per_s": round(steps_per_s * trainer.config["train"]["batch_size"], 1),
            "train_minutes": round(trainer.train_seconds / 60, 3)}


@contextlib.contextmanager
def stop_signals():
    """Within: SIGINT (Ctrl-C) and SIGTERM are recorded in the yielded list instead of stopping the process, so the
    loop can stop after the current step with a checkpoint; a second signal interrupts at once."""
    signalled = []

    def on_signal(signum, frame):
        if signalled:
            raise KeyboardInterrupt
        signalled.append(signal.Signals(signum).name)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signalled
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def checkpoint_step(directory):
    """The step a checkpoint directory holds, or None when it is not whole (killed while written or removed)."""
    try:
        state = json.loads((Path(directory) / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state["step"] if all((Path(directory) / name).is_file() for name in CHECKPOINT_FILES) else None


def _start(config, run_dir, device, compile, resume, init_from):
    """The run's Trainer: resumed from its newest whole checkpoint (a kill during a checkpoint's swap leaves it
    beside checkpoint/), or started from an exported model, or fresh."""
    trainer = Trainer(config, run_dir, device, compile=compile)
    if resume and newest_complete(trainer.checkpoint_dir, checkpoint_step):
        trainer.load_checkpoint()
        print(f"resumed {run_dir} at step {trainer.step} ({trainer.train_seconds / 60:.1f} min trained so far)")
    elif resume:
        print(f"nothing to resume in {run_dir}; starting from scratch")
    if init_from and trainer.step == 0:
        # Continue a finished run whose resumable state was not kept (e.g. from another machine): weights
        # and EMA start from its exported model; optimizer, warm-up and step count start afresh.
        weights = load_file(Path(init_from) / "diffusion_pytorch_model.safetensors", device=str(trainer.device))
        trainer.model.load_state_dict(weights)
        trainer.ema.load_state_dict(weights)
        trainer.init_from = str(init_from)
        print(f"initialised {config['name']} from {init_from}")
    return trainer


def train(config, run_dir, device="cpu", max_steps=None, max_minutes=None, resume=False, export_dir=None,
          compile=False, sync_dir=None, log_every=None, checkpoint_minutes=10.0, sample_minutes=30.0,
          progress=True, init_from=None):
    """Train (or continue) a run until max_steps or max_minutes; checkpoint, sample and export on the way.

    Returns the Trainer. Writes to run_dir: checkpoint/ (resumable), log.jsonl, samples/step_N.png.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    if max_steps:
        # The learning-rate schedule decays towards the run's last step.
        config = prepare_config({**config, "train": {**config["train"], "max_steps": max_steps}})
    max_steps = config["train"]["max_steps"]
    trainer = _start(config, run_dir, device, compile, resume, init_from)
    log_every = log_every or (100 if trainer.cuda else 10)
    lockstep = Lockstep(sync_dir, config["name"], every=log_every, start_step=trainer.step) if sync_dir else None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    params, flops = model_cost(config["model"])
    print(f"{config['name']}: {params / 1e6:.2f}M parameters, {flops / 1e9:.3f} GFLOPs per image forward; "
          f"{device_name(trainer.device)}, batch {config['train']['batch_size']}")

    start = time.monotonic()
    last_checkpoint = last_sample = start
    seconds_before = trainer.train_seconds
    losses, branch_losses, interval_start, interval_step = [], [], start, trainer.step
    bar = tqdm(total=max_steps, initial=trainer.step, disable=not progress, dynamic_ncols=True, mininterval=5)

    def time_is_up():
        return max_minutes is not None and time.monotonic() - start >= max_minutes * 60

    stopped_by = "max_steps"
    # Ctrl-C or SIGTERM (kill PID) stop cleanly after the current step, with a checkpoint; a second one at once.
    with stop_signals() as signalled:
        while trainer.step < max_steps:
            if signalled:
                stopped_by = signalled[0]
                break
            if trainer.step % log_every == 0:
                if lockstep:
                    stop = lockstep.sync(trainer.step, time_is_up())
                    if stop is not None and trainer.step >= stop:
                        stopped_by = "time (shared stop step)"
                        break
                elif time_is_up():
                    stopped_by = "time"
                    break
            loss, per_branch = trainer.train_step()
            losses.append(loss)
            branch_losses.append(per_branch)
            if trainer.step % log_every == 0 or trainer.step == max_steps:
                now = time.monotonic()
                trainer.train_seconds = seconds_before + now - start
                steps_per_s = (trainer.step - interval_step) / max(now - interval_start, 1e-9)
                record = _log_record(trainer, losses, branch_losses, steps_per_s)
                with open(run_dir / "log.jsonl", "a") as log:
                    log.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", it_s=f"{steps_per_s:.2f}")
                bar.update(trainer.step - bar.n)
                if now - last_checkpoint >= checkpoint_minutes * 60:
                    trainer.save_checkpoint()
                    last_checkpoint = now
                if now - last_sample >= sample_minutes * 60:
                    save_png(class_grid(trainer.ema, trainer.scheduler()),
                             run_dir / "samples" / f"step_{trainer.step:07d}.png")
                    last_sample = time.monotonic()
                # Throughput counts training only, not checkpoints and sample grids.
                losses, branch_losses, interval_start, interval_step = [], [], time.monotonic(), trainer.step
    bar.close()
    if lockstep:
        lockstep.finish(trainer.step)
    trainer.train_seconds = seconds_before + time.monotonic() - start
    trainer.save_checkpoint()
    print(f"{config['name']}: stopped by {stopped_by} at step {trainer.step} after "
          f"{trainer.train_seconds / 60:.2f} min of training in total")
    if export_dir:
        print(f"exported EMA weights to {trainer.export(export_dir, stopped_by)}")
    return trainer


# ---------------------------------------------------------------------------------------------- the CLI


def add_cli_arguments(parser):
    parser.add_argument("--config", required=True, help="a config file or a name in dimr/lab/configs/ (tiny-dimr, tiny-baseline)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--max-minutes", type=float, help="stop this session after so many minutes of training")
    parser.add_argument("--max-steps", type=int, help="total steps to reach (default: the config's train.max_steps)")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size (e.g. smaller for CPU runs)")
    parser.add_argument("--num-images", type=int, help="override data.num_images (e.g. for smoke tests)")
    parser.add_argument("--lr", type=float, help="override train.lr")
    parser.add_argument("--warmup-steps", type=int, help="override train.warmup_steps")
    parser.add_argument("--decay-steps", type=int,
                        help="override train.decay_steps: decay the learning rate linearly to 0 over the last N steps")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint if it exists")
    parser.add_argument("--init-from", help="start from the weights of an exported model directory")
    parser.add_argument("--run-dir", help="where checkpoints, logs and sample grids go (default runs/NAME)")
    parser.add_argument("--export", help="export the EMA model here at the end (default RUN_DIR/model; 'none' to "
                                         "skip); the bundled models change only when it names dimr/checkpoints/NAME")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step (CUDA; falls back to eager)")
    parser.add_argument("--sync-dir", help="keep in lockstep with other runs using the same directory (shared GPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, help="steps between log lines (default 100 on CUDA, 10 on CPU)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0, help="minutes between checkpoints")
    parser.add_argument("--sample-minutes", type=float, default=30.0, help="minutes between sample grids")
    parser.add_argument("--cost", action="store_true", help="print parameters and forward FLOPs, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cli_main(args):
    config = load_config(args.config)
    if args.cost:
        params, flops = model_cost(config["model"])
        print(f"{config['name']}: {params:,} parameters, {flops:,} FLOPs per {config['model']['channels']}x32x32 forward")
        return 0
    for section, field, value in (("train", "batch_size", args.batch_size), ("data", "num_images", args.num_images),
                                  ("train", "lr", args.lr), ("train", "warmup_steps", args.warmup_steps),
                                  ("train", "decay_steps", args.decay_steps), ("train", "max_steps", args.max_steps)):
        if value is not None:
            config[section][field] = value
    config = prepare_config(config)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_dir = Path(args.run_dir or RUNS_DIR / config["name"])
    export = args.export or str(run_dir / "model")
    train(config, run_dir, device=device, max_steps=args.max_steps,
          max_minutes=args.max_minutes, resume=args.resume, export_dir=None if export == "none" else export,
          compile=args.compile, sync_dir=args.sync_dir, log_every=args.log_every,
          checkpoint_minutes=args.checkpoint_minutes, sample_minutes=args.sample_minutes,
          progress=not args.no_progress, init_from=args.init_from)
    return 0
