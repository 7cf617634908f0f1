"""The distortion measure: its interval, its distances, its judge (validated on real and broken shapes) and
the command."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dimr.__main__ import main
from dimr.lab.classifier import CORRUPT_VALIDATION_SEED, add_pixel_noise, corrupted_dataset, load_classifier
from dimr.lab.corruptions import corrupt
from dimr.lab.distortion import (
    FLAG_COLOUR,
    REAL_SEED,
    distortion_rate,
    even_labels,
    frechet_distance,
    precision_recall,
    real_images,
    real_reference,
    stored_result,
    wilson_interval,
)
from dimr.lab.shapes import CLASS_NAMES, colourise, render_coverage, sample_parameters
from dimr.network.model import DiMRModel


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


def test_frechet_distance_follows_the_gaussian_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # N(0, I) against N(m, 4 I): |m|^2 + 2 (1 + 4 - 2 * 2) = |m|^2 + 2
    b = 2 * torch.randn(20000, 2, generator=g) + torch.tensor([3.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(9 + 2, rel=0.03)


def test_precision_and_recall_see_fidelity_and_coverage_apart():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    assert precision_recall(real, real) == (1.0, 1.0)
    far_away = torch.randn(400, 4, generator=g) + 50
    assert precision_recall(real, far_away) == (0.0, 0.0)
    # Samples collapsed onto a few real points: all faithful, little coverage.
    collapsed = real[:10].repeat(40, 1)
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.2


@pytest.fixture(scope="module")
def judge():
    return load_classifier()


def test_the_judge_recognises_held_out_real_shapes_even_with_slight_noise(judge):
    images, labels = real_images(500)
    for std in (0, 8):
        real = distortion_rate(add_pixel_noise(images, std) if std else images, labels, judge)
        assert real["rate"] <= 0.02, (std, real)


def test_the_judge_flags_broken_shapes(judge):
    images, labels, kinds = corrupted_dataset(1400, CORRUPT_VALIDATION_SEED)
    result = distortion_rate(images, labels, judge)
    assert result["rate"] >= 0.9, result
    noise = torch.randint(0, 256, (100, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert distortion_rate(noise, even_labels(100), judge)["rate"] >= 0.9


# The misdrawings seen in samples of the tiny models, each as the corruption that makes it from a real render.
MISDRAWINGS = [("triangle", "blob"), ("triangle", "amorphous"), ("square", "blob"), ("star", "amorphous"),
               ("plus", "erase"), ("frame", "warp"), ("stripes", "warp"), ("checkerboard", "scramble"),
               ("checkerboard", "blob"), ("ring", "erase"), ("dots", "scramble")]


@pytest.mark.parametrize("shape,kind", MISDRAWINGS)
def test_the_judge_flags_each_kind_of_misdrawing(judge, shape, kind):
    params = sample_parameters(400, seed=21)
    keep = np.nonzero(params["labels"] == CLASS_NAMES.index(shape))[0]
    params = {k: v[keep] for k, v in params.items()}
    coverage = corrupt(render_coverage(params), [kind] * len(keep), torch.Generator().manual_seed(0))
    flagged = distortion_rate(colourise(coverage, params), torch.as_tensor(params["labels"]), judge)
    assert flagged["rate"] >= 0.9, (shape, kind, flagged["rate"])


def test_real_renders_against_real_renders_are_the_floor_of_the_distances(judge):
    reference = real_reference(judge, 300)
    floor = distortion_rate(*real_images(300, seed=REAL_SEED + 2), judge, reference=reference)
    params = sample_parameters(300, seed=REAL_SEED + 2)
    blurred = corrupt(render_coverage(params), ["blur"] * 300, torch.Generator().manual_seed(0))
    broken = distortion_rate(colourise(blurred, params), torch.as_tensor(params["labels"]), judge, reference=reference)
    # k-nearest-neighbour manifolds of finite samples miss a few points even for the same distribution.
    assert floor["precision"] >= 0.85 and floor["recall"] >= 0.85
    assert broken["fid"] > 5 * floor["fid"] and broken["precision"] < floor["precision"] - 0.3
    assert set(floor["fid_per_class"]) == set(CLASS_NAMES)


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
    assert re.search(r"judge-feature FID [\d.e+]+ \(real vs real: [\d.e+]+\), precision", printed), printed
    result = json.loads(out_json.read_text())
    assert result["samples"] == 10 and result["settings"]["steps"] == 2
    low, high = wilson_interval(result["flagged"], 10)
    assert float(match.group(3)) == pytest.approx(100 * low, abs=0.06)
    assert float(match.group(4)) == pytest.approx(100 * high, abs=0.06)
    assert {"fid", "precision", "recall", "fid_per_class"} <= set(result["real"])


def test_the_grid_frames_flagged_samples_in_red(untrained_shapes_model, tmp_path):
    # An untrained model draws noise, which the judge flags: every sample gets a red frame.
    grid_path, out_json = tmp_path / "grid.png", tmp_path / "result.json"
    assert main(["distortion", "--model", str(untrained_shapes_model), "--samples", "10", "--steps", "2",
                 "--json", str(out_json), "--save-grid", str(grid_path)]) == 0
    flagged = set(json.loads(out_json.read_text())["flagged_indices"])
    assert flagged
    grid = np.asarray(Image.open(grid_path))
    cell = 2 * 32 + 2  # images are enlarged twice, with a 2-pixel border
    corners = [tuple(grid[0, i * cell]) for i in range(10)]
    assert [c == FLAG_COLOUR for c in corners] == [i in flagged for i in range(10)]


def test_store_writes_the_result_next_to_the_model_for_the_app(untrained_shapes_model, capsys):
    assert stored_result(untrained_shapes_model) is None
    assert main(["distortion", "--model", str(untrained_shapes_model), "--samples", "10", "--steps", "2",
                 "--store"]) == 0
    stored = stored_result(untrained_shapes_model)
    assert stored["samples"] == 10 and set(stored["per_class"]) == set(CLASS_NAMES)
    assert stored["settings"]["steps"] == 2 and "fid" in stored


def test_command_on_real_data(capsys):
    assert main(["distortion", "--model", "real", "--samples", "30"]) == 0
    assert "distortion rate of real: 0.0% (0 of 30 samples)" in capsys.readouterr().out
    assert main(["distortion", "--model", "real", "--samples", "30", "--store"]) == 2
    assert "--store needs a model" in capsys.readouterr().err


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


def test_branch_refinement_tells_a_finer_branch_that_adds_detail_from_one_that_moves_the_layout():
    from dimr.lab.distortion import branch_refinement

    coarse = torch.rand(3, 2, 3, 8, 8) * 2 - 1  # [steps, batch, C, 8, 8]
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 0.4 - 0.2  # averages 0 over 2x2
    keeps = coarse.repeat_interleave(2, -1).repeat_interleave(2, -2) + checker
    moves = keeps + 0.2  # the same detail, on a layout 0.2 brighter everywhere
    kept, moved = branch_refinement([coarse, keeps]), branch_refinement([coarse, moves])
    torch.testing.assert_close(kept["moved"], torch.zeros(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved["moved"], torch.full((1, 2), 0.2 * 127.5), atol=1e-3, rtol=0)
    # Both add the checkerboard (|0.2| at every pixel) below the coarse grid.
    torch.testing.assert_close(kept["detail"], torch.full((1, 2), 0.2 * 127.5), atol=1e-3, rtol=0)
    torch.testing.assert_close(moved["detail"], kept["detail"])


def test_the_measure_of_a_multi_branch_model_reports_its_branches_per_class(tmp_path, capsys):
    model = DiMRModel(channels=3, num_classes=len(CLASS_NAMES) + 1, class_names=CLASS_NAMES, stage_configs=[
        {"block_type": "TransformerBlock", "dim": 32, "hidden_dim": 64, "num_attention_heads": 2, "num_blocks": 1,
         "max_height": 8, "max_width": 8, "input_feature_ratio": 4},
        {"block_type": "ConvNeXtBlock", "dim": 16, "hidden_dim": 32, "kernel_size": 7, "num_blocks": 1,
         "max_height": 32, "max_width": 32}])
    model.save_pretrained(tmp_path / "model")
    out_json = tmp_path / "result.json"
    assert main(["distortion", "--model", str(tmp_path / "model"), "--samples", "20", "--steps", "2",
                 "--json", str(out_json)]) == 0
    refinement = json.loads(out_json.read_text())["refinement"]
    assert set(refinement) == set(CLASS_NAMES)
    # One finer branch (32x32 over 8x8): one number each; real stripes have more detail below 4x4 than circles.
    assert all(len(r["moved"]) == len(r["detail"]) == len(r["real_detail"]) == 1 for r in refinement.values())
    assert refinement["stripes"]["real_detail"][0] > refinement["circle"]["real_detail"][0]
    assert "moved = how far each moves the coarser branch's estimate" in capsys.readouterr().out
