"""`python -m dimr sample` writes the samples and the branch panel as PNG files, offline, from a local model."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dimr.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_samples_and_branch_panel_are_written(pixel_dir, tmp_path, capsys):
    code = main(["sample", "--model", str(pixel_dir), "--class", "circle", "--class", "2", "--steps", "3",
                 "--seed", "1", "--out", str(tmp_path / "grid.png"), "--branches", str(tmp_path / "branches.png")])
    assert code == 0
    # Two 16x16 samples side by side with a 2-pixel gap.
    assert Image.open(tmp_path / "grid.png").size == (16 + 2 + 16, 16)
    # Rows: 2 samples x 3 branches; columns: the 3 steps.
    assert Image.open(tmp_path / "branches.png").size == (3 * 18 - 2, 6 * 18 - 2)
    printed = capsys.readouterr().out
    assert "0 (circle), 2 (triangle)" in printed and "1/4, 1/2, 1/1" in printed


def test_a_latent_model_is_decoded_by_its_vae(tmp_path, two_branch, tiny_vae):
    two_branch.model().save_pretrained(tmp_path / "latent")
    tiny_vae.save_pretrained(tmp_path / "latent" / "vae")
    code = main(["sample", "--model", str(tmp_path / "latent"), "--class", "tabby cat", "--steps", "2",
                 "--out", str(tmp_path / "grid.png"), "--branches", str(tmp_path / "b.png"), "--branch-steps", "1"])
    assert code == 0
    assert Image.open(tmp_path / "grid.png").size == (32, 32)
    assert Image.open(tmp_path / "b.png").size == (32, 2 * 34 - 2)


def test_an_unknown_class_is_an_error_before_sampling(pixel_dir, tmp_path, capsys):
    code = main(["sample", "--model", str(pixel_dir), "--class", "hexagon", "--out", str(tmp_path / "g.png")])
    assert code == 2
    assert "unknown class name 'hexagon'" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_command_line_shows_a_progress_bar_and_works_offline(pixel_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "dimr", "sample", "--model", str(pixel_dir), "--class", "square",
                          "--steps", "4", "--out", str(tmp_path / "one.png")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "4/4" in run.stderr  # tqdm's final state
    assert Image.open(tmp_path / "one.png").size == (16, 16)


def test_gpu_speed_modes_are_refused_on_a_cpu(pixel_dir, tmp_path, capsys):
    code = main(["sample", "--model", str(pixel_dir), "--class", "circle", "--device", "cpu", "--speed", "bf16",
                 "--out", str(tmp_path / "g.png")])
    assert code == 2
    assert "--speed bf16 needs a GPU" in capsys.readouterr().err
