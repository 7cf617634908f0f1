"""The README tells the truth: its limits are the demo's, its models table shows the distortion stored with the
bundled models, and its Python API runs as written."""

import re
from pathlib import Path

import pytest

from dimr.demo import limits, shapes_lab
from dimr.lab.distortion import wilson_interval
from dimr.lab.shapes import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_readme_states_the_demos_limits():
    text = " ".join(README.split())
    assert f"at most {limits.MAX_IMAGES} images, {limits.MAX_STEPS} steps and guidance {limits.MAX_GUIDANCE:g}" in text
    assert f"Compare: {limits.MAX_COMPARE_IMAGES} images per model" in text
    assert f"guidance power {limits.MIN_GUIDANCE_POWER:g}..{limits.MAX_GUIDANCE_POWER:g}" in text


@pytest.mark.parametrize("name", ["tiny-dimr", "tiny-baseline"])
def test_the_models_table_shows_the_stored_distortion(name):
    stored = shapes_lab.measured_distortion(name)
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
    assert f"{100 * stored['rate']:.1f}% ({stored['flagged']} of {stored['samples']}" in row


def lab_rows():
    """The README's lab tables as the stored measurements give them: the measure of real renders and of both tiny
    models, then misdrawn per class."""
    stored = {name: shapes_lab.measured_distortion(name) for name in ("tiny-dimr", "tiny-baseline")}
    real = stored["tiny-dimr"]["real"]
    samples = stored["tiny-dimr"]["samples"]
    low, high = wilson_interval(round(real["rate"] * samples), samples)
    rows = [f"| real renders | {100 * real['rate']:.1f}% ({100 * low:.1f}-{100 * high:.1f}%) | {real['fid']:.2f} | "
            f"{real['precision']:.2f} | {real['recall']:.2f} |"]
    for name, result in stored.items():
        low, high = result["ci95"]
        rows.append(f"| `{name}` | {100 * result['rate']:.1f}% ({100 * low:.1f}-{100 * high:.1f}%) | "
                    f"{result['fid']:.1f} | {result['precision']:.2f} | {result['recall']:.2f} |")
    for name, result in stored.items():
        rows.append(f"| `{name}` | " + " | ".join(str(result["per_class"][c][0]) for c in CLASS_NAMES) + " |")
    return rows


def test_the_lab_tables_show_the_stored_measurements():
    lines = README.splitlines()
    assert all(row in lines for row in lab_rows())


def test_the_python_api_runs_as_written(tmp_path, monkeypatch, one_thread):
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    assert (tmp_path / "ring.png").is_file()
