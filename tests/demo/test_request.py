"""A request's checks (dimr.demo.request) against hostile sizes: the count is checked before any label is looked up,
a label longer than any real name is refused at once, and no message echoes more than a short part of a value."""

import pytest

from dimr.checks import SHOWN_CHARACTERS
from dimr.demo.request import Request
from dimr.sampling.labels import ClassLabels

LONGEST_MESSAGE = 300  # characters: the message names the value and what is allowed, never the whole value


def test_the_image_count_is_checked_before_any_label_is_looked_up(monkeypatch):
    looked_up = []
    monkeypatch.setattr(ClassLabels, "to_id", lambda self, label: looked_up.append(label) or 0)
    with pytest.raises(ValueError, match="100000 classes x 1 images") as error:
        Request.check(model="tiny-dimr", classes=["unicorn"] * 100_000)
    assert "the demo makes at most 16 per request" in str(error.value) and looked_up == []


@pytest.mark.parametrize("model", ["tiny-dimr", "DiMR-XL/2R"])
def test_a_label_longer_than_any_class_name_is_refused_with_a_short_message(model, monkeypatch):
    searched = []
    original = ClassLabels._examples
    monkeypatch.setattr(ClassLabels, "_examples", lambda self, label: searched.append(label) or original(self, label))
    with pytest.raises(ValueError) as error:
        Request.check(model=model, classes=["ring" * 250_000])
    message = str(error.value)
    assert "1,000,000 characters long" in message and "no longer than" not in message
    assert len(message) < LONGEST_MESSAGE and searched == []


@pytest.mark.parametrize("controls, start", [
    (dict(classes={"ring" * 10_000: 1}), "classes must be a list of class names or ids, got dict {'ringring"),
    (dict(classes=["ring"], images_per_class="9" * 100_000), "images_per_class must be an integer, got '999"),
    (dict(classes=["ring"], sampler="x" * 100_000), "unknown sampler 'xxx"),
    (dict(classes=["ring"], sampler=["x" * 100_000]), "sampler must be one name"),
    (dict(classes=["ring"], guidance_scale="1" * 100_000), "guidance_scale must be a finite number, got '111"),
    (dict(classes=["ring"], guidance_schedule="x" * 100_000), "guidance_schedule 'xxx"),
    (dict(classes=[[0] * 100_000]), "class label [0, 0"),
    (dict(model="m" * 100_000, classes=["ring"]), "unknown model 'mmm"),
])
def test_a_refused_value_is_echoed_cut_short(controls, start):
    with pytest.raises(ValueError) as error:
        Request.check(**{"model": "tiny-dimr", **controls})
    message = str(error.value)
    assert message.startswith(start) and len(message) < LONGEST_MESSAGE + SHOWN_CHARACTERS, message[:400]


def test_a_real_name_or_id_of_any_length_is_still_found():
    assert Request.check(model="DiMR-XL/2R", classes=["Carcharodon carcharias", "999"]).class_ids == (2, 999)
