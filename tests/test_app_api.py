"""The demo's `/generate` API, driven with gradio_client against the real app (`python app.py`) and the bundled tiny
models: valid requests return images and the branch panel; bad input of every kind gets an error that names the
value and what is allowed, and the server keeps serving."""

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from app_server import running_app
SHAPES = ["circle", "triangle", "square", "star", "ring", "plus", "frame", "stripes", "checkerboard", "dots"]
FAST = dict(model="tiny-dimr", classes=["ring"], images_per_class=1, guidance_scale=1.4, guidance_schedule="constant",
            guidance_power=1.0, num_inference_steps=2, seed=0, sampler="dpm++2m")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def generate(client, **overrides):
    return client.predict(**{**FAST, **overrides}, api_name="/generate")


def assert_serves(client):
    samples, *_ = generate(client)
    assert [item["caption"] for item in samples] == ["ring"]


def test_generate_returns_named_images_and_the_branch_panel(client):
    samples, panel, panel_step, status = generate(client, classes=["ring", 3, "checkerboard"], images_per_class=2,
                                                  num_inference_steps=5, seed=7)
    assert [s["caption"] for s in samples] == ["ring", "ring", "star", "star", "checkerboard", "checkerboard"]
    for sample in samples:
        with Image.open(sample["image"]) as image:
            assert image.format == "PNG"
            assert image.size == (256, 256)  # the 32x32 sample, enlarged 8x for display
            assert np.asarray(image).std() > 0  # not a blank image
    # Per image: the 8x8, 16x16 and 32x32 branches' estimates, then the final image.
    assert [p["caption"] for p in panel[:4]] == ["8x8 branch", "16x16 branch", "32x32 branch", "final: ring"]
    assert [p["caption"] for p in panel[3::4]] == ["final: " + s["caption"] for s in samples]
    assert len(panel) == 6 * 4
    with Image.open(panel[0]["image"]) as coarse:
        # The 8x8 branch's estimate, upsampled without smoothing: constant over 4x4 blocks of the 32x32 image.
        small = coarse.resize((32, 32), Image.NEAREST)
        assert small.resize((8, 8), Image.NEAREST).resize((32, 32), Image.NEAREST).tobytes() == small.tobytes()
    assert panel_step == 5
    assert "tiny-dimr: 6 images, 5 steps" in status and "seed 7" in status


def test_previews_stream_in_while_sampling(client):
    job = client.submit(**{**FAST, "num_inference_steps": 250}, api_name="/generate")
    samples = job.result()[0]
    previews = [output[0] for output in job.outputs()[:-1] if isinstance(output[0], list)]
    assert previews, "no preview arrived during 250 steps"
    steps = [int(preview[0]["caption"].removeprefix("ring · step ").split("/")[0]) for preview in previews]
    assert steps == sorted(steps) and 1 <= steps[0] and steps[-1] <= 250
    assert [s["caption"] for s in samples] == ["ring"]


def test_same_seed_same_images_other_seed_other_images(client):
    def pixels(seed):
        samples = generate(client, classes=["star", "dots"], seed=seed, num_inference_steps=4)[0]
        return [Image.open(s["image"]).tobytes() for s in samples]

    first = pixels(3)
    assert pixels(3) == first
    assert pixels(4) != first


def test_baseline_has_one_branch_and_compare_runs_both_models(client):
    panel = generate(client, model="tiny-baseline", classes=["frame"])[1]
    assert [p["caption"] for p in panel] == ["32x32 branch", "final: frame"]
    dimr, baseline, status = client.predict(classes=["ring", "stripes"], images_per_class=1, guidance_scale=1.4,
                                            guidance_schedule="power-cosine", guidance_power=1.0,
                                            num_inference_steps=3, seed=0, sampler="dpm++2m", api_name="/compare")
    assert [s["caption"] for s in dimr] == [s["caption"] for s in baseline] == ["ring", "stripes"]
    assert "tiny-dimr" in status and "tiny-baseline" in status


BAD_REQUESTS = {
    "unknown class name": (dict(classes=["unicorn"]), "unknown class name 'unicorn'"),
    "class id out of range": (dict(classes=[99]), "class id 99 is out of range: this model's classes have ids 0..9"),
    "the null class id": (dict(classes=[10]), "class id 10 is out of range"),
    "no class": (dict(classes=[]), "no class chosen"),
    "classes not a list": (dict(classes={"ring": 1}), "classes must be a list of class names or ids"),
    "zero steps": (dict(num_inference_steps=0), "num_inference_steps=0 is out of range"),
    "10000 steps": (dict(num_inference_steps=10000), "num_inference_steps=10000 is out of range"),
    "more steps than the demo allows": (dict(num_inference_steps=500), "use 1..250"),
    "fractional steps": (dict(num_inference_steps=2.5), "num_inference_steps must be an integer, got 2.5"),
    "steps as text": (dict(num_inference_steps="many"), "num_inference_steps must be an integer, got 'many'"),
    "negative guidance": (dict(guidance_scale=-1), "guidance_scale=-1 is negative"),
    "guidance as text": (dict(guidance_scale="strong"), "guidance_scale must be a finite number, got 'strong'"),
    "unknown schedule": (dict(guidance_schedule="linear"), "guidance_schedule 'linear' is not one of constant, "
                                                           "power-cosine"),
    "zero power": (dict(guidance_schedule="power-cosine", guidance_power=0), "guidance_power=0 must be positive"),
    "too many images": (dict(classes=["ring", "star"], images_per_class=9), "18 images; the demo makes at most 16"),
    "images per class as text": (dict(images_per_class="2"), "images_per_class must be an integer, got '2'"),
    "negative seed": (dict(seed=-5), "seed=-5 is out of range: use 0..4294967295"),
    "unknown model": (dict(model="DiMR-H/9R"), "unknown model 'DiMR-H/9R'; choose one of tiny-dimr, tiny-baseline"),
    "model given as a path": (dict(model="/etc"), "unknown model '/etc'"),
    "unknown sampler": (dict(sampler="magic"), "unknown sampler 'magic'; choose one of "),
}


@pytest.mark.parametrize("overrides, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, overrides, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        generate(client, **overrides)
    assert message in str(error.value)
    assert_serves(client)


def test_nan_guidance_is_refused_over_plain_http(app_url, client):
    # JSON clients cannot send NaN, but Python's json (and so the server) reads the NaN literal.
    body = json.dumps({"data": list({**FAST, "guidance_scale": float("nan")}.values())})
    assert "NaN" in body
    event = httpx.post(f"{app_url}gradio_api/call/generate", content=body,
                       headers={"Content-Type": "application/json"}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{app_url}gradio_api/call/generate/{event}", timeout=60).text
    assert "event: error" in stream
    assert "guidance_scale must be a finite number, got nan" in stream
    assert_serves(client)


def test_a_released_model_that_cannot_be_downloaded_gets_a_clear_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        generate(client, model="DiMR-XL/2R", classes=["tabby cat"])
    message = str(error.value)
    assert "DiMR-XL/2R" in message and "huggingface.co/QHL067/DiMR" in message
    assert_serves(client)
