"""Class labels: the ImageNet names asset, and lookup by id, name or synonym."""

import pytest

from dimr.sampling.labels import ClassLabels, imagenet_labels


def test_imagenet_class_names_are_the_1000_classes_in_the_standard_order():
    """A name must reach the id the released models were trained on, or they draw another class."""
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert [labels.name(i) for i in (0, 207, 999)] == ["tench", "golden retriever", "toilet tissue"]
    assert labels.to_id("tench") == 0 and labels.to_id("toilet tissue") == 999


@pytest.mark.parametrize("label, class_id", [
    (207, 207), ("207", 207), ("golden retriever", 207), ("Golden Retriever", 207), ("  tabby cat ", 281),
    ("tabby", 281), ("great white shark", 2), ("Carcharodon carcharias", 2),
])
def test_lookup_by_id_name_or_synonym(label, class_id):
    assert imagenet_labels().to_id(label) == class_id


@pytest.mark.parametrize("label, message", [
    ("golden retreiver", "unknown class name 'golden retreiver'"),
    ("crane", "ambiguous among the ImageNet classes: it names 134 (crane), 517 (crane); use the id"),
    (1000, "1000 is the null class used for guidance"),
    (1001, "class id 1001 is out of range: ImageNet classes have ids 0..999"),
    (3.0, "must be a class id (int) or a class name (str)"),
    (True, "must be a class id (int) or a class name (str)"),
])
def test_bad_labels_say_what_is_allowed(label, message):
    with pytest.raises(ValueError) as err:
        imagenet_labels().to_id(label)
    assert message in str(err.value)


def test_unknown_name_suggests_similar_names():
    with pytest.raises(ValueError, match="similar: 'tabby'"):
        imagenet_labels().to_id("tabb")


def test_display_names_and_the_pickers_choices_list_every_synonym():
    labels = ClassLabels(["circle", ["triangle", "tri"]], "shapes")
    assert labels.name(1) == "triangle"
    assert labels.choices() == [("circle (0)", 0), ("triangle, tri (1)", 1)]
    assert labels.to_id("TRI") == 1
