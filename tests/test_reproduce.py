"""Reproducing the lab's models: one command trains a pair side by side, measures both, and leaves the bundled
models alone unless asked."""

import hashlib
import json

from dimr.__main__ import main
from dimr.loading import CHECKPOINTS_DIR
from test_train import tiny_config


def bundled_fingerprint():
    return {p.relative_to(CHECKPOINTS_DIR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(CHECKPOINTS_DIR.rglob("*")) if p.is_file()}


def test_reproduce_trains_both_in_lockstep_measures_them_and_keeps_the_bundled_models(tmp_path, capsys):
    configs = []
    for name in ("pair-a", "pair-b"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**tiny_config(), "name": name}))
        configs.append(str(path))
    before = bundled_fingerprint()
    command = ["reproduce", "--configs", *configs, "--out", str(tmp_path / "out"), "--max-steps", "4",
               "--samples", "10", "--threads", "1"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    for name in ("pair-a", "pair-b"):
        model = tmp_path / "out" / name / "model"
        assert json.loads((model / "training.json").read_text())["steps"] == 4
        assert json.loads((model / "distortion.json").read_text())["samples"] == 10
        assert (tmp_path / "out" / name / "grid.png").is_file()
        assert f"| {name} | 32 |" in printed  # 4 steps of 8 images
    assert "the bundled models are unchanged" in printed
    assert bundled_fingerprint() == before
    # Run again: nothing is trained or measured twice.
    weights = (tmp_path / "out" / "pair-a" / "model" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(command) == 0
    assert (tmp_path / "out" / "pair-a" / "model" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == weights


def test_install_is_refused_for_models_that_are_not_the_bundled_pair(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({**tiny_config(), "name": "other"}))
    assert main(["reproduce", "--configs", str(path), "--out", str(tmp_path / "out"), "--install"]) == 2
    assert "--install replaces the bundled models tiny-dimr, tiny-baseline; these configs train other" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_without_export_keeps_its_model_in_the_run_directory(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**tiny_config(), "name": "tiny-dimr"}))  # the bundled model's name
    before = bundled_fingerprint()
    assert main(["train", "--config", str(path), "--device", "cpu", "--max-steps", "2", "--run-dir",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert bundled_fingerprint() == before
