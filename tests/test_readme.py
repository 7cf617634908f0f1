"""The README tells the truth: its limits are the demo's, its models table shows the distortion stored with the
bundled models, and its Python API runs as written."""

import re

import pytest

from dimr import lab, limits
from dimr.config import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_the_readme_states_the_demos_limits():
    text = " ".join(README.split())
    assert f"at most {limits.MAX_IMAGES} images, {limits.MAX_STEPS} steps and guidance {limits.MAX_GUIDANCE:g}" in text
    assert f"Compare: {limits.MAX_COMPARE_IMAGES} images per model" in text
    assert f"guidance power {limits.MIN_GUIDANCE_POWER:g}..{limits.MAX_GUIDANCE_POWER:g}" in text


@pytest.mark.parametrize("name", ["tiny-dimr", "tiny-baseline"])
def test_the_models_table_shows_the_stored_distortion(name):
    stored = lab.measured_distortion(name)
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
    assert f"{100 * stored['rate']:.1f}% ({stored['flagged']} of {stored['samples']}" in row


def test_the_python_api_runs_as_written(tmp_path, monkeypatch, one_thread):
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    assert (tmp_path / "ring.png").is_file()
