"""The distortion rate: its interval, its judge (the shapes classifier) and the command."""

import json
import re

import pytest
import torch

from dimr.__main__ import main
from dimr.classifier import add_pixel_noise, load_classifier
from dimr.data.shapes import CLASS_NAMES
from dimr.distortion import distortion_rate, even_labels, real_images, wilson_interval
from dimr.model import DiMRModel


def test_wilson_interval_matches_published_values():
    # Wilson score intervals (z = 1.96) as tabulated by Newcombe (1998), Statistics in Medicine 17:857.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    with pytest.raises(ValueError, match="at least one sample"):
        wilson_interval(0, 0)


def test_classes_are_spread_evenly_over_samples():
    labels = even_labels(25)
    assert labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    images, real_labels = real_images(25)
    assert torch.equal(real_labels, labels) and images.shape == (25, 3, 32, 32)


def test_the_classifier_recognises_real_shapes_even_with_slight_noise_and_flags_noise():
    classifier = load_classifier()
    images, labels = real_images(200)
    for std in (0, 8):
        real = distortion_rate(add_pixel_noise(images, std) if std else images, labels, classifier)
        assert real["rate"] <= 0.01 and real["accuracy"] >= 0.99, (std, real)
    noise = torch.randint(0, 256, (100, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    flagged = distortion_rate(noise, even_labels(100), classifier)
    assert flagged["rate"] >= 0.8
    assert sum(n for _, n in flagged["per_class"].values()) == 100


@pytest.fixture
def untrained_shapes_model(tmp_path):
    model = DiMRModel(channels=3, num_classes=len(CLASS_NAMES) + 1, class_names=CLASS_NAMES, stage_configs=[
        {"block_type": "TransformerBlock", "dim": 32, "hidden_dim": 64, "num_attention_heads": 2, "num_blocks": 1,
         "max_height": 8, "max_width": 8, "input_feature_ratio": 4, "head_patch_size": 4}])
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_command_prints_the_rate_with_its_interval(untrained_shapes_model, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    assert main(["distortion", "--model", str(untrained_shapes_model), "--samples", "10", "--steps", "2",
                 "--json", str(out_json), "--save-grid", str(tmp_path / "grid.png")]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"distortion rate of .*: (\d+\.\d)% \((\d+) of 10 samples\), 95% CI (\d+\.\d)%-(\d+\.\d)% \(Wilson\)",
                      printed)
    assert match, printed
    result = json.loads(out_json.read_text())
    assert result["samples"] == 10 and result["steps"] == 2
    low, high = wilson_interval(result["flagged"], 10)
    assert float(match.group(3)) == pytest.approx(100 * low, abs=0.06)
    assert float(match.group(4)) == pytest.approx(100 * high, abs=0.06)
    assert (tmp_path / "grid.png").is_file()


def test_command_on_real_data(capsys):
    assert main(["distortion", "--model", "real", "--samples", "30"]) == 0
    assert "distortion rate of real: 0.0% (0 of 30 samples)" in capsys.readouterr().out


def test_command_rejects_bad_arguments(capsys):
    assert main(["distortion", "--model", "real", "--samples", "0"]) == 2
    assert "--samples must be at least 1, got 0" in capsys.readouterr().err
    assert main(["distortion", "--model", "real", "--threshold", "1.5"]) == 2
    assert "--threshold must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_a_model_of_other_classes_is_refused(tmp_path, capsys):
    model = DiMRModel(channels=3, num_classes=5, stage_configs=[
        {"block_type": "TransformerBlock", "dim": 16, "hidden_dim": 32, "num_attention_heads": 2, "num_blocks": 1,
         "max_height": 8, "max_width": 8, "input_feature_ratio": 4, "head_patch_size": 4}])
    model.save_pretrained(tmp_path / "other")
    assert main(["distortion", "--model", str(tmp_path / "other"), "--samples", "4", "--steps", "1"]) == 2
    assert "was not trained on the shapes classes" in capsys.readouterr().err
