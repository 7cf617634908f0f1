"""What the demo runs, without its UI (dimr.demo.catalogue, dimr.demo.request, dimr.demo.serving, dimr.demo.panel, dimr.demo.shapes_lab), for a
latent ImageNet-style model (the released models cannot be downloaded here): a small random latent DiMR with 1000
classes + null and a small random VAE beside it, chosen with DIMR_MODEL; and what the demo adds for the shapes
models: real reference shapes, the judge's verdicts, the branch-change view, the stored distortion."""

import json
import threading

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from dimr import DiMRModel
from dimr.demo import catalogue, panel, serving, shapes_lab
from dimr.demo.request import Request
from dimr.lab.distortion import judge

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny

LATENT_DIMR = dict(channels=4, num_classes=1001, norm_type="TDRMSN", stage_configs=[
    dict(block_type="TransformerBlock", dim=32, hidden_dim=64, num_attention_heads=2, num_blocks=1, max_height=4,
         max_width=4, input_feature_ratio=2),
    dict(block_type="ConvNeXtBlock", dim=16, hidden_dim=32, kernel_size=3, num_blocks=1, max_height=8, max_width=8),
])


@pytest.fixture
def latent_model(tmp_path, monkeypatch):
    """A directory with a latent DiMR (4x8x8 latents) and, in vae/, a VAE decoding them to 16x16 images."""
    path = tmp_path / "latent-dimr"
    DiMRModel(**LATENT_DIMR).save_pretrained(path)
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                  norm_num_groups=32).save_pretrained(path / "vae")
    monkeypatch.setenv("DIMR_MODEL", str(path))
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    return str(path)


def test_a_model_directory_in_dimr_model_is_offered_first(latent_model):
    assert catalogue.default_model() == latent_model
    assert catalogue.model_choices()[0] == latent_model
    assert "tiny-dimr" in catalogue.model_choices()


def test_guidance_starts_at_the_papers_value_for_imagenet_and_higher_for_the_shapes_models(latent_model):
    assert catalogue.default_guidance(latent_model) == 1.4
    assert catalogue.default_guidance("tiny-dimr") == catalogue.default_guidance("tiny-baseline") == 3.0


def test_imagenet_classes_by_synonym_and_a_small_panel_of_evenly_spaced_steps(latent_model, monkeypatch):
    monkeypatch.setattr(panel, "PANEL_SIZE_LATENT", 8)  # these images are 16x16; the released models' 256x256
    request = Request.check(model=latent_model, classes=["tabby cat", 207], images_per_class=1,
                                 num_inference_steps=30)
    assert request.class_ids == (281, 207)
    assert request.captions == ["tabby", "golden retriever"]
    choices = dict((value, label) for label, value in catalogue.model_labels(latent_model).choices())
    assert len(choices) == 1000 and "tabby cat" in choices[281]  # the picker finds a class by any synonym

    generation = list(serving.stream(request))[-1]
    assert generation.images.shape == (2, 16, 16, 3)
    assert generation.branch_names == ["4x4 latent transformer (2x2 px patches)", "8x8 latent ConvNeXt"]
    # Each latent panel step costs a VAE decode per branch: 20 of the 30 steps, from the first to the last.
    assert len(generation.panel_steps) == panel.MAX_PANEL_STEPS_LATENT
    assert generation.panel_steps[0] == 1 and generation.panel_steps[-1] == 30
    assert generation.branch_images.shape == (20, 2, 2, 8, 8, 3)
    shown = generation.panel_step(2)
    assert shown in generation.panel_steps and abs(shown - 2) <= 1
    rows = generation.branch_panel(2)
    branches = ["4x4 latent transformer (2x2 px patches)", "8x8 latent ConvNeXt"]
    assert [caption for _, caption in rows] == [*branches, "final: tabby", *branches, "final: golden retriever"]
    assert all(image.size == (256, 256) for image, _ in rows + generation.gallery())


def test_a_stopped_run_ends_after_the_current_step_without_a_result(latent_model):
    # The app sets `stop` when the browser goes away; here it is set before the first step ends.
    stop = threading.Event()
    stop.set()
    updates = serving.stream(Request.check(model=latent_model, classes=[1], num_inference_steps=250), stop=stop)
    with pytest.raises(RuntimeError, match="stopped before the last step"):
        list(updates)


def test_same_request_same_images(latent_model):
    request = Request.check(model=latent_model, classes=["goldfish"], num_inference_steps=3, seed=5)
    first, second = (list(serving.stream(request))[-1] for _ in range(2))
    assert (first.images == second.images).all() and (first.branch_images == second.branch_images).all()


def test_requests_are_built_by_keyword_and_start_at_each_models_defaults(latent_model):
    with pytest.raises(TypeError):
        Request.check(latent_model, ["goldfish"], 1, 1.4)  # by position, two alike numbers could swap unnoticed
    imagenet = Request.check(model=latent_model, classes=["goldfish"])
    shapes = Request.check(model="tiny-dimr", classes=["ring"])
    assert (imagenet.guidance_scale, imagenet.num_inference_steps) == (1.4, 50)  # the paper's guidance
    assert (shapes.guidance_scale, shapes.num_inference_steps) == (3.0, 25)
    assert catalogue.default_steps(latent_model) == 50 and catalogue.default_steps("tiny-baseline") == 25


def test_the_step_limit_counts_model_evaluations_and_names_the_most_steps_a_sampler_may_take():
    Request.check(model="tiny-dimr", classes=["ring"], num_inference_steps=125, sampler="heun")
    with pytest.raises(ValueError, match=r"126 steps of heun run the model 251 times; the demo runs it at most 250 "
                                         r"times per request: use at most 125 steps with heun"):
        Request.check(model="tiny-dimr", classes=["ring"], num_inference_steps=126, sampler="heun")


def test_heuns_branch_panel_after_the_last_step_shows_the_final_image():
    """Heun runs two model evaluations per step: the panel after step 4 of 4 is the estimate its final image comes
    from, not that of the fourth evaluation (half-way)."""
    request = Request.check(model="tiny-dimr", classes=["ring", "star"], num_inference_steps=4, sampler="heun")
    generation = list(serving.stream(request))[-1]
    assert generation.panel_steps == [1, 2, 3, 4]
    assert generation.panel_note(4) == "Branch panel after step 4 of 4."
    last_branch = generation.branch_images[-1, -1].astype(int)
    assert np.abs(last_branch - generation.images).max() <= 1


@pytest.mark.parametrize("sampler", [["dpm++2m"], {"name": "dpm++2m"}])
def test_a_sampler_that_is_not_one_name_is_refused_by_name(sampler):
    with pytest.raises(ValueError, match=r"sampler must be one name, one of dpm-solver-3s, .*; got (list|dict)"):
        Request.check(model="tiny-dimr", classes=["ring"], sampler=sampler)


def test_branch_names_say_what_each_branch_is(latent_model):
    assert catalogue.model_branches("tiny-dimr") == ["8x8 transformer (4x4 px patches)", "16x16 ConvNeXt", "32x32 ConvNeXt"]
    assert catalogue.model_branches("tiny-baseline") == ["8x8 transformer (4x4 px patches)"]
    assert catalogue.model_branches(latent_model) == ["4x4 latent transformer (2x2 px patches)", "8x8 latent ConvNeXt"]


def test_real_reference_shapes_are_the_classes_asked_for():
    references = shapes_lab.reference_shapes([4, 8, 4])
    assert [caption for _, caption in references] == ["real ring", "real checkerboard", "real ring"]
    assert references[0][0].tobytes() == references[2][0].tobytes()  # a class looks the same wherever it appears
    images = torch.stack([torch.from_numpy(np.array(image.resize((32, 32), Image.NEAREST))).permute(2, 0, 1)
                          for image, _ in references])
    flagged, p_intended = judge(images, torch.tensor([4, 8, 4]))
    assert not flagged.any() and (p_intended > 0.9).all()


def fake_generation(model, class_ids, images, branch_images):
    request = Request.check(model=model, classes=class_ids, num_inference_steps=1)
    return panel.Generation(request=request, captions=request.captions, images=images,
                           branch_names=catalogue.model_branches(model), panel_steps=[1], branch_images=branch_images,
                           seconds=0.0)


def test_the_judges_verdicts_caption_real_shapes_as_recognised_and_a_blank_as_misdrawn():
    real = np.stack([np.asarray(image.resize((32, 32), Image.NEAREST)) for image, _ in shapes_lab.reference_shapes([4])])
    blank = np.full_like(real, 128)
    generation = fake_generation("tiny-baseline", ["ring", "ring"], np.concatenate([real, blank]),
                                 np.zeros((1, 1, 2, 32, 32, 3), np.uint8))
    first, second = [caption for _, caption in shapes_lab.judged_gallery(generation)]
    assert first.startswith("ring ✓ recognised, p\u00a0") and float(first[-4:]) > 0.9
    assert second.startswith("ring ✗ misdrawn, p\u00a0") and float(second[-4:]) < 0.5


def test_the_change_view_shows_what_each_finer_branch_changes_on_mid_grey():
    estimates = np.zeros((1, 3, 1, 32, 32, 3), np.uint8)
    estimates[0, 0] = 100  # the coarse estimate
    estimates[0, 1] = 150  # the next branch brightens everything by 50 of 255
    estimates[0, 2] = 150  # the finest changes nothing
    generation = fake_generation("tiny-dimr", ["ring"], np.full((1, 32, 32, 3), 7, np.uint8), estimates)
    rows = generation.branch_panel(view=panel.CHANGES)
    assert [caption for _, caption in rows] == ["8x8 transformer (4x4 px patches)", "change by 16x16 ConvNeXt, ±20%",
                                                 "change by 32x32 ConvNeXt, ±0%", "final: ring"]
    assert [int(np.asarray(image).mean()) for image, _ in rows] == [100, 255, 128, 7]
    assert "each map stretched to its own range" in generation.panel_note(1, panel.CHANGES)
    assert "stretched" not in generation.panel_note(1, panel.ESTIMATES)
    with pytest.raises(ValueError, match="view must be 'estimates' or 'changes', got 'diff'"):
        generation.branch_panel(view="diff")


@pytest.mark.parametrize("extent", [3, 40])
def test_a_change_map_uses_its_full_contrast_whether_the_change_is_small_or_large(extent):
    """Late steps change little and early steps a lot: either way the map spans black to white, in grey (the
    brightness change, not colour noise), and the caption's extent says how large the change is."""
    coarse = np.full((32, 32, 3), 128, np.uint8)
    finer = coarse.copy()
    finer[:16, :, 0] += 3 * extent  # brighter at the top, in red only: brightness + extent
    finer[16:, :, 1] -= 3 * extent  # darker at the bottom, in green only: brightness - extent
    change, fraction = panel.change_map(finer, coarse)
    assert (change[..., 0] == change[..., 1]).all() and (change[..., 1] == change[..., 2]).all()
    assert (change[:16] == 255).all() and (change[16:] == 1).all()
    assert fraction == pytest.approx(extent / 255)


def test_measured_distortion_is_read_from_the_models_directory(tmp_path, monkeypatch):
    from dimr.sampling import loading

    monkeypatch.setattr(loading, "CHECKPOINTS_DIR", tmp_path)
    (tmp_path / "tiny-dimr").mkdir()
    (tmp_path / "tiny-dimr" / "config.json").write_text("{}")  # what makes a directory a model
    assert shapes_lab.measured_distortion("tiny-dimr") is None  # not measured yet: no file, no error
    (tmp_path / "tiny-dimr" / "distortion.json").write_text(json.dumps({"rate": 0.1}))
    assert shapes_lab.measured_distortion("tiny-dimr") == {"rate": 0.1}
    assert shapes_lab.measured_distortion("DiMR-XL/2R") is None


def test_an_unavailable_released_model_tells_the_visitor_what_works_and_the_operator_what_to_do(monkeypatch):
    monkeypatch.setenv("DIMR_DEVICE", "cpu")
    with pytest.raises(serving.ModelUnavailable) as error:
        serving.load("DiMR-XL/2R")
    message = str(error.value)
    assert message == "DiMR-XL/2R is not available on this server right now; tiny-dimr and tiny-baseline work meanwhile."
    assert "python -m dimr convert" in error.value.operator


def test_same_classes_carry_over_between_the_shapes_models_only(latent_model):
    assert catalogue.same_classes("tiny-dimr", "tiny-baseline")
    assert not catalogue.same_classes("tiny-dimr", latent_model)
