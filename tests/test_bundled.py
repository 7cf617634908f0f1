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
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors", "training.json", "distortion.json"}
    assert sum(files.values()) < 20_000_000
    info = json.loads((CHECKPOINTS_DIR / name / "training.json").read_text())
    assert info["config"] == name and info["steps"] > 0


def test_both_models_were_trained_for_the_same_steps_on_the_same_batches():
    dimr, baseline = (json.loads((CHECKPOINTS_DIR / n / "training.json").read_text()) for n in BUNDLED)
    assert dimr["steps"] == baseline["steps"] and dimr["batch_size"] == baseline["batch_size"]


def test_tiny_dimr_has_three_branches_and_the_baseline_one():
    dimr, baseline = (load_pipeline(n, device="cpu").model for n in BUNDLED)
    assert dimr.branch_scales == [4, 2, 1] and baseline.branch_scales == [1]


def test_bundled_judge_recognises_real_shapes_and_refuses_broken_ones():
    config = json.loads((CHECKPOINTS_DIR / "shapes-classifier" / "config.json").read_text())
    assert config["validation_images"] >= 5000
    assert config["real_flagged"] <= 0.02 and config["corrupted_flagged"] >= 0.9
    assert load_classifier().config["num_classes"] == len(CLASS_NAMES) + 1  # the shapes and "none"


@pytest.mark.parametrize("name", BUNDLED)
def test_stored_distortion_is_what_the_measure_gives_on_the_same_noise(name):
    """The rates the app shows come from the measure: its first samples, redrawn, get the same verdicts."""
    from dimr.distortion import generated_images, judge, stored_result

    stored = stored_result(CHECKPOINTS_DIR / name)
    settings = stored["settings"]
    images, labels = generated_images(name, 20, settings["steps"], settings["guidance"], settings["sampler"],
                                      settings["seed"], total_samples=settings["samples"], device="cpu",
                                      progress=False)
    flagged, _ = judge(images, labels)
    expected = {i for i in stored["flagged_indices"] if i < 20}
    # Batches of another size may round differently on a CPU: a borderline verdict may flip, not more.
    assert len(set(flagged.nonzero().squeeze(1).tolist()) ^ expected) <= 1
    assert stored["samples"] == settings["samples"] >= 500


def test_tiny_dimr_misdraws_fewer_shapes_than_the_single_resolution_baseline():
    """The lab's lesson, as measured and stored: same size, FLOPs, data and steps; fewer misdrawn samples."""
    from dimr.distortion import stored_result

    from dimr import defaults
    from dimr.pipeline import DEFAULT_SCHEDULER

    dimr, baseline = (stored_result(CHECKPOINTS_DIR / n) for n in BUNDLED)
    assert dimr["settings"] == baseline["settings"]
    # Measured as the demo samples them, so the rates the app shows belong to what the visitor sees.
    assert (dimr["settings"]["guidance"], dimr["settings"]["steps"], dimr["settings"]["sampler"]) == (
        defaults.SHAPES_GUIDANCE, defaults.SHAPES_STEPS, DEFAULT_SCHEDULER)
    assert dimr["ci95"][1] < baseline["ci95"][0], (dimr["rate"], baseline["rate"])
