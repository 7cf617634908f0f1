"""What the tests share: the golden files of the official code, small random models, a single CPU thread for tiny
models, running a script as a user would, and the isolation every test gets (offline, caches of its own)."""

import copy
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


class Golden:
    """One golden file from the official code: config, official state dict, inputs and outputs."""

    def __init__(self, name):
        self.name = name
        self.meta = json.loads((FIXTURES / "golden" / f"{name}.json").read_text())
        self.tensors = load_file(FIXTURES / "golden" / f"{name}.safetensors")
        self.state_dict = {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    @property
    def config(self):
        return self.meta["model_config"]

    def model(self):
        from dimr.network.weights import from_official

        return from_official(self.config, dict(self.state_dict))

    def __getitem__(self, key):
        return self.tensors[key]


@pytest.fixture(autouse=True)
def _no_network_and_isolated_cache(monkeypatch, tmp_path):
    from dimr.sampling import caches

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DIMR_CACHE", str(tmp_path / "dimr-cache"))
    torch.manual_seed(0)
    yield
    caches.clear()  # no loaded model carried from one test to the next


@pytest.fixture(scope="session")
def golden_file():
    """Golden(name): a golden file by name ("two_branch", "three_branch")."""
    return Golden


@pytest.fixture(params=["two_branch", "three_branch"])
def golden(request):
    return Golden(request.param)


@pytest.fixture(scope="module")
def two_branch():
    """The two-branch golden model's file: a latent DiMR (4x16x16 latents) with ImageNet's 1000 classes + null."""
    return Golden("two_branch")


@pytest.fixture
def tiny_pixel_model():
    """A randomly initialised 3-branch pixel-space model (16x16 RGB) with named classes circle, square, triangle
    (synonym tri)."""
    from dimr import DiMRModel
    from dimr.network.config import normalize_official_config

    config = copy.deepcopy(Golden("three_branch").config)
    config["channels"] = 3
    config["num_classes"] = 4
    for stage in config["stage_configs"]:
        stage["num_classes"] = config["num_classes"]
    torch.manual_seed(0)
    return DiMRModel(**normalize_official_config(config), class_names=["circle", "square", ["triangle", "tri"]]).eval()


@pytest.fixture
def tiny_vae():
    """A randomly initialised AutoencoderKL with 4 latent channels that decodes 16x16 latents to 32x32 images."""
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
                         latent_channels=4, sample_size=32).eval()


@pytest.fixture
def pixel_dir(tmp_path, tiny_pixel_model):
    """tiny_pixel_model saved as a model directory (config.json + safetensors)."""
    tiny_pixel_model.save_pretrained(tmp_path / "pixel")
    return tmp_path / "pixel"


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: one thread is fastest, and avoids thrashing when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def run_script():
    """run_script("benchmarks/x.py", "--flag", ...): the script's stdout, run as a user runs it from the repository
    root after installing only requirements.txt (the package not installed); a failure shows its output."""
    def run(*args, timeout=300):
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    return run


@pytest.fixture
def waits(monkeypatch):
    """A list of every connection and every sleep tried while the test runs: an offline refusal that comes at once
    tries neither (no download, no retry after a pause), whatever the machine's speed. Connections fail."""
    tried = []
    sleep = time.sleep

    def connecting(sock, address):
        tried.append(("connect", address))
        raise OSError(f"no network in tests (connect to {address})")

    def sleeping(seconds):
        tried.append(("sleep", seconds))
        sleep(seconds)

    monkeypatch.setattr(socket.socket, "connect", connecting)
    monkeypatch.setattr(time, "sleep", sleeping)
    return tried
