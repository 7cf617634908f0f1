"""A demo request: the controls of one generation, checked and normalised before any model is loaded.

    request = Request.check(model="tiny-dimr", classes=["ring", 3], images_per_class=2, num_inference_steps=25)
    request.labels      # one class id per image: [4, 4, 3, 3]
    request.captions    # one class name per image

Labels, guidance and the sampler are checked by the project's own checks (dimr.sampling.labels, dimr.sampling.pipeline); the demo's
limits (dimr.demo.limits) bound the images, steps (and the model evaluations they cost), guidance and seed. A ValueError says which value is wrong and what is
allowed.
"""

import bisect
from dataclasses import dataclass

from dimr.checks import check_int, check_number, shown
from dimr.demo.catalogue import check_model, default_guidance, default_steps, model_labels
from dimr.demo.limits import (MAX_EVALUATIONS, MAX_GUIDANCE, MAX_GUIDANCE_POWER, MAX_IMAGES, MAX_SEED, MAX_STEPS,
                              MIN_GUIDANCE_POWER)
from dimr.demo.refusals import refusing
from dimr.sampling.pipeline import DEFAULT_SAMPLER, SAMPLERS, check_guidance, model_evaluations


def check_guidance_scale(value, name="guidance_scale"):
    """A guidance scale the demo takes: a finite number in 0..MAX_GUIDANCE (0: unconditional, 1: no guidance)."""
    return check_number(name, value, 0, MAX_GUIDANCE)


def check_evaluations(sampler, num_inference_steps):
    """Refuse steps that cost more than MAX_EVALUATIONS model evaluations with this sampler, naming the most it may
    take."""
    evaluations = model_evaluations(sampler, num_inference_steps)
    if evaluations > MAX_EVALUATIONS:
        # Evaluations grow with the steps: the number of step counts 1, 2, ... within the limit is the most allowed.
        most = bisect.bisect_right(range(1, num_inference_steps + 1), MAX_EVALUATIONS,
                                   key=lambda steps: model_evaluations(sampler, steps))
        raise ValueError(f"{num_inference_steps} steps of {sampler} run the model {evaluations} times; the demo runs "
                         f"it at most {MAX_EVALUATIONS} times per request: use at most {most} steps with {sampler}, "
                         f"or another sampler")


@dataclass(frozen=True, kw_only=True)
class Request:
    """One generation: a checked, normalised set of the demo's controls."""

    model: str
    class_ids: tuple
    images_per_class: int
    guidance_scale: float
    guidance_schedule: str
    guidance_power: float
    num_inference_steps: int
    seed: int
    sampler: str

    @classmethod
    @refusing
    def check(cls, *, model, classes, images_per_class=1, guidance_scale=None, guidance_schedule="constant",
              guidance_power=1.0, num_inference_steps=None, seed=0, sampler=DEFAULT_SAMPLER, max_images=MAX_IMAGES):
        """Validate everything before any model is loaded; Refused says which value is wrong and what is allowed.

        Keyword arguments only: the controls are many and alike, so a call by position could swap two unnoticed.
        guidance_scale and num_inference_steps default to the model's (dimr.sampling.defaults)."""
        labels = model_labels(check_model(model))
        guidance_scale = default_guidance(model) if guidance_scale is None else guidance_scale
        num_inference_steps = default_steps(model) if num_inference_steps is None else num_inference_steps
        if isinstance(classes, (str, int)) and not isinstance(classes, bool):
            classes = [classes]
        if not isinstance(classes, (list, tuple)):
            raise ValueError(f"classes must be a list of class names or ids, got {type(classes).__name__} "
                             f"{shown(classes)}")
        if not classes:
            raise ValueError("no class chosen: pick at least one class (a name, synonym or id)")
        images_per_class = check_int("images_per_class", images_per_class, 1, MAX_IMAGES)
        # The count first: a list of a million labels is refused without looking any of them up.
        if len(classes) * images_per_class > max_images:
            raise ValueError(f"{len(classes)} classes x {images_per_class} images per class = "
                             f"{len(classes) * images_per_class} images; the demo makes at most {max_images} "
                             f"per request")
        class_ids = tuple(labels.to_id(label) for label in classes)
        guidance_scale = check_guidance_scale(guidance_scale)
        guidance_power = check_number("guidance_power", guidance_power, MIN_GUIDANCE_POWER, MAX_GUIDANCE_POWER)
        check_guidance(guidance_scale, guidance_schedule, guidance_power)
        num_inference_steps = check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
        seed = check_int("seed", seed, 0, MAX_SEED)
        if not isinstance(sampler, str):
            raise ValueError(f"sampler must be one name, one of {', '.join(SAMPLERS)}; got {type(sampler).__name__} "
                             f"{shown(sampler)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {shown(sampler)}; choose one of {', '.join(SAMPLERS)}")
        check_evaluations(sampler, num_inference_steps)
        return cls(model=model, class_ids=class_ids, images_per_class=images_per_class,
                   guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                   guidance_power=guidance_power, num_inference_steps=num_inference_steps, seed=seed,
                   sampler=sampler)

    @property
    def labels(self):
        """One class id per image: each class repeated images_per_class times."""
        return [c for c in self.class_ids for _ in range(self.images_per_class)]

    @property
    def captions(self):
        """One caption (the class name) per image."""
        labels = model_labels(self.model)
        return [labels.name(c) for c in self.labels]
