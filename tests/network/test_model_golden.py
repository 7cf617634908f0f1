"""Our network reproduces the official implementation's outputs on the golden files."""

import pytest
import torch

from dimr.network.config import NUM_TRAIN_TIMESTEPS


def timestep_from_log_snr(log_snr):
    """Inverse of the official time input log_snr = 8 n / 1000 - 4, with n = k + 1."""
    return (log_snr + 4) / 8 * NUM_TRAIN_TIMESTEPS - 1


def assert_matches_official(ours, official):
    tolerance = 1e-5 * max(1.0, official.abs().max().item())
    assert ours.shape == official.shape
    assert (ours - official).abs().max().item() <= tolerance


@pytest.mark.parametrize("time", ["per_sample", "same_t"])
def test_every_branch_matches_official(golden, time):
    model = golden.model()
    log_snr = golden["in.log_snr"] if time == "per_sample" else golden["in.log_snr_same"]
    prefix = "out.branch" if time == "per_sample" else "out.same_t.branch"
    with torch.no_grad():
        branches = model.forward_branches(golden["in.x"], timestep_from_log_snr(log_snr), golden["in.y"])
    assert len(branches) == len(golden.config["stage_configs"])
    for i, ours in enumerate(branches):
        assert_matches_official(ours, golden[f"{prefix}{i}"])


def test_scalar_timestep_equals_a_repeated_one(golden):
    model = golden.model()
    x, y = golden["in.x"], golden["in.y"]
    with torch.no_grad():
        scalar = model.forward_branches(x, 500, y)
        repeated = model.forward_branches(x, torch.full((x.shape[0],), 500.0), y)
    for a, b in zip(scalar, repeated):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_forward_returns_the_full_resolution_branch(golden):
    model = golden.model()
    with torch.no_grad():
        out = model(golden["in.x"], 10, golden["in.y"])
    assert torch.equal(out.sample, out.branch_samples[-1])
    assert out.sample.shape == golden["in.x"].shape


def test_gradient_checkpointing_recomputes_blocks_and_gives_the_same_gradients(golden):
    model = golden.model().train()
    x, y = golden["in.x"], golden["in.y"]
    block_calls, checkpointed_calls = [], []
    model.stages[0].blocks[0].register_forward_pre_hook(lambda *_: block_calls.append(1))

    def checkpoint(block, *args):
        checkpointed_calls.append(1)
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    def grads():
        model.zero_grad()
        block_calls.clear()
        sum(b.square().mean() for b in model.forward_branches(x, 300, y)).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    assert len(block_calls) == 1 and not checkpointed_calls
    model.enable_gradient_checkpointing(checkpoint)
    checkpointed = grads()
    assert len(block_calls) == 2, "a checkpointed block runs again in the backward pass"
    assert len(checkpointed_calls) == sum(len(stage.blocks) for stage in model.stages)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)

    # Without gradients there is nothing to save memory for: blocks run directly.
    checkpointed_calls.clear()
    with torch.no_grad():
        model.forward_branches(x, 300, y)
    assert not checkpointed_calls


def test_the_model_keeps_its_config_normalised(golden):
    from dimr.network.config import normalize_official_config

    model = golden.model()
    assert model.config.stage_configs == normalize_official_config(golden.config)["stage_configs"]
    assert all("head_patch_size" in stage for stage in model.config.stage_configs), "defaults filled in"


def test_save_and_load_pretrained_roundtrip(golden, tmp_path):
    from dimr import DiMRModel

    model = golden.model()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiMRModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a = model.forward_branches(golden["in.x"], 7, golden["in.y"])
        b = loaded.forward_branches(golden["in.x"], 7, golden["in.y"])
    for x, z in zip(a, b):
        assert torch.equal(x, z)
