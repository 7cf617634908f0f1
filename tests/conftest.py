import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dimr.config import NUM_TRAIN_TIMESTEPS

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = ["two_branch", "three_branch"]


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
        from dimr.weights import from_official

        return from_official(self.config, dict(self.state_dict))

    def __getitem__(self, key):
        return self.tensors[key]


def timestep_from_log_snr(log_snr):
    """Inverse of the official time input log_snr = 8 n / 1000 - 4, with n = k + 1."""
    return (log_snr + 4) / 8 * NUM_TRAIN_TIMESTEPS - 1


@pytest.fixture(params=GOLDEN)
def golden(request):
    return Golden(request.param)


@pytest.fixture(autouse=True)
def _no_network_and_isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DIMR_CACHE", str(tmp_path / "dimr-cache"))
    torch.manual_seed(0)
