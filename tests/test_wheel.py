"""`pip install .` gives a working package: a wheel built from the tracked sources, installed into a fresh virtual
environment, samples the bundled tiny model with `dimr sample` from a folder that is not the checkout."""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["dimr", "pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt"]


def build_wheel(tmp_path):
    """The wheel of a copy of the package's sources (so the build leaves nothing in the checkout), built offline."""
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheels"), str(src)], check=True)
    return next((tmp_path / "wheels").glob("dimr-*.whl"))


def fresh_venv(tmp_path):
    """A new virtual environment that sees this one's installed dependencies (torch, diffusers: no download) but not
    the checkout: a path in a .pth file adds that folder alone, not the .pth files (editable installs) inside it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_installs_and_samples_the_bundled_model(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = fresh_venv(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

    where = subprocess.run([venv / "bin" / "python", "-c", "import dimr; print(dimr.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), f"dimr came from {where}, not from the installed wheel"

    done = subprocess.run([venv / "bin" / "dimr", "sample", "--model", "tiny-dimr", "--class", "ring", "--class",
                           "stripes", "--steps", "4", "--out", "rings.png", "--device", "cpu"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Image.open(work / "rings.png") as image:
        assert image.width > image.height > 0  # two samples side by side

    # The training configs and the class names are package data too.
    config = subprocess.run([venv / "bin" / "python", "-c", "from dimr.lab.train_config import load_config; "
                             "import json; print(json.dumps(load_config('tiny-dimr')['model']['channels']))"],
                            cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(config) == 3
    label = subprocess.run([venv / "bin" / "python", "-c", "from dimr.sampling.labels import imagenet_labels; "
                            "print(imagenet_labels().to_id('tabby cat'))"], cwd=work, env=env, capture_output=True,
                           text=True)
    assert label.returncode == 0 and label.stdout.strip() == "281", label.stderr
