"""The models the demo offers: their names, classes, branches and starting settings, read from their configs
without loading (or downloading) weights.

    model_choices()                 # ["tiny-dimr", "tiny-baseline", ...], DIMR_MODEL first when it is a directory
    model_menu()                    # [("tiny-dimr", "tiny-dimr"), ..., ("DiMR-XL/2R (not installed)", "DiMR-XL/2R")]
    model_labels("tiny-dimr")       # its ClassLabels (dimr.sampling.labels): names, synonyms, the class picker's choices()
    model_branches("tiny-dimr")     # ["8x8 transformer (4x4 px patches)", "16x16 ConvNeXt", "32x32 ConvNeXt"]
    default_classes(name), default_guidance(name), default_steps(name)     # what the app starts at
"""

import os

import torch

from dimr.checks import shown
from dimr.demo.refusals import Refused
from dimr.lab.shapes import CLASS_NAMES
from dimr.network.model import DiMRModel
from dimr.sampling import caches, defaults
from dimr.sampling.labels import labels_for_model
from dimr.sampling.loading import MODELS, missing_parts, model_config

TINY_DIMR, TINY_BASELINE = "tiny-dimr", "tiny-baseline"
SHOWCASE_SHAPES = ("ring", "star", "stripes", "checkerboard")  # where distortion shows
SHOWCASE_IMAGENET = [207, 88, 279, 980]  # golden retriever, macaw, arctic fox, volcano


def default_model():
    """DIMR_MODEL (a name from MODELS or a directory with config.json), else the bundled tiny DiMR."""
    return os.environ.get("DIMR_MODEL") or TINY_DIMR


def model_choices():
    """The model picker's names: the known models, plus DIMR_MODEL when it is a directory."""
    return list(MODELS) if default_model() in MODELS else [default_model(), *MODELS]


def model_menu():
    """The model picker's (label, name) pairs: a released model that is not installed here says so (its first use
    downloads it, when the server can reach the Hugging Face hub)."""
    return [(f"{name} (not installed)" if missing_parts(name) else name, name) for name in model_choices()]


def model_description(name):
    """One line about a model, for the picker's note."""
    return MODELS.get(name, "a converted model directory")


def check_model(name):
    allowed = model_choices()
    if name not in allowed:
        raise Refused(f"unknown model {shown(name)}; choose one of {', '.join(allowed)}")
    return name


def model_outline(name):
    """A model object on the meta device: its config, labels and branches, no weights (kept in dimr.sampling.caches)."""
    check_model(name)

    def outline():
        with torch.device("meta"):
            return DiMRModel.from_config(model_config(name))

    return caches.remembered(("outline", name), outline)


def model_labels(name):
    """The class labels of a model (ImageNet, or the names in its config)."""
    return labels_for_model(model_outline(name))


def model_branches(name):
    """What each branch is, lowest resolution first: a transformer with its token grid and patch size (the
    coarseness that distorts fine detail), or a convolutional branch with its grid. Latent models' grids are
    latent pixels."""
    model = model_outline(name)
    latent = "" if model.config.channels == 3 else " latent"
    names = []
    for stage in model.config.stage_configs:
        grid = stage["max_height"]
        if stage["block_type"] == "TransformerBlock":
            patch = model.sample_size // grid
            names.append(f"{grid}x{grid}{latent} transformer ({patch}x{patch} px patches)")
        else:
            names.append(f"{grid}x{grid}{latent} ConvNeXt")
    return names


def is_pixel_space(name):
    """True for models that sample RGB pixels directly (no VAE): the bundled tiny models."""
    return model_outline(name).config.channels == 3


def is_shapes_model(name):
    """True for models trained on the shapes classes: the lab (dimr.demo.shapes_lab) has real shapes and a judge for them."""
    return model_labels(name).names == [[n] for n in CLASS_NAMES]


def default_classes(name):
    """A few classes that show the model well: ImageNet favourites, or shapes where distortion shows."""
    labels = model_labels(name)
    if len(labels) == defaults.IMAGENET_CLASSES:
        return list(SHOWCASE_IMAGENET)
    showcase = [i for i, names in enumerate(labels.names) if names[0] in SHOWCASE_SHAPES]
    return showcase or list(range(min(4, len(labels))))


def default_guidance(name):
    """The guidance scale the demo starts at for a model (dimr.sampling.defaults)."""
    return defaults.guidance_scale(len(model_labels(name)))


def default_steps(name):
    """The number of sampling steps the demo starts at for a model (dimr.sampling.defaults)."""
    return defaults.num_inference_steps(len(model_labels(name)))


def same_classes(name, other):
    """True when two models have the same classes (a class choice carries over from one to the other)."""
    return model_labels(name).names == model_labels(other).names


def class_picker(name, classes):
    """The class picker's choices, value and label for a model, starting at `classes`."""
    labels = model_labels(name)
    label = f"Classes ({len(labels)}; type to search names and synonyms)"
    return dict(choices=labels.choices(), value=classes, label=label)


def classes_after_change(name, classes, previous):
    """The classes to show when the picker moves from model `previous` to `name`: the chosen ones when both have the
    same classes, else the new model's defaults."""
    keep = previous is not None and same_classes(name, previous) and classes
    return classes if keep else default_classes(name)


def random_classes(name, count, rng):
    """`count` distinct class ids of a model (at least 1, at most all), drawn with `rng` (a random.Random)."""
    labels = model_labels(name)
    return sorted(rng.sample(range(len(labels)), min(max(count, 1), len(labels))))
