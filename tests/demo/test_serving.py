"""Serving the demo (dimr.demo.serving, dimr.demo.zero_gpu): nothing runs at import, the CPU threads are chosen once at
start-up and never by a request, the acceleration mode per platform, and the GPU time asked of ZeroGPU."""

import subprocess
import sys
import textwrap

import pytest

from dimr.demo import catalogue, serving, zero_gpu


def run_python(code, **env):
    """Run code in a fresh interpreter (offline, on the CPU); its stdout."""
    import os

    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DIMR_DEVICE": "cpu", **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_importing_the_package_and_the_app_starts_no_thread_and_keeps_the_thread_count():
    out = run_python(f"""
        import threading, torch
        torch.set_num_threads(2)
        before = {{t.ident for t in threading.enumerate()}}
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
        started = threading.Event()  # the background load of the weights is over (offline, it fails) before exit
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


@pytest.mark.parametrize("model, classes, per_class, steps, expected", [
    ("DiMR-XL/2R", [1, 2, 3, 4], 1, 25, 12),       # the demo's default request
    ("DiMR-XL/2R", [1, 2, 3, 4], 4, 250, 45),      # the largest request
    ("DiMR-G/2R", [1, 2, 3, 4], 4, 250, 77),
    ("DiMR-G/2R", "not a list", "x", None, 77),    # raw values the checks will reject: the largest estimate
    ("DiMR-G/2R", [1] * 40, 99, 10**6, 77),
])
def test_zero_gpu_duration_grows_with_the_request_and_never_fails(model, classes, per_class, steps, expected):
    assert zero_gpu.gpu_seconds(model, classes, per_class, steps) == expected


@pytest.mark.parametrize("model", ["DiMR-XL/2R", "DiMR-G/2R"])
def test_zero_gpu_prices_the_branch_panel_of_the_models_own_branches(model):
    """The released models have two branches: the panel of 16 images decodes 2 estimates per image at each of its
    20 steps, then the 16 final images."""
    assert len(catalogue.model_branches(model)) == 2
    work = 16 * 250 * zero_gpu.SECONDS_PER_IMAGE_STEP[model] + 16 * (2 * 20 + 1) * zero_gpu.SECONDS_PER_DECODE
    assert zero_gpu.gpu_seconds(model, [1, 2, 3, 4], 4, 250) == round(zero_gpu.FIXED_SECONDS + zero_gpu.MARGIN * work)


def test_compare_asks_for_two_runs_of_gpu_time():
    request = dict(classes=[1, 2, 3, 4], images_per_class=1, num_inference_steps=25)
    one_run = zero_gpu.handler_seconds({"model": "tiny-dimr", **request})
    assert zero_gpu.handler_seconds(request) == min(zero_gpu.MAX_SECONDS, 2 * one_run)


def test_without_zero_gpu_a_handler_runs_as_it_is():
    def handler(model):
        return model

    assert zero_gpu.on_gpu(handler) is handler  # the `spaces` package is not installed here

