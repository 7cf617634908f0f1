"""What the demo runs for a latent ImageNet-style model (the released models cannot be downloaded here): a small
random latent DiMR with 1000 classes + null and a small random VAE beside it, chosen with DIMR_MODEL."""

import threading

import pytest
from diffusers import AutoencoderKL

from dimr import DiMRModel, demo

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
    assert demo.default_model() == latent_model
    assert demo.model_choices()[0] == latent_model
    assert "tiny-dimr" in demo.model_choices()


def test_guidance_starts_at_the_papers_value_for_imagenet_and_higher_for_the_shapes_models(latent_model):
    assert demo.default_guidance(latent_model) == 1.4
    assert demo.default_guidance("tiny-dimr") == demo.default_guidance("tiny-baseline") == 3.0


def test_imagenet_classes_by_synonym_and_a_small_panel_of_evenly_spaced_steps(latent_model, monkeypatch):
    monkeypatch.setattr(demo, "PANEL_SIZE_LATENT", 8)  # these images are 16x16; the released models' 256x256
    request = demo.Request.check(latent_model, ["tabby cat", 207], images_per_class=1, num_inference_steps=30)
    assert request.class_ids == (281, 207)
    assert request.captions == ["tabby", "golden retriever"]
    choices = dict((value, label) for label, value in demo.class_choices(latent_model))
    assert len(choices) == 1000 and "tabby cat" in choices[281]  # the picker finds a class by any synonym

    generation = list(demo.stream(request))[-1]
    assert generation.images.shape == (2, 16, 16, 3)
    assert generation.branch_names == ["4x4 latent branch", "8x8 latent branch"]
    # Each latent panel step costs a VAE decode per branch: 20 of the 30 steps, from the first to the last.
    assert len(generation.panel_steps) == demo.MAX_PANEL_STEPS_LATENT
    assert generation.panel_steps[0] == 1 and generation.panel_steps[-1] == 30
    assert generation.branch_images.shape == (20, 2, 2, 8, 8, 3)
    shown = generation.panel_step(2)
    assert shown in generation.panel_steps and abs(shown - 2) <= 1
    panel = generation.branch_panel(2)
    assert [caption for _, caption in panel] == ["4x4 latent branch", "8x8 latent branch", "final: tabby",
                                                 "4x4 latent branch", "8x8 latent branch", "final: golden retriever"]
    assert all(image.size == (256, 256) for image, _ in panel + generation.gallery())


def test_a_stopped_run_ends_after_the_current_step_without_a_result(latent_model):
    # The app sets `stop` when the browser goes away; here it is set before the first step ends.
    stop = threading.Event()
    stop.set()
    updates = demo.stream(demo.Request.check(latent_model, [1], num_inference_steps=250), stop=stop)
    with pytest.raises(RuntimeError, match="stopped before the last step"):
        list(updates)


def test_same_request_same_images(latent_model):
    request = demo.Request.check(latent_model, ["goldfish"], num_inference_steps=3, seed=5)
    first, second = (list(demo.stream(request))[-1] for _ in range(2))
    assert (first.images == second.images).all() and (first.branch_images == second.branch_images).all()
