"""Serving the demo (dimr.demo.serving, dimr.demo.zero_gpu): nothing runs at import, the CPU threads are chosen once at
start-up and never by a request, the acceleration mode per platform, and the GPU time asked of ZeroGPU."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dimr.demo import serving, zero_gpu


def run_python(code, **env):
    """Run code in a fresh interpreter (offline, on the CPU); its stdout."""
    import os

    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DIMR_DEVICE": "cpu", **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_importing_the_package_and_the_app_starts_no_thread_and_keeps_the_thread_count():
    out = run_python("""
        import threading, torch
        torch.set_num_threads(2)
        before = {t.ident for t in threading.enumerate()}
        import importlib, pkgutil, dimr
        for module in pkgutil.walk_packages(dimr.__path__, "dimr."):  # every module of every layer
            importlib.import_module(module.name)
        new = [t.name for t in threading.enumerate() if t.ident not in before]
        import app  # builds the page (Gradio may start threads of its own), never the sampling worker
        sampling = [t.name for t in threading.enumerate() if t.name.startswith("dimr")]
        print(new, sampling, torch.get_num_threads())
    """)
    assert out == "[] [] 2"


def test_a_request_leaves_the_process_thread_count_alone():
    """Threads started while a pixel-space model samples (e.g. Gradio's handler threads) keep the process's count."""
    out = run_python("""
        import threading, torch
        torch.set_num_threads(2)
        from dimr.demo import serving
        from dimr.demo.request import Request

        seen = []
        def probe():
            seen.append(torch.get_num_threads())

        for update in serving.stream(Request.check(model="tiny-dimr", classes=["ring"], num_inference_steps=100)):
            thread = threading.Thread(target=probe)
            thread.start()
            thread.join()
        print(len(seen) > 0, set(seen))
    """)
    assert out == "True {2}"


@pytest.mark.parametrize("model, threads", [("tiny-dimr", 1), ("DiMR-XL/2R", 2)])
def test_the_server_start_gives_a_pixel_space_model_one_cpu_thread(model, threads):
    """Small pixel-space models sample fastest with one thread (their operations are too small to split); a latent
    model keeps the process's threads. Decided once, when the server starts."""
    out = run_python(f"""
        import torch
        torch.set_num_threads(2)
        import threading
        from dimr.demo import serving
        serving.start({model!r})
        print(torch.get_num_threads())
        for thread in threading.enumerate():  # the load (offline, it fails) and the warm-up are over before exit
            if thread.name == "dimr-warm-up":
                thread.join(120)
        started = threading.Event()
        serving.batcher().background(started.set)
        started.wait(60)
    """)
    assert out == str(threads)


def test_zero_gpu_samples_in_bf16_without_compilation(monkeypatch):
    monkeypatch.delenv("DIMR_ACCELERATION", raising=False)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert serving.acceleration_mode() == "bf16"
    monkeypatch.setenv("SPACES_ZERO_GPU", "")
    monkeypatch.setenv("DIMR_DEVICE", "cuda")
    assert serving.acceleration_mode() == "fast"


H200 = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "nvidia-h200.json").read_text())


def measured_seconds(images, steps_run):
    """What the committed H200 measurement says `steps_run` model evaluations of `images` guided images take in bf16
    (ZeroGPU's mode): its run of that batch, less its decode, per evaluation of its sampler (one per step)."""
    run = H200["ours_bf16_eager"][str(images)]
    assert H200["settings"]["sampler"] == "dpm-solver-3s" and H200["settings"]["guidance_scale"] != 1
    return (run["median_s"] - run["decode_s"]) / H200["settings"]["steps"] * steps_run


@pytest.mark.parametrize("images, steps", [(1, 250), (1, 25), (4, 250), (16, 250), (16, 10)])
def test_zero_gpu_grants_at_least_the_measured_sampling_time_at_the_requests_batch(images, steps):
    """One image at 250 steps ran about 8.4 s on the H200, where the batch-16 rate priced it at 0.9 s."""
    per_class = images // 4 if images >= 4 else 1
    classes = [1, 2, 3, 4][: images // per_class]
    granted = zero_gpu.gpu_seconds("DiMR-XL/2R", classes, per_class, steps, guidance_scale=1.4)
    assert granted >= zero_gpu.FIXED_SECONDS + measured_seconds(images, steps)
    assert granted <= zero_gpu.FIXED_SECONDS + 3 * measured_seconds(images, steps) + 8, "not far more either"


def test_zero_gpu_counts_every_evaluation_and_the_guidance_batch():
    price = zero_gpu.gpu_seconds
    # Heun evaluates the network 2N - 1 times for N steps: it costs what 2N - 1 one-evaluation steps cost.
    assert price("DiMR-XL/2R", [1] * 4, 4, 100, sampler="heun") == price("DiMR-XL/2R", [1] * 4, 4, 199, sampler="euler")
    assert price("DiMR-XL/2R", [1] * 4, 4, 100, sampler="heun") > price("DiMR-XL/2R", [1] * 4, 4, 100)
    # Guidance evaluates the unconditional half too: 16 images guided are a batch of 32, unguided one of 16.
    assert price("DiMR-XL/2R", [1] * 4, 4, 250, guidance_scale=1) < price("DiMR-XL/2R", [1] * 4, 4, 250)


def test_zero_gpu_prices_a_larger_model_by_its_flops_and_a_refused_request_as_the_largest():
    assert zero_gpu.gpu_seconds("DiMR-G/2R", [1] * 4, 4, 250) > zero_gpu.gpu_seconds("DiMR-XL/2R", [1] * 4, 4, 250)
    largest = zero_gpu.gpu_seconds("DiMR-G/2R", [1] * 4, 4, 250, sampler="heun")
    assert zero_gpu.gpu_seconds("DiMR-H/9R", "not a list", "x", None, sampler=["x"], guidance_scale="x") == largest
    assert zero_gpu.gpu_seconds("DiMR-G/2R", [1] * 40, 99, 10**6, sampler="heun") == largest == zero_gpu.MAX_SECONDS


def test_compare_asks_for_two_runs_of_gpu_time():
    request = dict(classes=[1, 2, 3, 4], images_per_class=1, num_inference_steps=25)
    one_run = zero_gpu.handler_seconds({"model": "tiny-dimr", **request})
    assert zero_gpu.handler_seconds(request) == min(zero_gpu.MAX_SECONDS, 2 * one_run)


def test_without_zero_gpu_a_handler_runs_as_it_is():
    def handler(model):
        return model

    assert zero_gpu.on_gpu(handler) is handler  # the `spaces` package is not installed here

