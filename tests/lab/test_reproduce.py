"""`dimr reproduce --install` replaces a bundled model only with a better one, and the GPU lab script
(`scripts/gpu_lab.sh`) trains, measures and packs a pair within its time budget, here on the CPU."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_train import tiny_config

from dimr.lab import reproduce
from dimr.lab.reproduce import shortfalls
from dimr.sampling.loading import CHECKPOINTS_DIR

ROOT = Path(__file__).resolve().parents[2]


def measure(**numbers):
    return {"samples": 500, "rate": 0.70, "fid": 13.6, "precision": 0.16, "recall": 0.56, **numbers}


def test_a_model_better_on_every_headline_number_has_no_shortfall():
    assert shortfalls(measure(rate=0.5, fid=10.0, precision=0.3, recall=0.6), measure()) == []
    assert shortfalls(measure(), None) == []  # nothing bundled yet


def test_each_number_that_is_not_better_is_named():
    reasons = shortfalls(measure(rate=0.5, fid=14.0, precision=0.3, recall=0.56), measure())
    assert len(reasons) == 2
    assert reasons[0].startswith("fid 14.000 against the bundled 13.600 (lower is better)")
    assert reasons[1].startswith("recall 0.560 against the bundled 0.560 (higher is better)")
    assert shortfalls(measure(samples=200, rate=0.1), measure()) == [
        "measured on 200 samples, the bundled model on 500"]


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A copy of the bundled models to install into, and the working directory of a checkout (assets/)."""
    checkpoints = tmp_path / "checkpoints"
    for name in reproduce.MODELS:
        shutil.copytree(CHECKPOINTS_DIR / name, checkpoints / name)
    monkeypatch.setattr(reproduce, "CHECKPOINTS_DIR", checkpoints)
    (tmp_path / "assets").mkdir()
    monkeypatch.chdir(tmp_path)
    return checkpoints


def reproduced(out, name, **numbers):
    """A reproduced model in OUT/NAME: the bundled one's files with its measure changed by `numbers`."""
    model = out / name / "model"
    shutil.copytree(CHECKPOINTS_DIR / name, model)
    result = json.loads((model / "distortion.json").read_text())
    (model / "distortion.json").write_text(json.dumps({**result, **numbers}))
    (out / name / "grid.png").write_bytes(b"png")
    return result


def test_install_takes_the_better_model_and_says_why_it_keeps_the_other(bundled, tmp_path, capsys):
    out = tmp_path / "out"
    old = reproduced(out, "tiny-dimr", rate=0.3, fid=9.0, precision=0.5, recall=0.7)
    baseline = reproduced(out, "tiny-baseline", rate=0.6, fid=20.0, precision=0.5, recall=0.7)
    assert reproduce.install(list(reproduce.MODELS), out) == ["tiny-dimr"]
    assert json.loads((bundled / "tiny-dimr" / "distortion.json").read_text())["rate"] == 0.3
    assert json.loads((bundled / "tiny-baseline" / "distortion.json").read_text())["fid"] == baseline["fid"]
    assert (tmp_path / "assets" / "shapes_tiny_dimr.png").read_bytes() == b"png"
    assert not (tmp_path / "assets" / "shapes_tiny_baseline.png").exists()
    printed = capsys.readouterr().out
    assert f"fid 20.000 against the bundled {baseline['fid']:.3f}" in printed
    assert "kept the bundled tiny-baseline" in printed and old["rate"] != 0.3


def test_the_gpu_lab_script_trains_measures_and_packs_a_pair_within_its_budget_on_a_cpu(tmp_path):
    configs = []
    for name in ("pair-a", "pair-b"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**tiny_config(), "name": name}))
        configs.append(str(path))
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "RUN": str(tmp_path / "run"),
           "MEASURE_MINUTES": "2.95", "OMP_NUM_THREADS": "1"}  # 3 s of training
    done = subprocess.run(["bash", "scripts/gpu_lab.sh", str(tmp_path / "out"), "3", "--configs", *configs,
                           "--samples", "10", "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = set()
    for name in ("pair-a", "pair-b"):
        with tarfile.open(tmp_path / "out" / f"{name}.tar") as tar:
            files = set(tar.getnames())
            info = json.load(tar.extractfile(f"{name}/model/training.json"))
            measured = json.load(tar.extractfile(f"{name}/model/distortion.json"))
        assert {f"{name}/model/diffusion_pytorch_model.safetensors", f"{name}/grid.png"} <= files
        assert info["stopped_by"].startswith("time") and measured["samples"] == 10
        steps.add(info["steps"])
    assert len(steps) == 1  # in lockstep: both stopped at the same step
    assert "| pair-a |" in (tmp_path / "out" / "summary.md").read_text()
    # Run again over the same run folder: a pair that spent its budget is neither trained nor measured again.
    weights = tmp_path / "run" / "pair-a" / "model" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    again = subprocess.run(["bash", "scripts/gpu_lab.sh", str(tmp_path / "again"), "3", "--configs", *configs,
                            "--samples", "10", "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert weights.stat().st_mtime_ns == before and (tmp_path / "again" / "pair-a.tar").is_file()
