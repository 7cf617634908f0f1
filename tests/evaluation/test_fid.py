"""Inception FID of a sample file (`dimr fid`, `dimr evaluate --reference`), run offline: the Inception weights
cannot be downloaded here, so the FID path runs on the shapes judge's features, and a missing or wrong weights file
must be a clear message."""

import numpy as np
import pytest
import torch

from dimr.__main__ import main
from dimr.evaluation.fid import INCEPTION_FILE, INCEPTION_URL, inception_fid
from dimr.lab.classifier import load_classifier
from dimr.lab.distortion import frechet_distance, real_images
from dimr.sampling.sample_files import image_batches, read_samples, write_samples

COUNT = 200  # more images than the judge has features (64), so both covariances are full rank


class JudgeFeatures(torch.nn.Module):
    """The shapes judge's pooled features [B, 64] of uint8 images: features this machine can compute offline."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.judge = load_classifier()

    def forward(self, images):
        return self.judge.probabilities_and_features(images)[1]


def sample_file(path, images, labels):
    """Write uint8 [N, 3, H, W] images in the sample layout, in parts as dimr evaluate does."""
    hwc = images.permute(0, 2, 3, 1).numpy()
    write_samples(path, hwc.shape, ((hwc[i : i + 64], labels[i : i + 64].numpy()) for i in range(0, len(hwc), 64)))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fid")
    # The "samples": real renders at half brightness, far from the reference (real against real is about 0.3).
    images, labels = real_images(COUNT, seed=5)
    shifted = images // 2
    reference_images, reference_labels = real_images(COUNT, seed=6)
    return (sample_file(folder / "samples.npz", shifted, labels),
            sample_file(folder / "reference.npz", reference_images, reference_labels))


def test_the_sample_file_reads_back_as_written(files):
    samples, _ = files
    images, labels = read_samples(samples)
    expected, expected_labels = real_images(COUNT, seed=5)
    assert torch.equal(images, expected // 2) and torch.equal(labels, expected_labels)
    assert [len(b) for b in image_batches(samples, 70)] == [70, 70, 60]
    with np.load(samples) as data:  # the ADM layout, as numpy reads it
        assert data["arr_0"].shape == (COUNT, 32, 32, 3) and data["arr_0"].dtype == np.uint8


def test_fid_of_two_files_is_the_frechet_distance_of_their_features(files):
    samples, reference = files
    judge = JudgeFeatures()
    result = inception_fid(samples, reference, feature=judge, batch_size=64, progress=False)
    expected = frechet_distance(judge(read_samples(samples)[0]), judge(read_samples(reference)[0]))
    assert expected > 5
    assert result["fid"] == pytest.approx(expected, rel=1e-4)
    assert result["samples"] == COUNT and result["reference_statistics"] == f"{COUNT} images"


def test_a_reference_of_stored_statistics_gives_the_same_fid(files, tmp_path):
    samples, reference = files
    judge = JudgeFeatures()
    features = judge(read_samples(reference)[0]).double().numpy()
    statistics = tmp_path / "statistics.npz"
    np.savez(statistics, mu=features.mean(0), sigma=np.cov(features, rowvar=False))  # as ADM's reference batches
    from_images = inception_fid(samples, reference, feature=judge, progress=False)["fid"]
    from_statistics = inception_fid(samples, statistics, feature=judge, progress=False)
    assert from_statistics["fid"] == pytest.approx(from_images, rel=1e-5)
    assert from_statistics["reference_statistics"] == "stored mu and sigma"


def test_a_missing_inception_file_says_what_to_download_and_where(files, tmp_path, monkeypatch, capsys):
    samples, reference = files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["fid", str(samples), "--reference", str(reference)]) == 2
    err = capsys.readouterr().err
    assert INCEPTION_URL in err and str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE) in err

    assert main(["fid", str(samples), "--reference", str(reference), "--inception-weights",
                 str(tmp_path / "elsewhere.pth")]) == 2
    assert str(tmp_path / "elsewhere.pth") in capsys.readouterr().err


def test_a_wrong_inception_file_is_refused(files, tmp_path, capsys):
    samples, reference = files
    wrong = tmp_path / INCEPTION_FILE
    torch.save({"weight": torch.zeros(3)}, wrong)
    assert main(["fid", str(samples), "--reference", str(reference), "--inception-weights", str(wrong)]) == 2
    assert "is not the FID Inception weights" in capsys.readouterr().err


def test_evaluate_checks_the_inception_file_before_sampling(files, tmp_path, monkeypatch, capsys):
    _, reference = files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "runs" / "out.npz"
    assert main(["evaluate", "--model", "tiny-dimr", "--samples", "4", "--out", str(out),
                 "--reference", str(reference)]) == 2
    assert INCEPTION_URL in capsys.readouterr().err
    assert not (tmp_path / "runs" / "out.shards").exists()
