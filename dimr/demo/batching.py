"""Shared sampling runs: demo requests that wait together for the device sample together, in one pipeline call.

    batcher = Batcher(load=lambda request: pipeline, branch_steps=lambda pipe, steps: [step indices],
                      finish=lambda pipe, request, output, seconds: result)
    job = batcher.submit(request)                 # a dimr.demo.request.Request; returns at once
    while not job.finished.wait(0.4):
        preview = job.take_preview()              # (0-based step, this request's clean estimate [B, H, W, 3]) or None
    result = job.result()                         # finish(...) of this request's own output (np images, branch trace)

    job = batcher.submit_task(task)               # task(progress) runs on the worker thread, in turn with requests

One worker thread samples. When the device is free it takes the oldest waiting request and every other waiting
request with the same `share_key` (model, steps, sampler, guidance schedule and power), up to RUN_IMAGES distinct
images, and samples them in one call: the pipeline's per-sample guidance gives each request its own guidance scale,
and each request's noise is drawn from its own seed exactly as a run of that request alone draws it, so a request
gets the images it would get alone (up to float rounding of a larger batch); equal requests are sampled once, and a
request equal to one being sampled joins that run (from its next step on) instead of waiting for another.
Work that the requests of a run share is done once: a step's preview is decoded once for the whole run, by the
first requester that asks for it, and `finish` (which turns an output into what requesters get) runs once per
distinct request. Each request still gets its own previews and result, and may stop on its own: a run stops early
only when all of its requests have stopped, and a request stopped before its turn costs nothing.

Other work on the device (`submit_task`: DiT's sampling for the ImageNet comparison) runs on the same worker
thread, alone, in turn with the requests. Background tasks (`batcher.background(fn)`, e.g. warming up compiled
shapes at start-up) run only while nothing waits, one at a time, so a request waits for at most one of them.
"""

import functools
import logging
import os
import threading
import time

import torch
from diffusers.utils.torch_utils import randn_tensor

from dimr.demo.limits import MAX_IMAGES
from dimr.network.acceleration import FastNetwork
from dimr.sampling.pipeline import BranchTrace, DiMRPipelineOutput

logger = logging.getLogger(__name__)

# A shared run holds no more images than the largest single request, so it needs no more GPU memory than one
# request can. Larger runs would not be faster on a CPU either: their activations outgrow the CPU's caches.
RUN_IMAGES = MAX_IMAGES
# One preview decode at a time: requesters decoding at once would each hold a VAE batch's activations on the GPU.
_PREVIEW_DECODE = threading.Lock()


def share_key(request):
    """Requests with equal keys can share a run: the pipeline takes these once per call."""
    return (request.model, request.num_inference_steps, request.sampler, request.guidance_schedule,
            request.guidance_power)


class Stopped(RuntimeError):
    def __init__(self):
        super().__init__("sampling was stopped before the last step")


class Job:
    """One request (or task) inside the batcher: its previews while it runs, then its result (or error)."""

    def __init__(self, request, stop, latents=None, task=None):
        self.request = request
        self.stop = stop  # set by the requester to leave; the job then finishes with Stopped
        self.latents = latents  # given initial noise instead of the seed's; such a job samples alone
        self.task = task  # a task job's work (submit_task), else None
        self.finished = threading.Event()
        self.run = None  # the Run sampling this request, once it has one
        self._step = None  # a task's last step done
        self._seen = None  # the step of the last preview taken
        self._outcome = None

    @property
    def size(self):
        return len(self.request.labels)

    def take_preview(self):
        """(0-based step, clean estimate decoded: [B, H, W, 3] in 0..1) of the newest step since the last call, or
        None; for a task: (0-based step, None)."""
        if self.task is not None:
            preview = None if self._step is None else (self._step, None)
        else:
            preview = self.run.preview(self.request) if self.run is not None else None
        if preview is None or preview[0] == self._seen:
            return None
        self._seen = preview[0]
        return preview

    def result(self):
        """The result of this request (its `finish`) or task; raises the run's error or Stopped."""
        self.finished.wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def _finish(self, outcome):
        if not self.finished.is_set():
            self._outcome = outcome
            self.finished.set()


class Run:
    """One pipeline call and the jobs it answers: distinct request r is samples spans[r] of the call."""

    def __init__(self, pipe, jobs):
        self.pipe = pipe
        self.jobs = list(jobs)
        self.given_latents = jobs[0].latents
        self.spans, start = {}, 0
        for request in dict.fromkeys(job.request for job in jobs):
            self.spans[request] = (start, start + len(request.labels))
            start += len(request.labels)
        self.closed = False  # set when the run ends or stops: no job joins it then
        self._estimate = None  # (step, the clean estimate of every sample) of the newest step
        self._decoded = None  # (step, that estimate decoded)

    def publish(self, step, estimate):
        self._estimate = (step, estimate)

    def preview(self, request):
        """(step, the request's images of the newest step's estimate), decoded once per step for the whole run."""
        with _PREVIEW_DECODE:
            if self._estimate is None:
                return None
            step, estimate = self._estimate
            if self._decoded is None or self._decoded[0] != step:
                self._decoded = (step, self.pipe.decode(estimate, "np"))
            start, stop = self.spans[request]
            return step, self._decoded[1][start:stop]


class Batcher:
    """Samples submitted requests on one worker thread, sharing runs between compatible requests (module docstring).

    load(request) -> the DiMRPipeline for the request's model and sampler (called on the worker thread);
    branch_steps(pipe, num_inference_steps) -> the step indices whose branch images the requests get;
    finish(pipe, request, output, seconds) -> what the requesters of `request` get from its part of a run's output.
    """

    def __init__(self, load, branch_steps, finish):
        self._load = load
        self._branch_steps = branch_steps
        self._result_of = finish
        self._changed = threading.Condition()
        self._waiting = []
        self._background = []
        self._running = None  # the Run being sampled
        self._worker_pid = None

    def submit(self, request, stop=None, latents=None):
        """Queue a request (a checked dimr.demo.request.Request), optionally with its own initial noise; returns its Job.
        An equal request being sampled right now (from the seed's noise) takes this one along."""
        job = Job(request, stop or threading.Event(), latents)
        with self._changed:
            run = self._running
            if (latents is None and run is not None and not run.closed and run.given_latents is None
                    and request in run.spans):
                job.run = run
                run.jobs.append(job)
            else:
                self._queue(job)
        return job

    def submit_task(self, task, stop=None):
        """Queue task(progress) to run on the worker thread, alone, in turn with the requests; returns its Job.
        The task calls progress(step) after each 0-based step (which raises Stopped once `stop` is set) and
        returns the job's result."""
        job = Job(None, stop or threading.Event(), task=task)
        with self._changed:
            self._queue(job)
        return job

    def background(self, task):
        """Run task() on the worker thread when nothing waits (its errors are logged by the thread, not raised)."""
        with self._changed:
            self._background.append(task)
            self._start_worker()
            self._changed.notify()

    def _queue(self, job):
        self._waiting.append(job)
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
            self._serve_next()

    def _serve_next(self):
        """Wait for the next request, task or background task and serve it (its references die on return)."""
        with self._changed:
            self._changed.wait_for(lambda: self._waiting or self._background)
            first = self._waiting.pop(0) if self._waiting else None
            task = None if first else self._background.pop(0)
        if task is not None:
            try:
                task()
            except Exception:  # noqa: BLE001 - a failed background task must not end the worker
                logger.exception("background task %r failed", task)
        elif first.stop.is_set():  # left before its turn: nothing is loaded or run for it
            first._finish(Stopped())
        elif first.task is not None:
            self._run_task(first)
        else:
            self._sample(first)

    def _run_task(self, job):
        def progress(step):
            if job.stop.is_set():
                raise Stopped()
            job._step = step

        try:
            job._finish(job.task(progress))
        except Exception as err:  # noqa: BLE001 - handed to the requester, who re-raises it
            job._finish(err)

    def _sample(self, first):
        jobs = [first]
        try:
            pipe = self._load(first.request)
            with self._changed:
                jobs = [first, *self._take_sharers(first)]
                run = self._running = Run(pipe, jobs)
                for job in jobs:
                    job.run = run
            try:
                results = self._run(run)
            finally:
                with self._changed:
                    run.closed = True
                    self._running = None
                    # The run lets go of its jobs, so that a job and its result are freed with the requester's last
                    # reference, not at a rare full garbage collection (a job refers to its run).
                    jobs, run.jobs = run.jobs, []
            # The run's tensors are freed by now: a requester may end the process as soon as it has its result, and
            # a daemon thread still inside torch then aborts it.
            for job in jobs:
                job._finish(results.get(job.request))
        except Exception as err:  # noqa: BLE001 - handed to the requesters, who re-raise it
            for job in jobs:
                job._finish(err)

    def _take_sharers(self, first):
        """Remove from the queue and return the oldest waiting jobs that can share a run with `first` (the first job
        runs in any case, alone when it is larger than a run: a Compare request of 40 shapes)."""
        if first.latents is not None:
            return []
        jobs, images = [first], first.size
        for job in list(self._waiting):
            if job.task is not None or job.latents is not None or share_key(job.request) != share_key(first.request):
                continue
            new_images = 0 if any(job.request == other.request for other in jobs) else job.size
            if images + new_images > RUN_IMAGES:
                continue
            self._waiting.remove(job)
            if job.stop.is_set():
                job._finish(Stopped())
                continue
            jobs.append(job)
            images += new_images
        return jobs[1:]

    def _run(self, run):
        """Sample a run; returns {request: finish(...)} for its requests that still wait."""
        pipe, request = run.pipe, run.jobs[0].request
        dev, steps = pipe.device, request.num_inference_steps
        pipe.set_progress_bar_config(disable=True)
        # Each request's noise as a run of it alone draws it: the pipeline's own randn_tensor with its seed.
        latents = run.given_latents if run.given_latents is not None else torch.cat([
            randn_tensor((len(r.labels), *pipe.latent_shape), device=dev, dtype=torch.float32,
                         generator=torch.Generator(dev).manual_seed(r.seed)) for r in run.spans])
        scales = [r.guidance_scale for r in run.spans for _ in r.labels]
        # One scale for all keeps the pipeline's scalar path (and its skip of the uncond half when it is 1).
        guidance = scales[0] if len(set(scales)) == 1 else torch.tensor(scales)

        def on_step(pipeline, i, t, tensors):
            run.publish(i, tensors["branch_x0_pred"][-1])
            with self._changed:
                for job in run.jobs:
                    if job.stop.is_set():
                        job._finish(Stopped())
                if all(job.finished.is_set() for job in run.jobs):
                    run.closed = True
                    pipeline.stop()
            return {}

        began = time.perf_counter()
        out = pipe([c for r in run.spans for c in r.labels], guidance_scale=guidance,
                   guidance_schedule=request.guidance_schedule, guidance_power=request.guidance_power,
                   num_inference_steps=steps, latents=latents, output_type="np", return_branches=True,
                   branch_steps=self._branch_steps(pipe, steps), callback_on_step_end=on_step,
                   callback_on_step_end_tensor_inputs=["branch_x0_pred"])
        seconds = time.perf_counter() - began
        with self._changed:
            run.closed = True
            waiting = {job.request for job in run.jobs if not job.finished.is_set()}
        return {r: self._result_of(pipe, r, part_of(out, *span), seconds) for r, span in run.spans.items()
                if r in waiting}

    def warm_up(self, load):
        """In the background: load = a function returning the pipeline to serve; it is called (so the weights load
        before the first request), and if its network is compiled (dimr.network.acceleration's "fast" mode) every input
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

