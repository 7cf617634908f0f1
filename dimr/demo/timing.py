"""How long a request holds the device, estimated before it samples, from measured rates.

    rates = device_rates(pipe, "DiMR-XL/2R")    # committed GPU measurements, else a short measurement here (kept)
    rates.seconds(images=4, evaluations=25, guided=True, decodes=4)
    request_seconds(request, pipe, rates, 40)   # a demo request: its evaluations, guidance batch and decodes
    check_time(request, seconds_of, rates, "this server's cpu")   # Refused over the limit: estimate, what fits

Rates are seconds per network evaluation by network batch (a guided run evaluates the conditional and the
unconditional half at once: twice the images) and seconds per decoded image by decoder batch, interpolated
linearly between measured batches and extended with the last measured slope. They come from:
- a committed benchmark result (benchmarks/results/<device>.json, written by benchmarks/sampling.py) when it measured
  this model on this kind of GPU: each batch's median run less its decode, over the run's model evaluations;
- else a short measurement of the pipeline on this device (a few steps at two batches, kept per model and device),
  made where the model loads (dimr.demo.serving), so on a CPU at start-up for the default model.
A sampler's evaluations are its scheduler's timesteps: Heun evaluates twice per step but the last, 2N - 1 for N steps.
The operator's limit is DIMR_MAX_REQUEST_SECONDS (default 120).
"""

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dimr.demo.limits import MAX_IMAGES
from dimr.demo.refusals import Refused
from dimr.sampling import caches
from dimr.sampling.loading import BUNDLED
from dimr.sampling.pipeline import VAE_BATCH_SIZE, model_evaluations

# Committed measurements live beside the benchmark that makes them; DIMR_BENCHMARK_RESULTS points elsewhere (an
# installed package has no benchmarks/ folder: it measures on its device instead).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
DEFAULT_MAX_REQUEST_SECONDS = 120
MEASURE_SECONDS = 0.25  # per call timed: a fast model's call is repeated until this much time has passed
MEASURE_REPEATS = 3
SLOW_CALL_SECONDS = 2.0


def results_dir():
    return Path(os.environ.get("DIMR_BENCHMARK_RESULTS") or RESULTS_DIR)


def max_request_seconds():
    """DIMR_MAX_REQUEST_SECONDS: the longest a request may hold the device, in seconds."""
    value = os.environ.get("DIMR_MAX_REQUEST_SECONDS") or DEFAULT_MAX_REQUEST_SECONDS
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"DIMR_MAX_REQUEST_SECONDS={value!r} must be a number of seconds") from None


def interpolated(points, x):
    """points {x: y} read at x: linear between neighbours, the nearest two's line beyond them, never below 0."""
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]]
    i = min(max(int(np.searchsorted(xs, x)), 1), len(xs) - 1)
    (x0, y0), (x1, y1) = (xs[i - 1], points[xs[i - 1]]), (xs[i], points[xs[i]])
    return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)


@dataclass(frozen=True)
class Rates:
    """Measured speeds of one model on one device."""

    evaluation: dict  # network batch -> seconds per network evaluation
    decode: dict  # images decoded at once -> seconds per decoded image ({} for a model without a VAE)
    source: str  # where they come from, for messages

    def seconds(self, images, evaluations, guided, decodes):
        """Seconds of `evaluations` network evaluations of `images` images (twice the batch when guided), plus
        `decodes` images decoded VAE_BATCH_SIZE at a time."""
        network = evaluations * interpolated(self.evaluation, images * (2 if guided else 1))
        decode = decodes * interpolated(self.decode, min(images, VAE_BATCH_SIZE)) if self.decode else 0.0
        return network + decode


def committed_rates(path, mode, model=None):
    """Rates from a committed benchmarks/sampling.py result: the `mode` runs ("ours": fast, "ours_bf16_eager": bf16),
    for its model (None when it measured another one)."""
    report = json.loads(Path(path).read_text())
    settings = report["settings"]
    if model is not None and settings["model"] != model:
        return None
    batches = {int(b): run for b, run in report[mode].items() if b.isdigit()}
    guided = settings["guidance_scale"] != 1
    count = model_evaluations(settings["sampler"], settings["steps"])
    return Rates(evaluation={b * (2 if guided else 1): (run["median_s"] - run["decode_s"]) / count
                             for b, run in batches.items()},
                 decode={b: run["decode_s"] / b for b, run in batches.items()},
                 source=f"measured on an {report['device']['name']} ({Path(path).name})")


def measured_model(path):
    """The model a committed benchmarks/sampling.py result measured."""
    return json.loads(Path(path).read_text())["settings"]["model"]


def forward_flops(module, call):
    """FLOPs of call(module's architecture), counted on the meta device (no weights touched, no compute); kept in
    dimr.sampling.caches per architecture."""
    from torch.utils.flop_counter import FlopCounterMode

    def count():
        with torch.device("meta"):
            twin = type(module).from_config(module.config)
            with FlopCounterMode(display=False) as counter:
                call(twin)
        return counter.get_total_flops()

    return caches.remembered(("flops", type(module).__name__, str(dict(module.config))), count)


def device_rates(pipe, model, mode="fast"):
    """This device's rates for a loaded pipeline: a committed measurement of this model on this GPU, else measured
    here once (kept in dimr.sampling.caches)."""
    device = pipe.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower().replace(" ", "-")
        path = results_dir() / f"{name}.json"
        rates = committed_rates(path, "ours" if mode == "fast" else "ours_bf16_eager", model) if path.is_file() \
            else None
        if rates is not None:
            return rates
    return caches.remembered(("rates", model, str(device), str(pipe.model.dtype)), lambda: pipeline_rates(pipe))


def _timed(call):
    """The fastest of at least MEASURE_REPEATS calls of call() (the first warms up), repeated until MEASURE_SECONDS
    have passed: the work's own cost, without what other work on a shared machine adds now and then."""
    times, start = [], time.perf_counter()
    while len(times) < MEASURE_REPEATS or time.perf_counter() - start < MEASURE_SECONDS:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
        if times[-1] > SLOW_CALL_SECONDS:
            break  # a large model: its call is long enough to time once
    return min(times)


@torch.inference_mode()
def measured_rates(run, decode=None, where="this device"):
    """A short measurement: run(batch, evaluations) (that many network evaluations of that batch, as a run makes
    them) and decode(batch) (that many latents decoded; None without a VAE). Per evaluation: the difference of a long
    and a short run (a run's fixed work is not per evaluation), at batch 1 and at the largest network batch a request
    makes when that is quick to run (a small model's time grows unevenly with the batch), else at batch 2."""
    def evaluation(batch):
        short = _timed(lambda: run(batch, 1))
        long = 8 if short < MEASURE_SECONDS / 4 else 2  # a fast run's difference needs more evaluations to show
        return max(_timed(lambda: run(batch, long)) - short, 0.0) / (long - 1)

    one = evaluation(1)
    batches = (1, 2 * MAX_IMAGES) if one < MEASURE_SECONDS / 4 else (1, 2)
    return Rates(evaluation={1: one, batches[1]: evaluation(batches[1])},
                 decode={b: _timed(lambda b=b: decode(b)) / b for b in (1, 2)} if decode else {},
                 source=f"measured on {where}")


def pipeline_rates(pipe):
    """measured_rates of a DiMRPipeline: unguided steps with their branch trace (as the demo samples), its VAE."""
    pipe.set_progress_bar_config(disable=True)

    def run(batch, steps):
        pipe([0] * batch, guidance_scale=1.0, num_inference_steps=steps, output_type="latent", return_branches=True,
             branch_steps=[])

    def decode(batch):
        pipe.decode(torch.zeros((batch, *pipe.latent_shape), device=pipe.device), "np")

    return measured_rates(run, decode if pipe.vae is not None else None, f"this {pipe.device.type}")


def request_seconds(request, pipe, rates, panel_decodes):
    """A demo request's estimated seconds on the device: its sampler's evaluations at its network batch, and its
    decodes (`panel_decodes` per image for the branch panel, then the final image)."""
    images = len(request.labels)
    count = model_evaluations(request.sampler, request.num_inference_steps)
    decodes = images * (panel_decodes + 1) if pipe.vae is not None else 0
    return rates.seconds(images, count, request.guidance_scale != 1, decodes)


def check_time(request, seconds_of, rates, where):
    """The request's estimated seconds (seconds_of(request)); Refused when that is over max_request_seconds(), with
    the estimate and what would fit: fewer steps, images per class or classes, or a bundled tiny model."""
    limit, estimate = max_request_seconds(), seconds_of(request)
    if estimate <= limit:
        return estimate

    def largest(name, values, change):
        fit = next((v for v in values if seconds_of(replace(request, **change(v))) <= limit), None)
        return None if fit is None else f"{fit} {name}"

    fits = [largest("steps", range(request.num_inference_steps - 1, 0, -1), lambda v: dict(num_inference_steps=v)),
            largest("images per class", range(request.images_per_class - 1, 0, -1),
                    lambda v: dict(images_per_class=v)),
            largest("classes", range(len(request.class_ids) - 1, 0, -1),
                    lambda v: dict(class_ids=request.class_ids[:v]))]
    fits = [fit for fit in fits if fit] + ([] if request.model in BUNDLED else [f"the bundled {' or '.join(BUNDLED)}"])
    raise Refused(f"This request would hold {where} for {wait_note(estimate)} (from speeds {rates.source}); this "
                  f"server runs requests of at most {limit:g} s. What fits, the rest unchanged: "
                  f"{'; or '.join(fits)}.")


def wait_note(seconds):
    """'about 12 minutes' / 'about 40 seconds'."""
    return f"about {seconds / 60:.0f} minutes" if seconds >= 90 else f"about {max(seconds, 1):.0f} seconds"
