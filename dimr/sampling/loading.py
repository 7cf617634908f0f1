"""Ready-to-sample pipelines by name: the bundled pixel-space models, the released ImageNet models, or a directory.

    pipe = load_pipeline("tiny-dimr")                 # bundled, dimr/checkpoints/tiny-dimr/, no VAE
    pipe = load_pipeline("DiMR-XL/2R", device="cuda", torch_dtype=torch.bfloat16)

Networks and VAEs are loaded once per (model, device, dtype) and kept in memory (dimr.sampling.caches; `caches.clear()`
frees them); every `load_pipeline` call returns a new pipeline object around the shared modules, with its own
scheduler.
`model_files` is the one place a model name becomes files (and `model_config` reads a config without weights).
Nothing here waits on the network when it is unreachable: a model or VAE that is neither local nor cached
fails at once with a message that says what to download and where to put it.
"""

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from dimr.network.config import VARIANTS, variant_config
from dimr.network.model import DiMRModel
from dimr.network.weights import HUB_FILES, HUB_REPO, CheckpointError, converted_dir, ensure_converted
from dimr.sampling import caches
from dimr.sampling.pipeline import DEFAULT_SAMPLER, DiMRPipeline, make_scheduler, noise_settings

# The bundled models are package data: they come with the wheel as with a checkout.
CHECKPOINTS_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
BUNDLED = {
    "tiny-dimr": "tiny 3-branch DiMR (8x8, 16x16, 32x32) trained on the 32x32 shapes dataset (pixel space, bundled)",
    "tiny-baseline": "tiny single-resolution baseline with the same parameters and FLOPs, trained on the same shapes "
                     "(pixel space, bundled)",
}
# Every known name -> a one-line description (the app's model picker).
MODELS = {
    **BUNDLED,
    "DiMR-XL/2R": "released ImageNet 256x256 model, 505M parameters, FID 1.70 (downloads 2 GB + the SD VAE)",
    "DiMR-G/2R": "released ImageNet 256x256 model, 1.06B parameters, FID 1.63 (downloads 4 GB + the SD VAE)",
}
VAE_REPO = "stabilityai/sd-vae-ft-ema"
# sd-vae-ft-ema's architecture, for a VAE given as a single weights file without a config.
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)

SCHEDULER_CONFIG = "scheduler_config.json"  # diffusers' file name for a scheduler's settings


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(name_or_path, device=None, torch_dtype=None, vae=None, sampler=DEFAULT_SAMPLER):
    """A DiMRPipeline for a known name (see MODELS) or a directory holding config.json (+ optional `vae/`).

    vae: None = the model's own (bundled models: none; latent models: `vae/` beside the weights, else
    sd-vae-ft-ema from the Hugging Face cache or hub), or a directory / single weights file / AutoencoderKL.
    torch_dtype applies to the network; the VAE gets it too unless it is float16 (the SD VAE overflows in
    float16), then float32. sampler: a name from dimr.sampling.pipeline.SAMPLERS; its scheduler runs on the noise settings
    the model was trained with (`trained_noise_settings`).
    """
    device = torch.device(device or default_device())
    torch_dtype = torch_dtype or torch.float32
    files = model_files(name_or_path)
    scheduler = make_scheduler(sampler, **trained_noise_settings(files.directory))
    model = caches.remembered(("network", str(files.directory.resolve()), str(device), torch_dtype),
                              lambda: _load_model(files, torch_dtype).to(device))
    if vae is None and model.config.channels != 3:
        vae = files.directory / "vae" if (files.directory / "vae").is_dir() else VAE_REPO
    if vae is not None and not isinstance(vae, torch.nn.Module):
        vae_dtype = torch.float32 if torch_dtype == torch.float16 else torch_dtype
        # cuDNN's fast path for bf16 convolutions wants channels-last tensors.
        bf16_on_gpu = device.type == "cuda" and vae_dtype == torch.bfloat16
        layout = torch.channels_last if bf16_on_gpu else torch.preserve_format
        source = vae
        vae = caches.remembered(("vae", str(source), str(device), vae_dtype),
                                lambda: load_vae(source, vae_dtype).to(device, memory_format=layout))
    return DiMRPipeline(model=model, vae=vae, scheduler=scheduler)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are: `directory` holds config.json and the weights (a released model's only once
    downloaded and converted); `variant` names the released model, else None."""

    directory: Path
    variant: str = None


def model_files(name_or_path):
    """The one place a model name becomes files: a bundled name, a released variant, or a directory holding
    config.json. CheckpointError for a missing bundled model or an unknown name."""
    if name_or_path in VARIANTS:
        return ModelFiles(converted_dir(name_or_path), name_or_path)
    if name_or_path in BUNDLED:
        path = CHECKPOINTS_DIR / name_or_path
        if not (path / "config.json").is_file():
            raise CheckpointError(f"the bundled model {name_or_path!r} is missing: {path} has no config.json. Train "
                                  f"it with `python -m dimr train` (docs/training.md) or restore dimr/checkpoints/ from git.")
        return ModelFiles(path)
    if not (Path(name_or_path) / "config.json").is_file():
        raise CheckpointError(f"unknown model {name_or_path!r}: use one of {', '.join(MODELS)} or a directory "
                              f"holding config.json and the weights (save_pretrained)")
    return ModelFiles(Path(name_or_path))


def trained_noise_settings(directory):
    """The noise schedule, prediction type and x0 clipping a model was trained and is sampled with, from the
    scheduler_config.json beside its weights; {} (DiMR's own: scaled linear, epsilon, no clipping) without one."""
    path = Path(directory) / SCHEDULER_CONFIG
    return noise_settings(json.loads(path.read_text())) if path.is_file() else {}


def model_config(name_or_path):
    """A model's config, without loading (or downloading) its weights."""
    files = model_files(name_or_path)
    return variant_config(files.variant) if files.variant else DiMRModel.load_config(files.directory)


def _load_model(files, torch_dtype):
    variant = files.variant
    if variant is not None and not released_weights_available(variant) and not _hub_reachable():
        raise CheckpointError(f"the weights of {variant} are neither converted in {files.directory} "
                              f"nor in the Hugging Face cache, and the hub ({_hub_endpoint()}) cannot be reached "
                              f"(or HF_HUB_OFFLINE is set). {released_weights_how(variant)}.")
    directory = ensure_converted(variant) if variant is not None else files.directory
    return DiMRModel.from_pretrained(directory, torch_dtype=torch_dtype).eval()


def released_weights_available(variant):
    """True when a released model's weights are here: converted, or in the Hugging Face cache (no download)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(HUB_REPO, HUB_FILES[variant])
    return (converted_dir(variant) / "config.json").is_file() or isinstance(cached, str)


def released_weights_how(variant):
    """What an operator does to install a released model's weights without the hub."""
    return (f"Download {HUB_FILES[variant]} from https://huggingface.co/{HUB_REPO} and run "
            f"`python -m dimr convert {HUB_FILES[variant]} --variant {variant}`")


def hub_cache_how(repo, size=""):
    """What an operator does to put a hub repo into this machine's Hugging Face cache without the hub here."""
    return (f"On a connected machine run `huggingface-cli download {repo}`{f' ({size})' if size else ''} and copy its "
            f"Hugging Face cache (HF_HOME) here")


def in_hub_cache(repo, *files):
    """True when every one of `files` of a hub repo is in the Hugging Face cache (looks at local files only)."""
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo, name), str) for name in files)


def missing_parts(name):
    """What a known model still needs on this machine before it can sample, as {what: how to install it}: a
    released model's weights and the SD VAE; {} for the bundled models and for directories (local files only)."""
    if name not in VARIANTS:
        return {}
    missing = {} if released_weights_available(name) else {name: released_weights_how(name)}
    if not in_hub_cache(VAE_REPO, "config.json", "diffusion_pytorch_model.safetensors"):
        missing[f"the SD VAE ({VAE_REPO})"] = hub_cache_how(VAE_REPO)
    return missing


def load_vae(source=VAE_REPO, torch_dtype=torch.float32):
    """An AutoencoderKL from a diffusers directory, a single weights file (diffusers or original LDM key names;
    safetensors, or a .pt/.pth/.ckpt state dict read without unpickling objects) or a Hugging Face repo id."""
    from diffusers import AutoencoderKL

    path = Path(source)
    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, torch_dtype=torch_dtype).eval()
    if path.is_file():
        return _vae_from_file(path).to(torch_dtype).eval()
    if path.suffix in (".safetensors", ".pt", ".pth", ".ckpt", ".bin") or path.is_absolute():
        raise FileNotFoundError(f"VAE file {path} does not exist")
    how = f"{hub_cache_how(source)}, or pass a local VAE directory or weights file."
    return cached_or_downloaded(
        lambda **hub: AutoencoderKL.from_pretrained(str(source), torch_dtype=torch_dtype, **hub).eval(),
        f"the VAE {source!r}", how)


def cached_or_downloaded(load, what, how):
    """load(local_files_only=True) from the Hugging Face cache, else, when the hub can be reached, the same with
    local_files_only=False (a download). Never waits on an unreachable hub: CheckpointError naming `what` (e.g.
    "the VAE 'x'") and ending with `how` (what to download and where to put it)."""
    try:
        return load(local_files_only=True)
    except OSError:
        pass  # not (completely) in the local cache
    if not _hub_reachable():
        raise CheckpointError(f"{what} is not in the Hugging Face cache and the hub ({_hub_endpoint()}) cannot be "
                              f"reached (or HF_HUB_OFFLINE is set). {how}")
    try:
        return load(local_files_only=False)
    except OSError as err:
        raise CheckpointError(f"could not download {what}: {str(err).splitlines()[0]}. {how}") from err


def _vae_from_file(path):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    from dimr.network.weights import read_official_checkpoint

    state = load_file(path) if path.suffix == ".safetensors" else read_official_checkpoint(path)
    config_file = path.with_name("config.json")
    config = AutoencoderKL.load_config(config_file) if config_file.is_file() else SD_VAE_CONFIG
    vae = AutoencoderKL.from_config(config)
    if not any(k.startswith("encoder.down_blocks.") for k in state):
        state = convert_ldm_vae_checkpoint(state, dict(vae.config))  # original LDM names (U-ViT's autoencoder file)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} is not a VAE of this architecture: {len(missing)} missing keys "
                              f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    return vae


def _hub_endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_reachable(timeout=5.0):
    """False under HF_HUB_OFFLINE; else a quick TCP connect, so that an unreachable hub fails in seconds instead
    of after huggingface_hub's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(_hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False
