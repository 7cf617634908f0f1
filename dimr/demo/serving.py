"""Serving the demo: where it samples (DIMR_DEVICE, DIMR_ACCELERATION), the one sampling queue that requests share
(dimr.demo.batching), and what the server does when it starts. Nothing here runs at import.

    start(default_model())                  # at server start-up: CPU threads, then the default model's weights
    for update in stream(request):          # Loading(model, seconds) while its model loads, Progress(step, total,
        ...                                 # preview) while sampling, then a Generation
    reported(stream(request), model, progress)   # the same, telling a progress callable about them
    for update in run_task(task):           # other work on the device, in turn with the requests: step numbers,
        ...                                 # then task's result
    describe(generation)                    # the status line: what ran, where, how long
"""

import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from dimr.demo import timing
from dimr.demo.batching import Batcher, Stopped
from dimr.demo.catalogue import is_pixel_space, model_description
from dimr.demo.limits import MAX_IMAGES, MAX_STEPS
from dimr.demo.panel import enlarge, generation_from, panel_steps, to_uint8
from dimr.demo.loads import Loads
from dimr.demo.refusals import Refused
from dimr.network.acceleration import accelerate_pipeline, default_mode, mode_dtype
from dimr.network.weights import CheckpointError
from dimr.sampling.loading import BUNDLED, default_device, load_pipeline
from dimr.sampling.pipeline import DEFAULT_SAMPLER

PREVIEW_INTERVAL_S = 0.4

_batcher = None
_loads = None
_lock = threading.Lock()


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
    """A model cannot be loaded on this server. The message is for a visitor: what is missing and what works instead,
    no command and no path of this machine; `operator` says what the operator must do (the server's log)."""

    def __init__(self, message, operator):
        super().__init__(message)
        self.operator = operator


def how_list(missing):
    """'- what: how' per line, for {what: how to install it}."""
    return "\n".join(f"- {what}: {how}" for what, how in missing.items())


def counted(number, noun):
    """'1 step', '25 steps'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


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
        raise ModelUnavailable(f"{model_name} is not available on this server right now; {listed(BUNDLED)} work "
                               f"meanwhile.", str(err)) from err
    return accelerate_pipeline(pipe, mode)


def batcher():
    """The process's one sampling queue, made on first use; its worker thread starts with the first job."""
    global _batcher
    with _lock:
        if _batcher is None:
            _batcher = Batcher(load=lambda request: load(request.model, request.sampler), branch_steps=panel_steps,
                               finish=generation_from)
        return _batcher


def loads():
    """The process's model loads (dimr.demo.loads), by (model, device, acceleration mode): the weights, then this
    device's speeds for the model (dimr.demo.timing)."""
    global _loads
    with _lock:
        if _loads is None:
            _loads = Loads(load=lambda key: prepare(key[0]))
        return _loads


def prepare(model_name):
    """Load a model and know its speed on this device; run by dimr.demo.loads, off the sampling thread."""
    timing.device_rates(load(model_name), model_name, acceleration_mode())


def start(model_name):
    """At server start-up (never at import or in a request): the process's CPU threads, then the model's weights.

    A pixel-space model on a CPU samples with one thread: its operations are too small to split, and on a busy CPU
    a thread pool waits for its slowest thread at every operation. Under ZeroGPU the weights are placed on the GPU
    now, outside any request; elsewhere they load on a thread of their own (dimr.demo.loads) while the app already
    answers, and then a "fast" model compiles its batch shapes (dimr.demo.batching.Batcher.warm_up) on the sampling
    thread when no request waits."""
    torch.set_num_threads(cpu_threads(model_name))
    if zero_gpu():
        load(model_name)
        return
    current = loads().start(load_key(model_name))
    if current is not None:
        threading.Thread(target=_warm_up_after, args=(current, model_name), name="dimr-warm-up", daemon=True).start()


def _warm_up_after(current, model_name):
    current.finished.wait()
    if current.finished.is_set() and not current.failed:
        batcher().warm_up(lambda: load(model_name))


def load_key(model_name):
    return model_name, str(device()), acceleration_mode()


def cpu_threads(model_name):
    """The CPU threads the server samples a default model with (`start`): one for a pixel-space model on a CPU,
    else torch's choice."""
    return 1 if device().type == "cpu" and is_pixel_space(model_name) else torch.get_num_threads()


@dataclass
class Loading:
    """The request's model has been loading for `seconds` (the first use of a released model downloads it)."""

    model: str
    seconds: float

    def describe(self):
        return f"Loading {self.model} (the first use of a released model downloads it): {self.seconds:.0f} s"


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
    """Sample a request (dimr.demo.request.Request): yields Loading while its model loads, Progress while it samples
    (each about every PREVIEW_INTERVAL_S), then the Generation (dimr.demo.panel). Refused before sampling when it
    would take longer than the operator allows (`check_time`).

    latents: the initial noise [B, C, H, W] instead of noise drawn from the request's seed (dimr.demo.imagenet_compare
    gives the same tensor to DiMR and DiT); such a request samples alone.

    Requests waiting at the same time share sampling runs (dimr.demo.batching); this one gets its own previews and
    result (the Generation is shared with equal requests of the same run: treat it as read-only). Setting the
    `stop` event (or closing this generator, as Gradio does when the browser goes away) ends this request after the
    current step."""
    current = loads().start(load_key(request.model))
    if current is not None:  # loading off the sampling thread (dimr.demo.loads), which serves other models meanwhile
        yield Loading(request.model, current.seconds())
        while not current.finished.wait(PREVIEW_INTERVAL_S):
            if stop is not None and stop.is_set():
                raise Stopped()
            yield Loading(request.model, current.seconds())
        current.result()
    check_time(request)
    job = batcher().submit(request, stop, latents)
    try:
        for step, preview in _while_running(job):
            yield Progress(step + 1, request.num_inference_steps, to_uint8(preview), request.captions)
    finally:
        _leave_unless_finished(job)
    yield job.result()


def check_time(request, pipe=None, seconds_of=None):
    """The request's estimated seconds on this device (dimr.demo.timing); Refused over the operator's limit.
    seconds_of(request) may add other work to the estimate (DiT's, for the ImageNet comparison)."""
    pipe = pipe or load(request.model, request.sampler)
    rates = timing.device_rates(pipe, request.model, acceleration_mode())

    def seconds(r):
        panel = len(panel_steps(pipe, r.num_inference_steps)) * len(pipe.model.branch_scales)
        return timing.request_seconds(r, pipe, rates, panel) + (seconds_of(r) if seconds_of else 0)

    return timing.check_time(request, seconds, rates, where=f"this server's {device()}")


def reported(updates, model, progress):
    """`updates` of `stream`, passed on, telling `progress` (a callable like Gradio's Progress) what happens: Loading
    only while the model loads (the first use of a released model downloads it), then the steps."""
    for update in updates:
        if isinstance(update, Loading):
            progress(0, desc=update.describe())
        elif isinstance(update, Progress):
            progress((update.step, update.total), desc=f"Sampling with {model}", unit="steps")
        yield update


def run_task(task, stop=None):
    """Run task(progress) on the sampling worker, in turn with the requests (dimr.demo.batching.Batcher.submit_task):
    yields the number of steps done (1, 2, ...) about every PREVIEW_INTERVAL_S, then task's result. Setting `stop`
    (or closing this generator) ends the task at its next progress() call."""
    job = batcher().submit_task(task, stop)
    try:
        for step, _ in _while_running(job):
            yield step + 1
    finally:
        _leave_unless_finished(job)
    yield job.result()


def _leave_unless_finished(job):
    """A generator closed before its job finished (the browser went away) ends the job. A finished one leaves `stop`
    alone: it may be the caller's, which a later phase (DiT after DiMR in a comparison) still watches."""
    if not job.finished.is_set():
        job.stop.set()


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
    return (f"{r.model}: {len(generation.captions)} images, {counted(r.num_inference_steps, 'step')} of {r.sampler}, "
            f"{guidance}, seed {r.seed}, {generation.seconds:.1f} s on {device()}")
