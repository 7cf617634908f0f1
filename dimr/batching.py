"""Shared sampling runs: demo requests that wait together for the device sample together, in one pipeline call.

    batcher = Batcher(load=lambda request: pipeline, branch_steps=lambda pipe, steps: [step indices])
    job = batcher.submit(request)                 # a dimr.request.Request; returns at once
    while not job.finished.wait(0.4):
        preview = job.take_preview()              # (0-based step, this request's clean estimate [B, H, W, 3]) or None
    out, seconds = job.result()                   # this request's own DiMRPipelineOutput (np images, branch trace)

One worker thread samples. When the device is free it takes the oldest waiting request and every other waiting
request with the same `share_key` (model, steps, sampler, guidance schedule and power), up to RUN_IMAGES distinct
images, and samples them in one call: the pipeline's per-sample guidance gives each request its own guidance scale,
and each request's noise is drawn from its own seed exactly as a run of that request alone draws it, so a request
gets the images it would get alone (up to float rounding of a larger batch); equal requests are sampled once.
Each request still gets its own previews, branch panel and result, and may stop on its own: a run stops early
only when all of its requests have stopped.

Background tasks (`batcher.background(fn)`, e.g. warming up compiled shapes at start-up) run only while no
request waits, one at a time, so a request waits for at most one of them.
"""

import functools
import logging
import os
import threading
import time

import torch
from diffusers.utils.torch_utils import randn_tensor

from .acceleration import FastNetwork
from .limits import MAX_IMAGES
from .pipeline import BranchTrace, DiMRPipelineOutput

logger = logging.getLogger(__name__)

# A shared run holds no more images than the largest single request, so it needs no more GPU memory than one
# request can. Larger runs would not be faster on a CPU either: their activations outgrow the CPU's caches.
RUN_IMAGES = MAX_IMAGES
_PREVIEW_DECODE = threading.Lock()


def share_key(request):
    """Requests with equal keys can share a run: the pipeline takes these once per call."""
    return (request.model, request.num_inference_steps, request.sampler, request.guidance_schedule,
            request.guidance_power)


class Stopped(RuntimeError):
    def __init__(self):
        super().__init__("sampling was stopped before the last step")


class Job:
    """One request inside the batcher: its previews while sampling, then its result (or error)."""

    def __init__(self, request, stop, latents=None):
        self.request = request
        self.stop = stop  # set by the requester to leave; the job then finishes with Stopped
        self.latents = latents  # given initial noise instead of the seed's; such a job samples alone
        self.finished = threading.Event()
        self.pipe = None  # the pipeline of its run, set before the first preview
        self._preview = None
        self._outcome = None

    @property
    def size(self):
        return len(self.request.labels)

    def take_preview(self):
        """The newest (0-based step, clean estimate decoded: [B, H, W, 3] in 0..1) since the last call, or None.

        Decoded here, on the requester's thread, one requester at a time: many requesters decoding at once would
        each hold a VAE batch's activations on the GPU."""
        preview, self._preview = self._preview, None
        if preview is None:
            return None
        with _PREVIEW_DECODE:
            return preview[0], self.pipe.decode(preview[1], "np")

    def result(self):
        """(DiMRPipelineOutput of this request, seconds of its run); raises the run's error or Stopped."""
        self.finished.wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def _finish(self, outcome):
        if not self.finished.is_set():
            self._outcome = outcome
            self.finished.set()


class Batcher:
    """Samples submitted requests on one worker thread, sharing runs between compatible requests (module docstring).

    load(request) -> the DiMRPipeline for the request's model and sampler (called on the worker thread);
    branch_steps(pipe, num_inference_steps) -> the step indices whose branch images the requests get.
    """

    def __init__(self, load, branch_steps):
        self._load = load
        self._branch_steps = branch_steps
        self._changed = threading.Condition()
        self._waiting = []
        self._background = []
        self._worker_pid = None

    def submit(self, request, stop=None, latents=None):
        """Queue a request (a checked dimr.request.Request), optionally with its own initial noise; returns its Job."""
        job = Job(request, stop or threading.Event(), latents)
        with self._changed:
            self._waiting.append(job)
            self._start_worker()
            self._changed.notify()
        return job

    def background(self, task):
        """Run task() on the worker thread when no request waits (its errors are logged by the thread, not raised)."""
        with self._changed:
            self._background.append(task)
            self._start_worker()
            self._changed.notify()

    def _start_worker(self):
        # One long-lived thread per process: the device serves one run at a time anyway, and a fresh thread per run
        # would leave each its own allocator arena (resident memory that grows with requests). A forked process
        # (ZeroGPU runs requests in one) has no threads of its parent, so it starts its own.
        if self._worker_pid != os.getpid():
            self._worker_pid = os.getpid()
            threading.Thread(target=self._work, name="dimr-sampling", daemon=True).start()

    def _work(self):
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._background)
                first = self._waiting[0] if self._waiting else None
                task = None if first else self._background.pop(0)
            if task is not None:
                try:
                    task()
                except Exception:  # noqa: BLE001 - a failed background task must not end the worker
                    logger.exception("background task %r failed", task)
                continue
            jobs = [first]
            try:
                pipe = self._load(first.request)
                with self._changed:
                    jobs = self._take_run(first, RUN_IMAGES)
                self._run(pipe, jobs)
            except BaseException as err:  # noqa: BLE001 - handed to the requesters, who re-raise it
                with self._changed:
                    if first in self._waiting:
                        self._waiting.remove(first)
                for job in jobs:
                    job._finish(err)

    def _take_run(self, first, capacity):
        """Remove from the queue and return the oldest waiting jobs that can share a run with `first`."""
        jobs, images = [], 0
        for job in list(self._waiting):
            new_images = 0 if any(job.request == other.request for other in jobs) else job.size
            alone = job.latents is not None or first.latents is not None
            # The first job always runs, alone when it is larger than a run (a Compare request of 40 shapes).
            if (share_key(job.request) != share_key(first.request) or (jobs and images + new_images > capacity)
                    or (alone and job is not first)):
                continue
            self._waiting.remove(job)
            if job.stop.is_set():
                job._finish(Stopped())
                continue
            jobs.append(job)
            images += new_images
        return jobs

    def _run(self, pipe, jobs):
        request = jobs[0].request
        dev, steps = pipe.device, request.num_inference_steps
        pipe.set_progress_bar_config(disable=True)
        # Equal requests get equal images: each distinct one is sampled once (a class pressing Generate with the
        # same settings costs one request).
        distinct = list(dict.fromkeys(job.request for job in jobs))
        where, start = {}, 0
        for r in distinct:
            where[r] = (start, start + len(r.labels))
            start += len(r.labels)
        spans = [where[job.request] for job in jobs]
        for job in jobs:
            job.pipe = pipe
        # Each request's noise as a run of it alone draws it: the pipeline's own randn_tensor with its seed.
        latents = jobs[0].latents if jobs[0].latents is not None else torch.cat([
            randn_tensor((len(r.labels), *pipe.latent_shape), device=dev, dtype=torch.float32,
                         generator=torch.Generator(dev).manual_seed(r.seed)) for r in distinct])
        scales = [r.guidance_scale for r in distinct for _ in r.labels]
        # One scale for all keeps the pipeline's scalar path (and its skip of the uncond half when it is 1).
        guidance = scales[0] if len(set(scales)) == 1 else torch.tensor(scales)

        def on_step(pipeline, i, t, tensors):
            estimate = tensors["branch_x0_pred"][-1]
            for job, (a, b) in zip(jobs, spans):
                if job.stop.is_set():
                    job._finish(Stopped())
                elif not job.finished.is_set():
                    job._preview = (i, estimate[a:b])
            if all(job.finished.is_set() for job in jobs):
                pipeline.stop()
            return {}

        began = time.perf_counter()
        out = pipe([c for r in distinct for c in r.labels], guidance_scale=guidance,
                   guidance_schedule=request.guidance_schedule, guidance_power=request.guidance_power,
                   num_inference_steps=steps, latents=latents, output_type="np", return_branches=True,
                   branch_steps=self._branch_steps(pipe, steps), callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["branch_x0_pred"])
        seconds = time.perf_counter() - began
        for job, (a, b) in zip(jobs, spans):
            job._finish((part_of(out, a, b), seconds))

    def warm_up(self, load):
        """In the background: load = a function returning the pipeline to serve; it is called (so the weights load
        before the first request), and if its network is compiled (dimr.acceleration's "fast" mode) every input
        shape a run can give it is run once (`warm_up_batches`), so that no request waits for compilation."""
        def start():
            pipe = load()
            if isinstance(pipe.network, FastNetwork):
                for images, guided in warm_up_batches():
                    self.background(functools.partial(run_shape, load, images, guided))

        self.background(start)


def warm_up_batches():
    """(images, guided) for every network input a run can make: 2 x images samples with guidance, images without,
    for 1..RUN_IMAGES images; the demo's usual sizes first (4 showcase classes, 1 image), each network batch once."""
    usual = [4, 1, 2, 8, 16]
    seen, batches = set(), []
    for guided in (True, False):
        for images in usual + [n for n in range(1, RUN_IMAGES + 1) if n not in usual]:
            if images * (2 if guided else 1) not in seen:
                seen.add(images * (2 if guided else 1))
                batches.append((images, guided))
    return batches


def run_shape(load, images, guided):
    """One sampling step of `images` samples (with or without guidance), as a run makes it, output not decoded."""
    pipe = load()
    pipe.set_progress_bar_config(disable=True)
    pipe([0] * images, guidance_scale=2.0 if guided else 1.0, num_inference_steps=1, output_type="latent")


def part_of(out, start, stop):
    """Samples start..stop-1 of a pipeline output (np images, with its branch trace)."""
    trace = out.branches
    part = BranchTrace(timesteps=trace.timesteps, scales=trace.scales,
                       noise_pred=[x[:, start:stop] for x in trace.noise_pred],
                       x0_pred=[x[:, start:stop] for x in trace.x0_pred], image_steps=trace.image_steps,
                       images=[[images[start:stop] for images in step] for step in trace.images])
    return DiMRPipelineOutput(images=out.images[start:stop], branches=part)

