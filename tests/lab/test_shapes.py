"""The shapes dataset: deterministic from its seed, balanced, and every image shows its shape."""

import pytest
import torch

from dimr.lab.shapes import CLASS_NAMES, make_dataset, sample_parameters, to_model_range
from dimr.sampling.grids import to_uint8


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    images, labels = make_dataset(64, seed=7)
    again, again_labels = make_dataset(64, seed=7)
    other, _ = make_dataset(64, seed=8)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert (images != other).float().mean() > 0.5


def test_rendering_in_chunks_changes_nothing():
    whole, _ = make_dataset(50, seed=3)
    chunked, _ = make_dataset(50, seed=3, chunk=7)
    assert torch.equal(whole, chunked)


def test_classes_are_balanced_to_within_one_image():
    _, labels = make_dataset(1003, seed=0)
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1003
    assert len(CLASS_NAMES) >= 8 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_images_are_32px_rgb_uint8_and_vary_in_colour_size_and_place():
    images, labels = make_dataset(200, seed=1)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    params = sample_parameters(200, seed=1)
    assert torch.equal(torch.as_tensor(params["labels"]), labels)
    for key in ("radius", "angle"):
        assert params[key].std() > 0
    assert params["offset"].std() > 0.3 and params["colour"].std() > 0.2


@pytest.mark.parametrize("k", range(len(CLASS_NAMES)))
def test_every_image_shows_its_shape_inside_the_frame(k):
    images, labels = make_dataset(300, seed=2)
    params = sample_parameters(300, seed=2)
    for i in (labels == k).nonzero().squeeze(1).tolist():
        pixels = images[i].float() / 255
        shape_colour = torch.as_tensor(params["colour"][i], dtype=torch.float32)[:, None, None]
        background = torch.as_tensor(params["background"][i], dtype=torch.float32)[:, None, None]
        # Share of each pixel covered by the shape, recovered from the two colours.
        cover = ((pixels - background) * (shape_colour - background)).sum(0) / ((shape_colour - background) ** 2).sum()
        assert 0.04 < cover.mean() < 0.8, f"{CLASS_NAMES[k]} image {i} covers {cover.mean():.2f} of the frame"
        border = torch.cat([cover[0], cover[-1], cover[:, 0], cover[:, -1]])
        assert border.mean() < 0.25, f"{CLASS_NAMES[k]} image {i} sits on the border"


def test_model_range_round_trips():
    images, _ = make_dataset(8, seed=0)
    x = to_model_range(images)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_uint8(x), images)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_images must be at least 1, got 0"):
        make_dataset(0)
