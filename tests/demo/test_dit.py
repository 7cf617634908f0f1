"""The ImageNet comparison (dimr.demo.imagenet_compare, dimr.demo.dit) with small random models: a tiny DiTTransformer2DModel
laid out as facebook/DiT-XL-2-256 in a Hugging Face cache, and a tiny latent DiMR with ImageNet labels as DIMR_MODEL.
The DiT loop equals diffusers' DiTPipeline, both sides start from bit-identical noise, the endpoint returns both
galleries and the branch panel, bad input and missing weights get clear errors at once."""

import threading

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import DiTPipeline
from dit_models import dit_scheduler, put_dit_in_hub_cache, tiny_dit
from PIL import Image

from dimr.demo import dit, imagenet_compare, timing
from dimr.demo.dit import DIT_REPO, dit_decode, dit_denoise
from dimr.demo.imagenet_compare import ComparisonRequest, initial_noise, stream_comparison
from dimr.demo.refusals import Refused
from dimr.network.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny

LATENT_SHAPE = (4, 16, 16)  # the golden two-branch DiMR's latents; the tiny VAE decodes them to 32x32


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own (offline, from conftest)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def imagenet_dimr(tmp_path, two_branch, tiny_vae):
    """A directory with a latent DiMR with ImageNet labels (1001 classes with the null class) and its VAE in vae/."""
    two_branch.model().save_pretrained(tmp_path / "dimr")
    tiny_vae.save_pretrained(tmp_path / "dimr" / "vae")
    return str(tmp_path / "dimr")


@pytest.fixture
def tiny_setup(imagenet_dimr, hub_cache, tiny_vae, monkeypatch):
    """DIMR_MODEL = a tiny ImageNet DiMR; the tiny DiT in the hub cache; everything on the CPU."""
    monkeypatch.setenv("DIMR_MODEL", imagenet_dimr)
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    put_dit_in_hub_cache(hub_cache, tiny_dit(), tiny_vae)


def run(request):
    updates = list(stream_comparison(request))
    assert all(isinstance(u, imagenet_compare.ComparisonProgress) for u in updates[:-1])
    return updates


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_the_dit_loop_gives_diffusers_dit_pipeline_images_bit_for_bit(guidance_scale, tiny_vae):
    pipe = DiTPipeline(transformer=tiny_dit(), vae=tiny_vae, scheduler=dit_scheduler())
    pipe.set_progress_bar_config(disable=True)
    expected = pipe([1, 207], guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(3),
                    num_inference_steps=4, output_type="pt").images
    *_, latents = dit_denoise(pipe, [1, 207], initial_noise(2, LATENT_SHAPE, 3), guidance_scale, 4)
    assert torch.equal(dit_decode(pipe, latents), expected)
    assert expected.std() > 0


def test_both_models_start_from_bit_identical_noise(tiny_setup, monkeypatch):
    request = ComparisonRequest.check(classes=["golden retriever", 88], images_per_class=2, num_inference_steps=3,
                                      seed=5)
    dimr_pipe, dit_pipe = imagenet_compare.load_comparison(request)
    first_inputs = {}

    def recording(name, network):
        def call(sample, *args, **kwargs):
            first_inputs.setdefault(name, sample.clone())
            return network(sample, *args, **kwargs)
        return call

    imagenet_compare.prepare(request)  # both models timed (dimr.demo.timing) before their calls are recorded
    # DiMRPipeline calls model.forward_branches; the DiT loop calls the transformer, which calls its forward.
    monkeypatch.setattr(dimr_pipe.model, "forward_branches", recording("dimr", dimr_pipe.model.forward_branches))
    monkeypatch.setattr(dit_pipe.transformer, "forward", recording("dit", dit_pipe.transformer.forward))
    comparison = run(request)[-1]
    noise = initial_noise(4, LATENT_SHAPE, 5)
    assert torch.equal(comparison.noise, noise)
    # The first network call sees [conditional half; unconditional half], both the initial noise.
    for name in ("dimr", "dit"):
        assert first_inputs[name].shape == (8, *LATENT_SHAPE), name
        assert torch.equal(first_inputs[name][:4], noise) and torch.equal(first_inputs[name][4:], noise), name
    assert not torch.equal(comparison.noise, initial_noise(4, LATENT_SHAPE, 6)), "the seed must choose the noise"


def test_a_comparison_returns_both_galleries_and_the_branch_panel(tiny_setup):
    request = ComparisonRequest.check(classes=[207, "macaw"], num_inference_steps=3, seed=1, patch_grid=True)
    updates = run(request)
    models = [u.model for u in updates[:-1]]
    assert models == sorted(models, key=lambda model: model == "DiT-XL/2"), "DiMR's progress, then DiT's"
    comparison = updates[-1]
    dimr_gallery, dit_gallery = comparison.dimr.gallery(), comparison.dit_gallery()
    assert [c for _, c in dimr_gallery] == [c for _, c in dit_gallery] == ["golden retriever", "macaw"]
    assert all(image.size == (256, 256) for image, _ in dimr_gallery + dit_gallery)  # 32x32, enlarged 8x
    assert comparison.dit_tokens == 8  # 16x16 latents in 2x2 patches
    assert not np.array_equal(np.asarray(dimr_gallery[0][0]), np.asarray(dit_gallery[0][0]))
    assert [c for _, c in comparison.dimr.branch_panel()[:3]] == ["8x8 latent transformer (2x2 px patches)",
                                                                  "16x16 latent ConvNeXt", "final: golden retriever"]
    status = imagenet_compare.describe_comparison(comparison)
    assert "seed 1" in status and "DDIMScheduler" in status and "guidance 4" in status


def test_a_callers_stop_event_stays_clear_after_a_comparison_that_ran_to_the_end(tiny_setup):
    """The DiMR phase finishing must not set the caller's `stop`, or the DiT phase after it would end as stopped."""
    stop = threading.Event()
    request = ComparisonRequest.check(classes=[207], num_inference_steps=2, seed=1)
    comparison = list(stream_comparison(request, stop=stop))[-1]
    assert isinstance(comparison, imagenet_compare.Comparison) and not stop.is_set()


def test_the_patch_grid_marks_every_token_border_and_nothing_else():
    plain = Image.new("RGB", (256, 256))
    gridded = np.asarray(imagenet_compare.draw_patch_grid(plain, 16)).max(axis=2)
    lines = [k * 16 for k in range(1, 16)]
    assert (gridded[:, lines] > 0).all() and (gridded[lines, :] > 0).all()
    others = [x for x in range(256) if x not in lines]
    assert (gridded[np.ix_(others, others)] == 0).all()


@pytest.mark.parametrize("arguments, message", [
    (dict(classes=["not a class at all"]), "not a class at all"),
    (dict(classes=[]), "no class chosen"),
    (dict(classes=[1], dit_guidance_scale=-1), "^dit_guidance_scale=-1 is out of range: use 0..10$"),
    (dict(classes=[1], dimr_guidance_scale=float("nan")), "^dimr_guidance_scale must be a finite number"),
    (dict(classes=[1], dit_guidance_scale="high"), "^dit_guidance_scale must be a finite number"),
    (dict(classes=[1], patch_grid="yes"), "patch_grid must be true or false"),
    (dict(classes=[1], num_inference_steps=0), "num_inference_steps=0"),
    (dict(classes=[1, 2], images_per_class=9), "at most 16"),
])
def test_bad_input_is_rejected_before_anything_loads(arguments, message, monkeypatch):
    monkeypatch.setattr(imagenet_compare, "load_dit", lambda *a: pytest.fail("loaded DiT for a bad request"))
    with pytest.raises(ValueError, match=message):
        ComparisonRequest.check(**arguments)


def test_the_dimr_side_is_dimr_xl_unless_dimr_model_is_an_imagenet_model(imagenet_dimr, monkeypatch):
    monkeypatch.delenv("DIMR_MODEL", raising=False)
    assert imagenet_compare.imagenet_dimr_model() == "DiMR-XL/2R"
    monkeypatch.setenv("DIMR_MODEL", "tiny-dimr")  # a shapes model: not ImageNet
    assert imagenet_compare.imagenet_dimr_model() == "DiMR-XL/2R"
    monkeypatch.setenv("DIMR_MODEL", imagenet_dimr)
    assert imagenet_compare.imagenet_dimr_model() == imagenet_dimr


def test_offline_without_the_dit_weights_the_error_says_what_to_do_at_once(hub_cache, waits):
    with pytest.raises(CheckpointError) as err:
        dit.load_dit("cpu")
    assert waits == []
    assert "not in the Hugging Face cache" in str(err.value)
    assert f"huggingface-cli download {DIT_REPO}" in str(err.value)


def test_a_dit_whose_latents_differ_from_dimr_is_refused(imagenet_dimr, hub_cache, tiny_vae, monkeypatch):
    monkeypatch.setenv("DIMR_MODEL", imagenet_dimr)
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    put_dit_in_hub_cache(hub_cache, tiny_dit(sample_size=8), tiny_vae)
    with pytest.raises(ValueError, match=r"latents of shape \(4, 16, 16\) but DiT-XL/2 \(4, 8, 8\)"):
        imagenet_compare.load_comparison(ComparisonRequest.check(classes=[1]))


def test_the_wait_estimate_grows_with_steps_and_images(tiny_setup, monkeypatch):
    def estimate(**arguments):
        request = ComparisonRequest.check(**{"classes": [1], **arguments})
        return imagenet_compare.estimate_seconds(request, *imagenet_compare.load_comparison(request))

    one = estimate(num_inference_steps=10)
    assert 0 < one < estimate(num_inference_steps=20) and one < estimate(num_inference_steps=10, images_per_class=2)
    assert timing.wait_note(30) == "about 30 seconds"
    assert timing.wait_note(600) == "about 10 minutes"
    monkeypatch.setenv("DIMR_MAX_REQUEST_SECONDS", str(one / 2))  # the limit of every request applies to it too
    with pytest.raises(Refused, match="What fits, the rest unchanged: "):
        estimate(num_inference_steps=10)


def test_the_app_endpoint_returns_both_galleries_and_clear_errors(tmp_path, imagenet_dimr, tiny_vae):
    """`python app.py` with DIMR_MODEL = the tiny ImageNet DiMR and the tiny DiT in its Hugging Face cache."""
    from app_server import running_app
    from gradio_client import Client

    put_dit_in_hub_cache(tmp_path / "hf-home" / "hub", tiny_dit(), tiny_vae)
    env = {"DIMR_MODEL": imagenet_dimr, "DIMR_DEVICE": "cpu",
           "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub")}
    with running_app(tmp_path, env) as (url, _):
        client = Client(url, verbose=False)
        dimr, dit, panel, status = client.predict(
            classes=["golden retriever", 88], images_per_class=1, num_inference_steps=2, seed=0,
            dimr_guidance_scale=1.4, dit_guidance_scale=4.0, patch_grid=True, api_name="/compare_imagenet")
        assert [item["caption"] for item in dimr] == [item["caption"] for item in dit] == ["golden retriever", "macaw"]
        for item in dimr + dit:
            with Image.open(item["image"]) as image:
                assert image.size == (256, 256) and np.asarray(image).std() > 0
        branches = ["8x8 latent transformer (2x2 px patches)", "16x16 latent ConvNeXt"]
        assert [item["caption"] for item in panel] == [*branches, "final: golden retriever", *branches, "final: macaw"]
        assert "Same noise (seed 0)" in status and "DiT-XL/2: 2 images, 2 steps" in status
        with pytest.raises(Exception, match="dit_guidance_scale=-2 is out of range: use 0..10"):
            client.predict(classes=[1], images_per_class=1, num_inference_steps=2, seed=0, dimr_guidance_scale=1.4,
                           dit_guidance_scale=-2, patch_grid=False, api_name="/compare_imagenet")


def test_the_tab_note_names_every_model_still_missing_and_how_to_install_it(hub_cache, tiny_vae, monkeypatch):
    monkeypatch.delenv("DIMR_MODEL", raising=False)
    assert list(imagenet_compare.missing_models()) == ["DiMR-XL/2R", "the SD VAE (stabilityai/sd-vae-ft-ema)",
                                                       "DiT-XL/2"]
    # The visitor reads one sentence, with no command and no path; the operator's log has the instructions.
    assert imagenet_compare.setup_note() == imagenet_compare.NOT_INSTALLED
    note = imagenet_compare.operator_note()
    assert "python -m dimr convert DiMR-XL_2R_800epochs.pth --variant DiMR-XL/2R" in note
    assert "huggingface-cli download facebook/DiT-XL-2-256` (3 GB transformer + 335 MB VAE)" in note
    put_dit_in_hub_cache(hub_cache, tiny_dit(), tiny_vae)
    assert list(imagenet_compare.missing_models()) == ["DiMR-XL/2R", "the SD VAE (stabilityai/sd-vae-ft-ema)"]


def test_offline_a_comparison_is_refused_at_once_in_one_sentence_and_the_log_names_every_missing_model(
        hub_cache, monkeypatch, waits):
    monkeypatch.delenv("DIMR_MODEL", raising=False)
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    with pytest.raises(ValueError) as err:
        imagenet_compare.load_comparison(ComparisonRequest.check(classes=[1]))
    assert waits == []
    assert str(err.value) == imagenet_compare.NOT_INSTALLED  # for the visitor; the rest is the operator's
    operator = err.value.operator
    assert "- DiMR-XL/2R: Download DiMR-XL_2R_800epochs.pth from https://huggingface.co/QHL067/DiMR" in operator
    assert "- DiT-XL/2: On a connected machine run `huggingface-cli download facebook/DiT-XL-2-256`" in operator


def test_dit_samples_on_the_one_sampling_thread(tiny_setup, monkeypatch):
    request = ComparisonRequest.check(classes=[207], num_inference_steps=2, seed=1)
    _, dit_pipe = imagenet_compare.load_comparison(request)
    threads = []
    forward = dit_pipe.transformer.forward
    monkeypatch.setattr(dit_pipe.transformer, "forward",
                        lambda *a, **kw: threads.append(threading.current_thread().name) or forward(*a, **kw))
    run(request)
    assert threads and set(threads) == {"dimr-sampling"}


def test_the_request_benchmark_runs_on_cpu_and_writes_its_rows(tmp_path, run_script):
    import json

    out = tmp_path / "compare.json"
    stdout = run_script("benchmarks/compare_imagenet.py", "--tiny", "--device", "cpu", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cpu" and report["settings"]["steps"] == 2
    row = report["requests"]["1"]
    assert row["first_request_s"] > 0 and len(row["seconds"]) == 1 and row["median_s"] > 0
    assert row["peak_extra_gib"] is None  # measured on GPUs only
    assert f"wrote {out}" in stdout
