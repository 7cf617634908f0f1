"""A request's time on the device, estimated before it samples (dimr.demo.timing through dimr.demo.serving): refused
over DIMR_MAX_REQUEST_SECONDS with the estimate and what would fit, never sent to the sampling thread; a sampler's
evaluations are those a real run makes. Rates here are given, not measured: no test depends on this machine's speed."""

import threading

import pytest
import torch

from dimr import DiMRPipeline
from dimr.demo import serving, timing
from dimr.demo.refusals import Refused
from dimr.demo.request import Request
from dimr.sampling.pipeline import SAMPLERS, make_scheduler, model_evaluations

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny


@pytest.fixture
def rates(monkeypatch):
    """Seconds per network evaluation 0.1 x the network batch, on a CPU server whose limit is 30 s; returns the
    requests submitted to the sampling thread."""
    given = timing.Rates(evaluation={1: 0.1, 32: 3.2}, decode={}, source="given by the test")
    monkeypatch.setattr(timing, "device_rates", lambda pipe, model, mode="fast": given)
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    monkeypatch.setenv("DIMR_MAX_REQUEST_SECONDS", "30")
    submitted, submit = [], serving.batcher().submit
    monkeypatch.setattr(serving.batcher(), "submit", lambda *args: submitted.append(args) or submit(*args))
    return submitted


def test_a_request_over_the_limit_is_refused_before_sampling_with_its_estimate_and_what_fits(rates):
    # 4 classes x 4 images, guided: a network batch of 32, 3.2 s per evaluation, 25 evaluations = 80 s.
    request = Request.check(model="tiny-dimr", classes=[0, 1, 2, 3], images_per_class=4, num_inference_steps=25)
    with pytest.raises(Refused) as error:
        list(serving.stream(request))
    assert str(error.value) == (
        "This request would hold this server's cpu for about 80 seconds (from speeds given by the test); this server "
        "runs requests of at most 30 s. What fits, the rest unchanged: 9 steps; or 1 images per class; or 1 classes.")
    assert rates == [], "nothing reached the sampling thread"


def test_a_released_model_over_the_limit_points_to_the_tiny_models(rates, monkeypatch):
    request = Request.check(model="tiny-dimr", classes=[0], num_inference_steps=250)  # 250 x 0.2 s = 50 s
    with pytest.raises(Refused, match="What fits, the rest unchanged: 150 steps.$"):
        list(serving.stream(request))
    monkeypatch.setattr(timing, "BUNDLED", {"tiny-a": "", "tiny-b": ""})  # tiny-dimr as if it were a large model
    with pytest.raises(Refused, match="150 steps; or the bundled tiny-a or tiny-b.$"):
        list(serving.stream(request))


def test_a_request_within_the_limit_is_sampled(rates):
    list(serving.stream(Request.check(model="tiny-dimr", classes=[0, 1], num_inference_steps=5)))  # 5 x 0.4 s
    assert len(rates) == 1


def test_the_limit_is_the_operators(rates, monkeypatch):
    request = Request.check(model="tiny-dimr", classes=[0, 1, 2, 3], images_per_class=4, num_inference_steps=3)
    monkeypatch.setenv("DIMR_MAX_REQUEST_SECONDS", "5")
    with pytest.raises(Refused, match="at most 5 s"):
        list(serving.stream(request))  # 3 x 3.2 s
    monkeypatch.setenv("DIMR_MAX_REQUEST_SECONDS", "10")
    list(serving.stream(request))
    monkeypatch.delenv("DIMR_MAX_REQUEST_SECONDS")
    assert timing.max_request_seconds() == 120
    monkeypatch.setenv("DIMR_MAX_REQUEST_SECONDS", "two minutes")
    with pytest.raises(ValueError, match="DIMR_MAX_REQUEST_SECONDS='two minutes' must be a number of seconds"):
        timing.max_request_seconds()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_samplers_evaluations_are_those_a_run_makes(sampler, tiny_pixel_model):
    pipe = DiMRPipeline(tiny_pixel_model, scheduler=make_scheduler(sampler))
    pipe.set_progress_bar_config(disable=True)
    calls, lock = [], threading.Lock()

    def counting(*args):
        with lock:
            calls.append(1)
        return tiny_pixel_model.forward_branches(*args)

    pipe.network = counting
    pipe([0], num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert model_evaluations(sampler, 10) == len(calls)
    assert model_evaluations("heun", 10) == 19  # twice per step but the last


def test_rates_are_read_between_and_beyond_the_measured_batches():
    rates = timing.Rates(evaluation={2: 1.0, 8: 4.0}, decode={1: 0.5, 4: 0.2}, source="")
    assert timing.interpolated(rates.evaluation, 4) == 2.0 and timing.interpolated(rates.evaluation, 16) == 8.0
    assert timing.interpolated(rates.evaluation, 1) == 0.5
    assert rates.seconds(images=4, evaluations=10, guided=True, decodes=0) == 40.0
    assert rates.seconds(images=4, evaluations=10, guided=False, decodes=4) == pytest.approx(20.0 + 0.8)
