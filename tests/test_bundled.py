"""The bundled models: small, loadable by name like the big ones, and sampling finite 32x32 shapes images."""

import json

import pytest
import torch

from dimr.classifier import load_classifier
from dimr.data.shapes import CLASS_NAMES
from dimr.loading import CHECKPOINTS_DIR, load_pipeline

BUNDLED = ["tiny-dimr", "tiny-baseline"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_loads_by_name_and_samples_finite_images(name):
    pipe = load_pipeline(name, device="cpu")
    assert pipe.model.config.class_names == CLASS_NAMES and pipe.vae is None
    images = pipe(["circle", "stripes"], num_inference_steps=3, guidance_scale=1.5, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 32, 32)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_is_small_safetensors_with_its_training_record(name):
    files = {p.name: p.stat().st_size for p in (CHECKPOINTS_DIR / name).iterdir()}
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors", "training.json"}
    assert sum(files.values()) < 20_000_000
    info = json.loads((CHECKPOINTS_DIR / name / "training.json").read_text())
    assert info["config"] == name and info["steps"] > 0


def test_both_models_were_trained_for_the_same_steps_on_the_same_batches():
    dimr, baseline = (json.loads((CHECKPOINTS_DIR / n / "training.json").read_text()) for n in BUNDLED)
    assert dimr["steps"] == baseline["steps"] and dimr["batch_size"] == baseline["batch_size"]


def test_tiny_dimr_has_three_branches_and_the_baseline_one():
    dimr, baseline = (load_pipeline(n, device="cpu").model for n in BUNDLED)
    assert dimr.branch_scales == [4, 2, 1] and baseline.branch_scales == [1]


def test_bundled_classifier_is_accurate_on_held_out_shapes():
    config = json.loads((CHECKPOINTS_DIR / "shapes-classifier" / "config.json").read_text())
    assert config["validation_accuracy"] >= 0.99 and config["validation_images"] >= 5000
    assert load_classifier().config["num_classes"] == len(CLASS_NAMES)


def test_tiny_dimr_draws_recognisable_shapes():
    """The demo's promise: asked for a class, the bundled tiny DiMR draws that shape (judged by the classifier)."""
    from dimr.distortion import distortion_rate, generated_images

    images, labels = generated_images("tiny-dimr", 20, num_inference_steps=25, guidance_scale=1.5, device="cpu",
                                      progress=False)
    result = distortion_rate(images, labels, load_classifier())
    recognised_classes = [name for name, (flagged, total) in result["per_class"].items() if flagged < total]
    assert result["flagged"] <= 10, result
    assert len(recognised_classes) >= 8, result
