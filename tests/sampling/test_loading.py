"""load_pipeline / load_vae: local directories, bundled names, the module cache, and clear offline errors."""

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from dimr.network.weights import CheckpointError
from dimr.sampling import caches, loading
from dimr.sampling.loading import MODELS, load_pipeline, load_vae


@pytest.fixture(autouse=True)
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache (conftest already sets offline and clears dimr.sampling.caches after each test)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_a_local_pixel_space_model_loads_without_a_vae(pixel_dir):
    pipe = load_pipeline(str(pixel_dir), device="cpu")
    assert pipe.vae is None and pipe.is_pixel_space
    assert pipe.labels.name(2) == "triangle"
    pipe.set_progress_bar_config(disable=True)
    assert pipe(["tri"], num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)


def test_the_lean_accelerate_load_gives_the_same_network_as_a_full_initialisation(pixel_dir):
    """requirements.txt installs accelerate, so models are built on the meta device and then filled from the
    file: every tensor the network uses must come from the file (no buffer left unfilled)."""
    import accelerate  # noqa: F401  (without it diffusers silently falls back to the full initialisation)

    from dimr.network.model import DiMRModel

    lean = DiMRModel.from_pretrained(pixel_dir, low_cpu_mem_usage=True).eval()
    full = DiMRModel.from_pretrained(pixel_dir, low_cpu_mem_usage=False).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([500.0, 10.0]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(lean(x, t, y).sample, full(x, t, y).sample)
    assert not any(tensor.is_meta for tensor in [*lean.parameters(), *lean.buffers()])


def test_networks_are_loaded_once_per_model_device_and_dtype(pixel_dir):
    first, second = load_pipeline(pixel_dir, device="cpu"), load_pipeline(str(pixel_dir), device="cpu")
    assert first is not second and first.scheduler is not second.scheduler
    assert first.model is second.model
    as_bf16 = load_pipeline(pixel_dir, device="cpu", torch_dtype=torch.bfloat16)
    assert as_bf16.model is not first.model and as_bf16.model.dtype == torch.bfloat16
    caches.clear()  # the one way to forget loaded models
    assert load_pipeline(pixel_dir, device="cpu").model is not first.model


def test_a_latent_model_directory_uses_its_vae_subfolder(tmp_path, two_branch, tiny_vae):
    two_branch.model().save_pretrained(tmp_path / "latent")
    tiny_vae.save_pretrained(tmp_path / "latent" / "vae")
    pipe = load_pipeline(tmp_path / "latent", device="cpu", torch_dtype=torch.float16)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert pipe.model.dtype == torch.float16 and pipe.vae.dtype == torch.float32, "never a float16 VAE"


def test_a_vae_from_a_single_weights_file(tmp_path, tiny_vae):
    vae = tiny_vae
    save_file(vae.state_dict(), tmp_path / "vae.safetensors")
    vae.save_config(tmp_path)  # config.json beside the file: a non-SD architecture
    loaded = load_vae(tmp_path / "vae.safetensors")
    for key, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_a_file_that_is_not_a_vae_is_rejected(tmp_path):
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="is not a VAE of this architecture"):
        load_vae(tmp_path / "other.safetensors")


def test_a_name_resolves_to_its_files_in_one_place(pixel_dir, tiny_pixel_model):
    from dimr.network.config import variant_config
    from dimr.network.weights import converted_dir
    from dimr.sampling.loading import model_config, model_files

    assert model_files("tiny-dimr") == loading.ModelFiles(loading.CHECKPOINTS_DIR / "tiny-dimr")
    assert model_files(str(pixel_dir)) == model_files(pixel_dir) == loading.ModelFiles(pixel_dir)
    assert model_files("DiMR-XL/2R") == loading.ModelFiles(converted_dir("DiMR-XL/2R"), "DiMR-XL/2R")
    assert model_config("DiMR-XL/2R") == variant_config("DiMR-XL/2R"), "a released config needs no download"
    assert model_config(pixel_dir)["stage_configs"] == tiny_pixel_model.config.stage_configs


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        load_pipeline("DiMR-XXL", device="cpu")
    assert all(name in str(err.value) for name in MODELS)


def test_a_missing_bundled_model_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "CHECKPOINTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="bundled model 'tiny-dimr' is missing"):
        load_pipeline("tiny-dimr", device="cpu")


def test_offline_the_released_model_fails_at_once_with_what_to_do(waits):
    with pytest.raises(CheckpointError) as err:
        load_pipeline("DiMR-XL/2R", device="cpu")
    assert waits == []
    assert "python -m dimr convert DiMR-XL_2R_800epochs.pth --variant DiMR-XL/2R" in str(err.value)


def test_offline_the_hub_vae_fails_at_once_with_what_to_do(waits):
    with pytest.raises(CheckpointError) as err:
        load_vae("stabilityai/sd-vae-ft-ema")
    assert waits == []
    assert "not in the Hugging Face cache" in str(err.value) and "local VAE directory or weights file" in str(err.value)


def test_a_latent_model_without_a_local_vae_needs_the_hub_one(tmp_path, two_branch):
    two_branch.model().save_pretrained(tmp_path / "latent")
    with pytest.raises(CheckpointError, match="sd-vae-ft-ema"):
        load_pipeline(tmp_path / "latent", device="cpu")
