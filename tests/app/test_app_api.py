"""The demo's `/generate` and `/compare` API, driven with gradio_client against the real app (`python app.py`) and
the bundled tiny models: valid requests return images and the branch panel, comparisons the judge's verdicts; bad
input of every kind gets an error that names the value and what is allowed, logged as one line, and the server keeps
serving. Also the app's own text: the measured distortion, or "not measured yet"."""

import json
import re

import httpx
import numpy as np
import pytest
from app_server import running_app
from PIL import Image

SHAPES = ["circle", "triangle", "square", "star", "ring", "plus", "frame", "stripes", "checkerboard", "dots"]
FAST = dict(model="tiny-dimr", classes=["ring"], images_per_class=1, guidance_scale=1.4, guidance_schedule="constant",
            guidance_power=1.0, num_inference_steps=2, seed=0, sampler="dpm++2m")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def app_url(app_dir):
    with running_app(app_dir) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def generate(client, **overrides):
    return client.predict(**{**FAST, **overrides}, api_name="/generate")


VERDICT = r"(✓ recognised|✗ misdrawn), p\u00a0[01]\.\d\d"


def assert_serves(client):
    samples, *_ = generate(client)
    assert [item["caption"].split(" ")[0] for item in samples] == ["ring"]


def test_generate_returns_named_images_and_the_branch_panel(client):
    samples, panel, panel_step, status = generate(client, classes=["ring", 3, "checkerboard"], images_per_class=2,
                                                  num_inference_steps=5, seed=7)
    # Each sample of a shapes model with the judge's verdict: 'ring ✓ recognised, p 0.97'.
    classes = [s["caption"].split(" ")[0] for s in samples]
    assert classes == ["ring", "ring", "star", "star", "checkerboard", "checkerboard"]
    assert all(re.fullmatch(rf"\w+ {VERDICT}", s["caption"]) for s in samples), samples
    for sample in samples:
        with Image.open(sample["image"]) as image:
            assert image.format == "PNG"
            assert image.size == (256, 256)  # the 32x32 sample, enlarged 8x for display
            assert np.asarray(image).std() > 0  # not a blank image
    # Per image: the 8x8-token transformer's and the 16x16 and 32x32 ConvNeXt branches' estimates, then the final image.
    assert [p["caption"] for p in panel[:4]] == ["8x8 transformer (4x4 px patches)", "16x16 ConvNeXt", "32x32 ConvNeXt",
                                                 "final: ring"]
    assert [p["caption"] for p in panel[3::4]] == ["final: " + name for name in classes]
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
    assert [s["caption"].split(" ")[0] for s in samples] == ["ring"]


def test_same_seed_same_images_other_seed_other_images(client):
    def pixels(seed):
        samples = generate(client, classes=["star", "dots"], seed=seed, num_inference_steps=4)[0]
        return [Image.open(s["image"]).tobytes() for s in samples]

    first = pixels(3)
    assert pixels(3) == first
    assert pixels(4) != first


def test_baseline_has_one_branch_and_compare_judges_both_models(client):
    panel = generate(client, model="tiny-baseline", classes=["frame"])[1]
    assert [p["caption"] for p in panel] == ["8x8 transformer (4x4 px patches)", "final: frame"]
    pairs, status = client.predict(classes=["ring", "stripes"], images_per_class=2, guidance_scale=1.4,
                                   guidance_schedule="power-cosine", guidance_power=1.0, num_inference_steps=3, seed=0,
                                   sampler="dpm++2m", api_name="/compare")
    # Three to a row, one row per noise: the real shape, DiMR's sample, the baseline's, each with the judge's verdict.
    captions = [p["caption"] for p in pairs]
    assert captions[0::3] == ["real ring", "real ring", "real stripes", "real stripes"]
    assert all(re.fullmatch(rf"DiMR: {VERDICT}", c) for c in captions[1::3]), captions
    assert all(re.fullmatch(rf"baseline: {VERDICT}", c) for c in captions[2::3]), captions
    assert "tiny-dimr: 4 images" in status and "tiny-baseline: 4 images" in status
    assert re.search(r"the judge finds \d of 4 misdrawn", status)


def test_compare_takes_up_to_40_images_per_model(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="10 classes x 5 images per class = 50 images; the demo makes at most 40"):
        client.predict(classes=list(range(10)), images_per_class=5, guidance_scale=3, guidance_schedule="constant",
                       guidance_power=1.0, num_inference_steps=1, seed=0, sampler="dpm++2m", api_name="/compare")


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
    "negative guidance": (dict(guidance_scale=-1), "guidance_scale=-1 is out of range: use 0..10"),
    "more guidance than the demo allows": (dict(guidance_scale=12), "guidance_scale=12 is out of range: use 0..10"),
    "guidance as text": (dict(guidance_scale="strong"), "guidance_scale must be a finite number, got 'strong'"),
    "unknown schedule": (dict(guidance_schedule="linear"), "guidance_schedule 'linear' is not one of constant, "
                                                           "power-cosine"),
    "zero power": (dict(guidance_schedule="power-cosine", guidance_power=0), "guidance_power=0 is out of range: "
                                                                             "use 0.1..4"),
    "more power than the demo allows": (dict(guidance_power=4.5), "guidance_power=4.5 is out of range: use 0.1..4"),
    "too many images": (dict(classes=["ring", "star"], images_per_class=9), "18 images; the demo makes at most 16"),
    "images per class as text": (dict(images_per_class="2"), "images_per_class must be an integer, got '2'"),
    "negative seed": (dict(seed=-5), "seed=-5 is out of range: use 0..4294967295"),
    "unknown model": (dict(model="DiMR-H/9R"), "unknown model 'DiMR-H/9R'; choose one of tiny-dimr, tiny-baseline"),
    "model given as a path": (dict(model="/etc"), "unknown model '/etc'"),
    "unknown sampler": (dict(sampler="magic"), "unknown sampler 'magic'; choose one of "),
    "sampler as a list": (dict(sampler=["dpm++2m"]), "sampler must be one name, one of dpm-solver-3s"),
    "sampler as a dict": (dict(sampler={"name": "dpm++2m"}), "sampler must be one name, one of dpm-solver-3s"),
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


def test_a_released_model_that_cannot_be_downloaded_is_refused_in_one_sentence_and_the_log_says_what_to_do(
        client, app_dir):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        generate(client, model="DiMR-XL/2R", classes=["tabby cat"])
    message = str(error.value)
    assert "DiMR-XL/2R is not available on this server right now; tiny-dimr and tiny-baseline work meanwhile." in message
    assert "python -m dimr convert" not in message and "/" not in message.split("DiMR-XL/2R", 1)[1]  # no path
    log = (app_dir / "app.log").read_text()
    assert "For the operator: not installed here" in log and "python -m dimr convert" in log  # at start-up
    assert_serves(client)


def test_refused_requests_are_logged_as_one_line_without_a_traceback(client, app_dir):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError):
        generate(client, classes=["unicorn"])
    log = (app_dir / "app.log").read_text()
    assert "Traceback" not in log
    refusals = [line for line in log.splitlines() if "refused: " in line]
    assert any("refused: unknown class name 'unicorn'" in line for line in refusals)


@pytest.fixture
def app_module(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import app

    return app


def measured(rate_of_ring):
    return {"settings": {"samples": 20, "steps": 25, "guidance": 3.0, "sampler": "dpm-solver-3s", "seed": 0},
            "rate": rate_of_ring / 20, "ci95": [0.0, 0.5], "flagged": rate_of_ring, "samples": 20,
            "per_class": {"ring": [rate_of_ring, 10], "star": [0, 10]}}


def page_texts(app_module):
    """The header's and the Compare tab's rates table's text, as a freshly built page shows them."""
    page = app_module.build()
    texts = {block.elem_id: block.value for block in page.blocks.values()
             if block.elem_id in ("intro", "compare-rates")}
    return " ".join(texts["intro"].split()), texts["compare-rates"]


def test_the_page_shows_the_measured_distortion_or_says_it_is_not_measured_yet(app_module, monkeypatch):
    from dimr.demo import shapes_lab

    monkeypatch.setattr(shapes_lab, "measured_distortion", lambda name: None)
    intro, table = page_texts(app_module)
    assert "tiny DiMR not measured yet" in intro
    assert "not measured yet for tiny-dimr and tiny-baseline" in table

    monkeypatch.setattr(shapes_lab, "measured_distortion", lambda name: measured(1 if name == "tiny-dimr" else 4))
    intro, table = page_texts(app_module)
    assert "tiny DiMR 5.0% (1 of 20 samples)" in intro and "baseline 20.0% (4 of 20 samples)" in intro
    assert "29.2%" in intro  # the paper's number beside the lab's
    assert '20 samples per model, 25 steps of <span class="name">dpm-solver-3s</span>, guidance 3, seed 0' in table
    assert "| ring | 1/10 (10%) | 4/10 (40%) |" in table and "| star | 0/10 (0%) | 0/10 (0%) |" in table


def test_handler_inputs_follow_the_handlers_parameter_names(app_module):
    components = {name: f"<{name}>" for name in ("seed", "model", "classes", "sampler", "images_per_class",
                                                 "guidance_scale", "guidance_schedule", "guidance_power",
                                                 "num_inference_steps", "panel_view", "status")}

    def trigger(fn, inputs, outputs, **options):
        return inputs

    assert app_module.on(trigger, app_module.generate, components, None) == [
        "<model>", "<classes>", "<images_per_class>", "<guidance_scale>", "<guidance_schedule>", "<guidance_power>",
        "<num_inference_steps>", "<seed>", "<sampler>"]
    with pytest.raises(KeyError, match="generation"):  # a handler's input without a component fails at build time
        app_module.on(trigger, app_module.fit_panel, components, None)


def test_a_refusal_recorded_while_another_handler_reads_refusals_is_kept_for_its_status_line(app_module, monkeypatch):
    """Handler threads record refusals while others read them: a reader that comes in the middle of a record waits
    for it, and the visitor's status line gets the reason."""
    import collections
    import threading
    from types import SimpleNamespace

    import gradio as gr

    from dimr.demo.refusals import Refused

    visitor, readers, read = SimpleNamespace(session_hash="a visitor"), [], []

    class Interleaved(collections.OrderedDict):
        def move_to_end(self, key, last=True):  # in the middle of a record: another handler reads the refusals
            readers.append(threading.Thread(target=lambda: read.append(app_module.refused({})(visitor))))
            readers[-1].start()
            readers[-1].join(0.5)  # without a lock the reader takes the record now, half made
            super().move_to_end(key, last)

    monkeypatch.setattr(app_module.REFUSALS, "_errors", Interleaved())

    def refuse():
        raise Refused("unknown class name 'unicorn'")

    with pytest.raises(gr.Error, match="unknown class name 'unicorn'"):
        app_module.checked(visitor, refuse)
    readers[0].join(30)
    assert read == ["**Could not run:** unknown class name 'unicorn'"]


@pytest.mark.parametrize("failure", [ValueError("cannot reshape tensor of 0 elements"), OSError("No space left"),
                                     RuntimeError("CUDA error")])
def test_a_failure_inside_sampling_is_the_servers_logged_with_its_traceback_and_not_the_visitors(
        app_module, failure, caplog):
    from types import SimpleNamespace

    import gradio as gr

    from dimr.demo.refusals import SERVER_FAILED

    visitor = SimpleNamespace(session_hash="a visitor")

    def sample():
        raise failure

    with caplog.at_level("INFO"), pytest.raises(gr.Error) as error:
        app_module.checked(visitor, sample)
    assert error.value.title == "The server failed" and error.value.message == SERVER_FAILED
    assert "run it again" in SERVER_FAILED
    [record] = [r for r in caplog.records if r.name.startswith("dimr")]
    assert record.levelname == "ERROR" and record.exc_info[1] is failure, "logged as an error, with its traceback"
    assert app_module.REFUSALS.status_line("a visitor", {}) == f"**Could not run:** {SERVER_FAILED}"


def test_only_the_checks_of_a_requests_values_are_the_visitors_mistakes(app_module, caplog):
    from types import SimpleNamespace

    import gradio as gr

    from dimr.demo.request import Request

    with caplog.at_level("INFO"), pytest.raises(gr.Error) as error:
        app_module.checked(SimpleNamespace(session_hash=None), Request.check, model="tiny-dimr", classes=["unicorn"])
    assert error.value.title == "Cannot run" and "unknown class name 'unicorn'" in error.value.message
    [record] = [r for r in caplog.records if r.name.startswith("dimr")]
    assert record.levelname == "INFO" and record.exc_info is None and "refused: unknown class name" in record.message


def test_the_model_menu_says_what_is_installed_when_the_page_loads_not_when_it_was_built(app_module, monkeypatch):
    from dimr.demo import catalogue

    page = app_module.build()
    model = next(block for block in page.blocks.values() if block.elem_id == "model")
    assert ("DiMR-XL/2R (not installed)", "DiMR-XL/2R") in model.choices
    monkeypatch.setattr(catalogue, "missing_parts", lambda name: {})  # downloaded since the page was built
    [on_load] = [fn for fn in page.fns.values()
                 if any(event == "load" for _, event in fn.targets) and model in fn.outputs]
    assert ("DiMR-XL/2R", "DiMR-XL/2R") in on_load.fn()["choices"]
