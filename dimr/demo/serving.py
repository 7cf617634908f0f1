"""Serving the demo: where it samples (DIMR_DEVICE, DIMR_ACCELERATION), the one sampling queue that requests share
(dimr.demo.batching), and what the server does when it starts. Nothing here runs at import.

    start(default_model())                  # at server start-up: CPU threads, then the default model's weights
    for update in stream(request):          # Progress(step, total, preview) while sampling, then a Generation
        ...
    for update in run_task(task):           # other work on the device, in turn with the requests: step numbers,
        ...                                 # then task's result
    describe(generation)                    # the status line: what ran, where, how long
"""

import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from dimr.demo.batching import Batcher
from dimr.demo.catalogue import is_pixel_space, model_description
from dimr.demo.limits import MAX_IMAGES, MAX_STEPS
from dimr.demo.panel import enlarge, generation_from, panel_steps, to_uint8
from dimr.demo.refusals import Refused
from dimr.network.acceleration import accelerate_pipeline, default_mode, mode_dtype
from dimr.network.weights import CheckpointError
from dimr.sampling.loading import BUNDLED, default_device, load_pipeline
from dimr.sampling.pipeline import DEFAULT_SAMPLER

PREVIEW_INTERVAL_S = 0.4

_batcher = None
_batcher_lock = threading.Lock()


def device():
    """DIMR_DEVICE (e.g. cpu, cuda, cuda:1), else a GPU when there is one."""
    return torch.device(os.environ.get("DIMR_DEVICE") or default_device())


def zero_gpu():
    """True on a Hugging Face ZeroGPU Space, where a GPU is lent to each request (dimr.demo.zero_gpu prices it)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def acceleration_mode():
    """DIMR_ACCELERATION (none, bf16 or fast; see dimr.network.acceleration), else the fastest mode for the platform:
    "fast" on GPUs (`start` compiles every batch shape in the background), "bf16" under ZeroGPU (a GPU lent per
    request: compilation would be paid inside visitors' requests), float32 on CPUs."""
    return os.environ.get("DIMR_ACCELERATION") or ("bf16" if zero_gpu() else default_mode(device()))


class ModelUnavailable(Refused):
    """A model cannot be loaded on this server; the message says so to a visitor, then what the operator must do."""


def unavailable(missing):
    """A ModelUnavailable for models this server lacks and cannot download now; missing: {what: how to install it}
    (dimr.sampling.loading.missing_parts), each named with what the operator must do."""
    one = len(missing) == 1
    return ModelUnavailable(f"{listed(missing)} {'is' if one else 'are'} not installed on this server, and it cannot "
                            f"download {'it' if one else 'them'} now (the Hugging Face hub cannot be reached, or "
                            f"HF_HUB_OFFLINE is set); {listed(BUNDLED)} work meanwhile. What the operator of this demo "
                            f"must do:\n{how_list(missing)}")


def how_list(missing):
    """'- what: how' per line, for {what: how to install it}."""
    return "\n".join(f"- {what}: {how}" for what, how in missing.items())


def listed(names):
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def load(model_name, sampler=DEFAULT_SAMPLER):
    """The pipeline for a model on the demo's device (networks are loaded once and kept in dimr.sampling.caches)."""
    mode = acceleration_mode()
    try:
        pipe = load_pipeline(model_name, device=device(), torch_dtype=mode_dtype(mode), sampler=sampler)
    except CheckpointError as err:
        raise ModelUnavailable(f"{model_name} is not available on this server right now (its weights are not "
                               f"installed here); {listed(BUNDLED)} work meanwhile. What the operator of this demo "
                               f"must do: {err}") from err
    return accelerate_pipeline(pipe, mode)


def batcher():
    """The process's one sampling queue, made on first use; its worker thread starts with the first job."""
    global _batcher
    with _batcher_lock:
        if _batcher is None:
            _batcher = Batcher(load=lambda request: load(request.model, request.sampler), branch_steps=panel_steps,
                               finish=generation_from)
        return _batcher


def start(model_name):
    """At server start-up (never at import or in a request): the process's CPU threads, then the model's weights.

    A pixel-space model on a CPU samples with one thread: its operations are too small to split, and on a busy CPU
    a thread pool waits for its slowest thread at every operation. Under ZeroGPU the weights are placed on the GPU
    now, outside any request; elsewhere they load in the background (and a "fast" model compiles its batch shapes,
    dimr.demo.batching.Batcher.warm_up) while the app already answers; requests that arrive meanwhile go first."""
    torch.set_num_threads(cpu_threads(model_name))
    if zero_gpu():
        load(model_name)
    else:
        batcher().warm_up(lambda: load(model_name))


def cpu_threads(model_name):
    """The CPU threads the server samples a default model with (`start`): one for a pixel-space model on a CPU,
    else torch's choice."""
    return 1 if device().type == "cpu" and is_pixel_space(model_name) else torch.get_num_threads()


@dataclass
class Progress:
    """Sampling is at `step` of `total`; `preview`: the full-resolution clean estimate so far, [B, H, W, 3] uint8."""

    step: int
    total: int
    preview: np.ndarray
    captions: list  # one per image

    def gallery(self):
        """The preview as [(PIL image, 'ring · step 3/25')], enlarged like the final images."""
        return [(enlarge(image), f"{caption} · step {self.step}/{self.total}")
                for image, caption in zip(self.preview, self.captions)]


def stream(request, stop=None, latents=None):
    """Sample a request (dimr.demo.request.Request): yields Progress about every PREVIEW_INTERVAL_S, then the Generation
    (dimr.demo.panel).

    latents: the initial noise [B, C, H, W] instead of noise drawn from the request's seed (dimr.demo.imagenet_compare
    gives the same tensor to DiMR and DiT); such a request samples alone.

    Requests waiting at the same time share sampling runs (dimr.demo.batching); this one gets its own previews and
    result (the Generation is shared with equal requests of the same run: treat it as read-only). Setting the
    `stop` event (or closing this generator, as Gradio does when the browser goes away) ends this request after the
    current step."""
    job = batcher().submit(request, stop, latents)
    try:
        for step, preview in _while_running(job):
            yield Progress(step + 1, request.num_inference_steps, to_uint8(preview), request.captions)
    finally:
        job.stop.set()
    yield job.result()


def run_task(task, stop=None):
    """Run task(progress) on the sampling worker, in turn with the requests (dimr.demo.batching.Batcher.submit_task):
    yields the number of steps done (1, 2, ...) about every PREVIEW_INTERVAL_S, then task's result. Setting `stop`
    (or closing this generator) ends the task at its next progress() call."""
    job = batcher().submit_task(task, stop)
    try:
        for step, _ in _while_running(job):
            yield step + 1
    finally:
        job.stop.set()
    yield job.result()


def _while_running(job):
    """A batcher job's newest (0-based step, preview) about every PREVIEW_INTERVAL_S, until it finishes."""
    while not job.finished.wait(PREVIEW_INTERVAL_S):
        update = job.take_preview()
        if update is not None:
            yield update


def model_note(model_name):
    """One line about a model for the picker: what it is, the device, the demo's limits."""
    return (f"{model_description(model_name)}. Device: {device()}; at most {MAX_IMAGES} images and {MAX_STEPS} steps "
            "per request.")


def describe(generation):
    """One line for the status box: what ran, where, and how long it took."""
    r = generation.request
    guidance = f"guidance {r.guidance_scale:g} ({r.guidance_schedule}" + (
        f", power {r.guidance_power:g})" if r.guidance_schedule == "power-cosine" else ")")
    return (f"{r.model}: {len(generation.captions)} images, {r.num_inference_steps} steps of {r.sampler}, {guidance}, "
            f"seed {r.seed}, {generation.seconds:.1f} s on {device()}")
