"""Official checkpoints: safe loading, strict key/shape checks, the official config + state dict -> DiMRModel,
conversion to safetensors, hub download."""

import os
import pickle
import zipfile
from pathlib import Path

import torch

from dimr.atomic import replaced_atomically
from dimr.network.config import normalize_official_config, variant_config
from dimr.network.model import DiMRModel

HUB_REPO = "QHL067/DiMR"
HUB_FILES = {
    "DiMR-XL/2R": "DiMR-XL_2R_800epochs.pth",
    "DiMR-G/2R": "DiMR-G_2R_800epochs.pth",
}
HOW_TO_FIX = (
    f"Download it again from https://huggingface.co/{HUB_REPO} (the hub cache is under HF_HOME), "
    "or convert a good copy with `python -m dimr convert FILE.pth --variant NAME --out DIR`."
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, unsafe, or does not match the model."""


def cache_dir():
    """Where converted checkpoints live (DIMR_CACHE, else ~/.cache/dimr)."""
    return Path(os.environ.get("DIMR_CACHE", Path.home() / ".cache" / "dimr"))


def converted_dir(variant):
    return cache_dir() / variant.replace("/", "_")


def read_official_checkpoint(path):
    """Load a `.pth` state dict without unpickling arbitrary objects; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist. {HOW_TO_FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors, and unpickling them could run "
            f"code. Only plain state dicts (tensors by name) are accepted. Details: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} ({path.stat().st_size:,} bytes) is not a complete PyTorch checkpoint: it is truncated or "
            f"corrupt ({str(err).splitlines()[0]}). {HOW_TO_FIX}"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors). {HOW_TO_FIX}")
    return state


def check_state_dict(model, state_dict, source="the state dict"):
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or wrong):
        return

    def listing(keys, fmt, limit=10):
        lines = [fmt(k) for k in keys[:limit]]
        if len(keys) > limit:
            lines.append(f"... and {len(keys) - limit} more")
        return "\n  ".join(lines)

    parts = [f"{source} does not match the model ({len(expected)} keys expected, {len(found)} found)."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}):\n  " + listing(missing, lambda k: f"{k} {list(expected[k])}"))
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}):\n  " + listing(unexpected, lambda k: f"{k} {list(found[k])}"))
    if wrong:
        parts.append(
            f"Shape mismatches ({len(wrong)}):\n  "
            + listing(wrong, lambda k: f"{k}: expected {list(expected[k])}, found {list(found[k])}")
        )
    parts.append("Check that the file belongs to this model variant. " + HOW_TO_FIX)
    raise CheckpointError("\n".join(parts))


def from_official(config, state_dict, class_names=None, source="the state dict"):
    """A DiMRModel from an official config (the official field names) and an official state dict, loaded strictly."""
    cfg = normalize_official_config(config)
    with torch.device("meta"):
        model = DiMRModel(**cfg, class_names=class_names)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def convert(pth_path, variant, out_dir):
    """Convert an official `.pth` to this project's format (config.json + safetensors) in out_dir."""
    state = read_official_checkpoint(pth_path)
    model = from_official(variant_config(variant), state, source=str(pth_path))
    model.register_to_config(variant=variant)
    with replaced_atomically(out_dir) as partial:  # an interrupted conversion never looks finished
        model.save_pretrained(partial, safe_serialization=True)
    return Path(out_dir)


def download_official(variant):
    """Path of the official `.pth` for a variant, from the Hugging Face cache or the hub."""
    from huggingface_hub import hf_hub_download

    if variant not in HUB_FILES:
        raise ValueError(f"no released weights for {variant!r}; released: {', '.join(HUB_FILES)}")
    try:
        return hf_hub_download(HUB_REPO, HUB_FILES[variant], etag_timeout=10)
    except Exception as err:  # huggingface_hub raises many kinds for "offline"/"not found"
        raise CheckpointError(
            f"could not download {HUB_FILES[variant]} from the Hugging Face hub repo {HUB_REPO} and it is not in the "
            f"local cache ({type(err).__name__}: {str(err).splitlines()[0]}). Connect to the internet, or place the "
            f"file yourself and run `python -m dimr convert {HUB_FILES[variant]} --variant {variant} "
            f"--out {converted_dir(variant)}`."
        ) from err


def ensure_converted(variant):
    """The directory of a released variant's converted weights, downloaded and converted on first use."""
    path = converted_dir(variant)
    if not (path / "config.json").is_file():
        convert(download_official(variant), variant, path)
    return path
