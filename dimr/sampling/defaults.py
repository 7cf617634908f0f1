"""The sampling defaults shared by the app, the CLI, the distortion measure and the README: one place for each.

A model's defaults depend on what it was trained on: the released ImageNet models start at the paper's guidance
1.4 and 50 steps; the bundled shapes models at guidance 3 (they misdraw far less often with it than at 1.5: README,
distortion rate) and 25 steps, which their 32x32 samples need no more than.
"""

IMAGENET_CLASSES = 1000
IMAGENET_GUIDANCE = 1.4
IMAGENET_STEPS = 50
SHAPES_GUIDANCE = 3.0
SHAPES_STEPS = 25


def guidance_scale(num_classes):
    """The guidance scale to start at for a model with `num_classes` classes (not counting the null class)."""
    return IMAGENET_GUIDANCE if num_classes == IMAGENET_CLASSES else SHAPES_GUIDANCE


def num_inference_steps(num_classes):
    """The number of sampling steps to start at for a model with `num_classes` classes."""
    return IMAGENET_STEPS if num_classes == IMAGENET_CLASSES else SHAPES_STEPS
