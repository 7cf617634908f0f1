"""dimr.demo.batching: requests waiting together share one sampling run and each gets what it would get alone."""

import gc
import logging
import threading
import weakref

import numpy as np
import pytest
import torch

from dimr import DiMRPipeline
from dimr.demo import batching, catalogue
from dimr.demo.request import Request
from dimr.network import acceleration
from dimr.sampling.pipeline import make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny
STEPS = 3


@pytest.fixture
def pipe(tiny_pixel_model):
    pipe = DiMRPipeline(tiny_pixel_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def output(pipe, request, out, seconds):
    """The batcher's `finish`: the requesters get their part of the run's output as it is."""
    return out


def request(class_ids, images_per_class=1, guidance_scale=1.4, seed=0, **settings):
    settings = {**dict(model="m", guidance_schedule="constant", guidance_power=1.0, num_inference_steps=STEPS,
                       sampler="dpm-solver-3s"), **settings}
    return Request(class_ids=tuple(class_ids), images_per_class=images_per_class, guidance_scale=guidance_scale,
                   seed=seed, **settings)


class Recorder:
    """A batcher around one pipeline that records the class labels of every run and the steps it reports, can hold
    its worker, and calls `on_step(i)` at every step before the batcher sees it."""

    def __init__(self, pipe, on_step=lambda i: None):
        self.runs, self.outputs, self.loads, self.finished, self.decodes, self.steps = [], [], [], [], [], []
        self.release = threading.Event()
        original = pipe.__class__.__call__

        def recording(labels, **kwargs):
            self.runs.append(list(labels))
            batchers_callback = kwargs["callback_on_step_end"]

            def callback(pipeline, i, t, tensors):
                self.steps.append(i)
                on_step(i)
                return batchers_callback(pipeline, i, t, tensors)

            kwargs["callback_on_step_end"] = callback
            self.outputs.append(original(pipe, labels, **kwargs))
            return self.outputs[-1]

        def decoding(latents, output_type):
            self.decodes.append(len(latents))
            return pipe.decode(latents, output_type)

        self.wrapped = type("Recording", (), {"__getattr__": lambda _, name: getattr(pipe, name),
                                              "__call__": lambda _, labels, **kw: recording(labels, **kw),
                                              "decode": lambda _, latents, kind: decoding(latents, kind)})()
        self.batcher = batching.Batcher(load=self.load, branch_steps=lambda p, steps: [0, steps - 1],
                                        finish=self.finish)

    def load(self, request):
        self.loads.append(request)
        return self.wrapped

    def finish(self, pipe, request, out, seconds):
        self.finished.append(request)
        return out

    def submit_together(self, requests, stops=None):
        """Submit while the worker is busy, so that all of them wait together (with their stop events, if given)."""
        busy = threading.Event()
        self.batcher.background(lambda: busy.set() or self.release.wait())
        # A worker that had not yet taken the task would take the first request alone (requests go first).
        assert busy.wait(60)
        jobs = [self.batcher.submit(r, stop) for r, stop in zip(requests, stops or [None] * len(requests))]
        self.release.set()
        return jobs


def alone(pipe, r):
    return pipe(r.labels, guidance_scale=r.guidance_scale, num_inference_steps=STEPS, output_type="np",
                generator=torch.Generator().manual_seed(r.seed), return_branches=True, branch_steps=[0, STEPS - 1])


def test_waiting_requests_share_one_run_and_each_gets_its_images_alone(pipe):
    recorder = Recorder(pipe)
    requests = [request([0, 2], seed=1, guidance_scale=3.0), request([1], images_per_class=3, seed=7,
                guidance_scale=1.0), request([2], seed=1, guidance_scale=0.0)]
    jobs = recorder.submit_together(requests)
    results = [job.result() for job in jobs]
    assert recorder.runs == [[0, 2, 1, 1, 1, 2]], "one run with every request's classes, in order"
    for r, job, out in zip(requests, jobs, results):
        expected = alone(pipe, r)
        np.testing.assert_allclose(out.images, expected.images, atol=1e-5)
        assert out.images.shape == (len(r.labels), 16, 16, 3)
        for l in range(len(expected.branches.scales)):
            # Early steps divide by a small sqrt(abar), which magnifies the rounding of a larger batch.
            torch.testing.assert_close(out.branches.x0_pred[l], expected.branches.x0_pred[l], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(out.branches.images[-1][l], expected.branches.images[-1][l], atol=1e-5)
        step, preview = job.take_preview()
        assert step == STEPS - 1 and preview.shape == (len(r.labels), 16, 16, 3)


def test_requests_share_only_with_the_same_settings_and_up_to_the_run_capacity(pipe, monkeypatch):
    monkeypatch.setattr(batching, "RUN_IMAGES", 3)
    recorder = Recorder(pipe)
    jobs = recorder.submit_together([request([0]), request([1], num_inference_steps=2), request([2, 2]),
                                     request([1], guidance_schedule="power-cosine"), request([0], seed=1)])
    for job in jobs:
        job.result()
    assert recorder.runs == [[0, 2, 2], [1], [1], [0]]


def test_a_stopped_request_leaves_and_a_run_everyone_left_stops_early(pipe):
    # Stopped while it waits: set before the worker is free (a run of a few steps may end before a later stop).
    stopped = threading.Event()
    stopped.set()
    recorder = Recorder(pipe)
    jobs = recorder.submit_together([request([0]), request([1])], stops=[stopped, None])
    with pytest.raises(batching.Stopped, match="stopped before the last step"):
        jobs[0].result()
    assert jobs[1].result().images.shape == (1, 16, 16, 3)

    # Stopped while its run samples: during the first step, which is then the run's last.
    stop = threading.Event()
    recorder = Recorder(pipe, on_step=lambda i: stop.set())
    job = recorder.batcher.submit(request([0], num_inference_steps=200), stop)
    with pytest.raises(batching.Stopped):
        job.result()
    recorder.batcher.submit(request([1])).result()  # the worker is free again
    assert len(recorder.outputs[-2].branches.timesteps) == 1


def test_heuns_previews_count_steps_not_model_evaluations(tiny_pixel_model):
    """Heun evaluates the model twice per step: its run still reports steps 0..STEPS-1, one each, and the trace
    behind its panel has one entry per step."""
    pipe = DiMRPipeline(tiny_pixel_model, scheduler=make_scheduler("heun"))
    pipe.set_progress_bar_config(disable=True)
    recorder = Recorder(pipe)
    job = recorder.batcher.submit(request([0, 1], sampler="heun"))
    out = job.result()
    assert recorder.steps == list(range(STEPS)) and job.take_preview()[0] == STEPS - 1
    assert len(out.branches.timesteps) == STEPS


def test_a_failed_load_reaches_its_requester_and_the_worker_goes_on(pipe):
    def load(r):
        if r.model == "broken":
            raise ValueError("no such model")
        return pipe

    batcher = batching.Batcher(load=load, branch_steps=lambda p, steps: [steps - 1], finish=output)
    with pytest.raises(ValueError, match="no such model"):
        batcher.submit(request([0], model="broken")).result()
    assert batcher.submit(request([0])).result().images.shape == (1, 16, 16, 3)


def test_background_tasks_wait_while_requests_wait(pipe):
    recorder = Recorder(pipe)
    jobs, request_done_before_task, task_ran = [], [], threading.Event()
    recorder.batcher.background(recorder.release.wait)
    recorder.batcher.background(lambda: request_done_before_task.append(jobs[0].finished.is_set()) or task_ran.set())
    jobs.append(recorder.batcher.submit(request([0])))
    recorder.release.set()
    assert task_ran.wait(60) and request_done_before_task == [True]


def test_equal_requests_are_sampled_once_and_each_gets_the_images(pipe, monkeypatch):
    monkeypatch.setattr(batching, "RUN_IMAGES", 3)
    recorder = Recorder(pipe)
    same = [request([0, 1], seed=4) for _ in range(3)]
    jobs = recorder.submit_together([*same, request([2], seed=4), request([2], seed=5)])
    outs = [job.result() for job in jobs]
    assert recorder.runs == [[0, 1, 2], [2]], "equal requests take no room in a run"
    for out in outs[1:3]:
        np.testing.assert_array_equal(out.images, outs[0].images)
    np.testing.assert_allclose(outs[0].images, alone(pipe, same[0]).images, atol=1e-5)


def test_warm_up_loads_and_runs_every_network_batch_a_run_can_make_once(tiny_pixel_model):
    from dimr.network.acceleration import fast_network

    pipe = DiMRPipeline(tiny_pixel_model)
    pipe.network = network = fast_network(pipe.model, compile=False)
    loads = []
    batcher = batching.Batcher(load=None, branch_steps=None, finish=None)
    batcher.warm_up(lambda: loads.append(1) or pipe)
    images = range(1, batching.RUN_IMAGES + 1)
    sizes = {*images, *(2 * n for n in images)}
    for _ in range(600):
        if {key[0][0] for key in network.seen} == sizes:
            break
        threading.Event().wait(0.1)
    assert {key[0][0] for key in network.seen} == sizes, "with guidance 2 x 1..16 samples, without 1..16"
    assert len(batching.warm_up_batches()) == len(sizes)


def test_after_warm_up_the_default_request_captures_no_graph(pipe, monkeypatch):
    """Every shape the warm-up runs keeps its CUDA graph, so a request shaped as the page's default (its model's
    showcase classes, one image each, guided) replays graphs only."""
    captures = []

    class CountingGraph:
        """A CUDA graph's stand-in on the CPU: counts captures and runs the network when replayed."""

        supports = staticmethod(lambda sample: True)

        def __init__(self, forward, sample, timestep, class_labels):
            captures.append(len(sample))
            self.forward = forward

        def __call__(self, sample, timestep, class_labels):
            return self.forward(sample, timestep, class_labels)

    monkeypatch.setattr(acceleration, "_Graph", CountingGraph)
    pipe.network = acceleration.fast_network(pipe.model, compile=False)
    for images, guided in batching.warm_up_batches():
        batching.run_shape(lambda: pipe, images, guided)
    assert len(captures) == len(batching.warm_up_batches())
    default = Request.check(model="tiny-dimr", classes=catalogue.default_classes("tiny-dimr"))
    shaped_so = request([0] * len(default.labels), guidance_scale=default.guidance_scale)
    batcher = batching.Batcher(load=lambda r: pipe, branch_steps=lambda p, steps: [steps - 1], finish=output)
    batcher.submit(shaped_so).result()
    assert len(captures) == len(batching.warm_up_batches())


def test_a_pipeline_that_is_not_compiled_is_only_loaded(pipe):
    loaded = threading.Event()
    batching.Batcher(load=None, branch_steps=None, finish=None).warm_up(lambda: loaded.set() or pipe)
    assert loaded.wait(30)


def test_a_failed_run_reaches_all_its_requesters_and_the_worker_goes_on(pipe):
    recorder = Recorder(pipe)
    jobs = recorder.submit_together([request([0], guidance_scale=float("nan")), request([1])])
    for job in jobs:
        with pytest.raises(ValueError, match="finite number"):
            job.result()
    assert recorder.batcher.submit(request([1])).result().images.shape == (1, 16, 16, 3)


def test_a_request_stopped_before_its_turn_is_neither_loaded_nor_run(pipe, caplog):
    recorder = Recorder(pipe)
    stop = threading.Event()
    stop.set()
    busy = threading.Event()
    recorder.batcher.background(lambda: busy.set() or recorder.release.wait())
    assert busy.wait(60)
    job = recorder.batcher.submit(request([0]), stop)
    recorder.release.set()
    with pytest.raises(batching.Stopped):
        job.result()
    assert recorder.batcher.submit(request([1])).result().images.shape == (1, 16, 16, 3)  # the worker goes on
    assert recorder.loads == [request([1])] and recorder.runs == [[1]]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_request_equal_to_one_being_sampled_joins_its_run(pipe):
    # The run waits in its second step until the other requests are in, so it is under way when they come.
    under_way, submitted = threading.Event(), threading.Event()

    def hold(i):
        if i == 1:
            under_way.set()
            assert submitted.wait(60)

    recorder = Recorder(pipe, on_step=hold)
    first = recorder.batcher.submit(request([0, 1], num_inference_steps=100, seed=2))
    assert under_way.wait(60)
    equal = recorder.batcher.submit(request([0, 1], num_inference_steps=100, seed=2))
    other = recorder.batcher.submit(request([0, 1], num_inference_steps=100, seed=3))
    submitted.set()
    assert equal.run is first.run and other.run is None
    np.testing.assert_array_equal(equal.result().images, first.result().images)
    assert equal.take_preview()[0] == 99, "a joined request gets the run's previews"
    other.result()
    assert recorder.runs == [[0, 1], [0, 1]], "the equal request was sampled with the first, the other on its own"
    assert recorder.finished == [request([0, 1], num_inference_steps=100, seed=2),
                                 request([0, 1], num_inference_steps=100, seed=3)]


def test_what_the_requests_of_a_run_share_is_done_once(pipe):
    recorder = Recorder(pipe)
    same = request([0, 1], seed=4)
    jobs = recorder.submit_together([same, request([2], seed=5), same])
    results = [job.result() for job in jobs]
    assert recorder.finished == [same, request([2], seed=5)], "finish runs once per distinct request"
    assert results[0] is results[2]
    previews = [job.take_preview() for job in jobs]
    assert recorder.decodes == [3], "the last step's preview is decoded once, for all three samples of the run"
    assert [step for step, _ in previews] == [STEPS - 1] * 3
    np.testing.assert_array_equal(previews[0][1], previews[2][1])
    assert previews[1][1].shape == (1, 16, 16, 3)
    assert [job.take_preview() for job in jobs] == [None] * 3, "nothing new since"


def test_a_task_runs_on_the_sampling_thread_in_turn_with_the_requests(pipe):
    recorder = Recorder(pipe)
    threads, reported = [], threading.Event()

    def task(progress):
        recorder.runs.append("task")
        threads.append(threading.current_thread().name)
        for step in range(3):
            progress(step)
        reported.set()
        return "done"

    busy = threading.Event()
    recorder.batcher.background(lambda: busy.set() or recorder.release.wait())
    assert busy.wait(60)
    before = recorder.batcher.submit(request([0]))
    job = recorder.batcher.submit_task(task)
    after = recorder.batcher.submit(request([1], num_inference_steps=2))
    recorder.release.set()
    assert job.result() == "done" and job.take_preview() == (2, None)
    before.result(), after.result()
    assert recorder.runs == [[0], "task", [1]] and threads == ["dimr-sampling"]


def test_a_stopped_task_ends_at_its_next_step(pipe):
    batcher = batching.Batcher(load=lambda r: pipe, branch_steps=lambda p, steps: [steps - 1], finish=output)
    started, steps = threading.Event(), []

    def task(progress):
        for step in range(1000):
            progress(step)
            steps.append(step)
            started.set()
            threading.Event().wait(0.01)

    job = batcher.submit_task(task)
    assert started.wait(60)
    job.stop.set()
    with pytest.raises(batching.Stopped):
        job.result()
    assert len(steps) < 1000


def test_a_finished_request_is_freed_with_its_requesters_last_reference(pipe):
    """Without waiting for the garbage collector: a busy server's full collections are rare, and every result kept
    until then (a branch panel each) made the server's memory grow with requests."""
    batcher = batching.Batcher(load=lambda r: pipe, branch_steps=lambda p, steps: [steps - 1], finish=output)
    gc.disable()
    try:
        jobs = [batcher.submit(request([0])), batcher.submit(request([1], seed=1))]
        for job in jobs:
            job.result()
        served = threading.Event()
        batcher.background(served.set)  # the worker is past both requests
        assert served.wait(60)
        freed = [weakref.ref(job) for job in jobs]
        del job, jobs
        assert [ref() for ref in freed] == [None, None]
    finally:
        gc.enable()
