"""Loading official checkpoints: strict layout, safe unpickling, clear errors, the hub path."""

import json
import os
from pathlib import Path

import pytest
import torch

from dimr import DiMRModel, variant_config
from dimr.network.model import count_parameters
from dimr.network.weights import CheckpointError, ensure_converted, from_official, read_official_checkpoint

LAYOUT = json.loads((Path(__file__).parents[1] / "fixtures" / "official_state_dict_layout.json").read_text())


@pytest.mark.parametrize("variant", ["DiMR-XL/2R", "DiMR-G/2R"])
def test_released_variants_load_the_official_layout_strictly(variant):
    layout = LAYOUT[variant]
    state_dict = {k: torch.empty(shape, device="meta") for k, shape in layout["keys"].items()}
    model = from_official(variant_config(variant), state_dict)
    assert count_parameters(model) == layout["num_parameters"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == layout["keys"]


def test_parameter_counts_of_the_released_models():
    with torch.device("meta"):
        assert count_parameters(DiMRModel(**variant_config("DiMR-XL/2R"))) == 505_046_408
        assert count_parameters(DiMRModel(**variant_config("DiMR-G/2R"))) == 1_056_352_904


@pytest.fixture
def official_pth(tmp_path, two_branch):
    golden = two_branch
    path = tmp_path / "two_branch.pth"
    torch.save(golden.state_dict, path)
    return golden, path


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"does-not-exist\.pth does not exist.*python -m dimr convert"):
        read_official_checkpoint(tmp_path / "does-not-exist.pth")


def test_truncated_file_is_reported_as_truncated(official_pth):
    _, path = official_pth
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"two_branch\.pth .* not a complete PyTorch checkpoint: it is truncated"):
        read_official_checkpoint(path)


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"weight": Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pth.*could run code"):
        read_official_checkpoint(path)
    assert not marker.exists()


def test_a_renamed_key_is_listed_as_missing_and_unexpected(official_pth):
    golden, _ = official_pth
    state = dict(golden.state_dict)
    state["stages.0.blocks.0.block1.qkv.weight"] = state.pop("stages.0.blocks.0.block1.query_key_value.weight")
    with pytest.raises(CheckpointError) as err:
        from_official(golden.config, state)
    message = str(err.value)
    assert "Missing keys (1):\n  stages.0.blocks.0.block1.query_key_value.weight [192, 64]" in message
    assert "Unexpected keys (1):\n  stages.0.blocks.0.block1.qkv.weight [192, 64]" in message


def test_a_changed_shape_is_listed_with_both_shapes(official_pth):
    golden, _ = official_pth
    state = dict(golden.state_dict)
    state["stages.1.output_layer.2.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"stages\.1\.output_layer\.2\.weight: expected \[4, 32, 3, 3\], found \[4, 32, 1, 1\]"):
        from_official(golden.config, state)


def test_convert_command_writes_safetensors_that_reproduce_the_model(official_pth, tmp_path, monkeypatch):
    from dimr import __main__ as cli
    from dimr.network import config

    golden, path = official_pth
    monkeypatch.setitem(config.VARIANTS, "DiMR-test/2R", golden.config)
    assert cli.main([ "convert", str(path), "--variant", "DiMR-test/2R", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors").is_file()
    converted = DiMRModel.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        ours = converted.forward_branches(golden["in.x"], 100, golden["in.y"])
        reference = golden.model().forward_branches(golden["in.x"], 100, golden["in.y"])
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)


def put_in_hub_cache(hub_cache, repo, filename, source):
    """Lay out a file exactly as huggingface_hub caches downloads, so the offline path finds it."""
    repo_dir = hub_cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(source.read_bytes())


@pytest.fixture
def hub_variant(official_pth, tmp_path, monkeypatch):
    """A small model registered like a released one, with a hub cache of its own."""
    from dimr.network import config, weights

    golden, path = official_pth
    monkeypatch.setitem(config.VARIANTS, "DiMR-test/2R", golden.config)
    monkeypatch.setitem(weights.HUB_FILES, "DiMR-test/2R", "DiMR-test_2R.pth")
    hub_cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return golden, path, hub_cache


def test_a_released_name_resolves_through_the_hub_cache_and_is_converted_once(hub_variant, monkeypatch):
    from dimr.network import weights

    golden, path, hub_cache = hub_variant
    put_in_hub_cache(hub_cache, weights.HUB_REPO, "DiMR-test_2R.pth", path)
    directory = ensure_converted("DiMR-test/2R")
    assert directory == weights.converted_dir("DiMR-test/2R")
    assert (directory / "diffusion_pytorch_model.safetensors").is_file()
    model = DiMRModel.from_pretrained(directory)
    with torch.no_grad():
        out = model.forward_branches(golden["in.x"], 3, golden["in.y"])
        ref = golden.model().forward_branches(golden["in.x"], 3, golden["in.y"])
    assert torch.equal(out[-1], ref[-1])

    # Second load reads the converted copy, never the hub.
    monkeypatch.setattr(weights, "download_official", lambda variant: pytest.fail("downloaded again"))
    assert ensure_converted("DiMR-test/2R") == directory


def test_offline_without_a_cached_file_says_how_to_get_it(hub_variant):
    with pytest.raises(CheckpointError, match=r"could not download DiMR-test_2R\.pth .* QHL067/DiMR .*python -m dimr convert"):
        ensure_converted("DiMR-test/2R")


def test_an_unreleased_variant_lists_the_released_ones():
    with pytest.raises(ValueError, match=r"no released weights for 'DiMR-Q/9R'; released: DiMR-XL/2R, DiMR-G/2R"):
        ensure_converted("DiMR-Q/9R")


def test_unsupported_config_fields_are_named():
    config = variant_config("DiMR-XL/2R")
    config["stage_configs"][0]["block_type"] = "MambaBlock"
    with pytest.raises(ValueError, match=r"stage 0: block_type 'MambaBlock' is not one of"):
        from_official(config, {})
