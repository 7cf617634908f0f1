"""The benchmark scripts run on CPU with the tiny config, their error check flags a wrong result, and the official
path reproduces the official sampler.

The official-path test needs a local copy of github.com/qihao067/DiMR in `.official/` (never committed;
`git -C MIRROR archive HEAD | tar -x -C .official`) and the packages its model files import (timm,
einops); without them it is skipped.
"""

import json

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = ROOT / ".official"


def test_sampling_benchmark_runs_on_cpu_and_writes_its_numbers(tmp_path, run_script):
    out = tmp_path / "cpu.json"
    stdout = run_script("benchmarks/sampling.py", "--tiny", "--device", "cpu", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cpu" and report["device"]["torch"] == torch.__version__
    assert report["settings"]["mode"] == "none" and report["settings"]["steps"] == 2
    ours = report["ours"]["1"]
    assert ours["images_per_s"] > 0 and ours["model_tflops"] > 0 and len(ours["seconds"]) == 1
    # Mode "none" samples in float32 exactly as the reference run does: any cast would show here.
    assert report["ours"]["error_vs_fp32"]["rel_l2"] == 0 and report["ours"]["error_vs_fp32"]["within_tolerance"]
    assert "| ours | 1 |" in stdout and f"wrote {out}" in stdout
    assert report["official"] or any(note.startswith("official path skipped") for note in report["notes"])


def test_the_error_check_measures_the_difference_and_flags_a_wrong_result():
    from sampling import TOLERANCE_REL_L2, compare

    reference = torch.randn(2, 4, 8, 8)
    assert compare(reference, reference) == {"rel_l2": 0, "max_rel": 0, "finite": True, "within_tolerance": True}
    close = compare(reference * (1 + TOLERANCE_REL_L2 / 2), reference)
    assert close["rel_l2"] == pytest.approx(TOLERANCE_REL_L2 / 2, rel=1e-4) and close["within_tolerance"]
    far = compare(reference * (1 + 2 * TOLERANCE_REL_L2), reference)
    assert far["rel_l2"] == pytest.approx(2 * TOLERANCE_REL_L2, rel=1e-4) and not far["within_tolerance"]
    broken = reference.clone()
    broken[0, 0, 0, 0] = float("nan")
    assert not compare(broken, reference)["finite"] and not compare(broken, reference)["within_tolerance"]


def test_forward_benchmark_prints_ours_next_to_the_official_way(run_script):
    stdout = run_script("benchmarks/forward_cpu.py", "--tiny", "--warmup", "0", "--repeats", "1")
    for row in ("ours, inference_mode", "ours, grad enabled", "official style, grad enabled", "official style, no_grad"):
        assert f"| {row} |" in stdout


@pytest.mark.skipif(not (OFFICIAL / "dpm_solver.py").is_file(), reason="no local copy of the official repo in .official/")
def test_official_path_reproduces_the_official_sampler_and_network(two_branch):
    pytest.importorskip("timm")
    pytest.importorskip("einops")
    from official_path import OfficialCode

    from dimr.network.config import normalize_official_config

    official = OfficialCode(OFFICIAL)
    golden = two_branch
    nnet = official.model(normalize_official_config(golden.config), golden.state_dict, "cpu")
    with torch.no_grad():
        branches = nnet(golden["in.x"], log_snr=golden["in.log_snr"], y=golden["in.y"])
    for i, out in enumerate(branches):
        torch.testing.assert_close(out, golden[f"out.branch{i}"], rtol=0, atol=1e-5)
    key = "sample.steps20_cfg0.4"
    latents = official.sample(nnet, golden[f"in.{key}.noise"], golden[f"in.{key}.y"], steps=20, cfg_scale=0.4,
                              autocast_dtype=None)
    expected = golden[f"out.{key}"]
    assert (latents - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_official_path_says_what_a_wrong_folder_lacks(tmp_path):
    from official_path import OfficialCode

    with pytest.raises(FileNotFoundError, match="is not a copy of github.com/qihao067/DiMR"):
        OfficialCode(tmp_path)
