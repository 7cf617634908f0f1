"""The branch panel's images: a finished run's samples and every branch's clean-image estimate, ready to show.

    generation.gallery()                        # [(PIL image, caption)], small images enlarged for display
    generation.branch_panel(step=10)            # per image: every branch's estimate after step 10, then the final
    generation.branch_panel(10, view=CHANGES)   # per image: the coarse estimate, what each finer branch changes, final
    generation.panel_note(10, CHANGES)          # the line under the panel's controls: which step, how to read it

A run keeps branch images for `panel_steps(pipe, steps)`: every step of a pixel-space model, evenly spaced steps of a
latent model (each costs a VAE decode per branch), shrunk to PANEL_SIZE_LATENT. `generation_from` builds a
Generation from the pipeline's output and branch trace.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from dimr.checks import OutOfRange, check_int
from dimr.demo.catalogue import model_branches
from dimr.demo.refusals import page_message

ESTIMATES, CHANGES = "estimates", "changes"  # the panel's two views
DISPLAY_SIZE = 256  # smaller images are enlarged (nearest neighbour, so pixels stay visible) to about this
# A change map's contrast: this percentile of its |brightness change| shows as white or black (a few extreme pixels
# do not dim the rest).
CHANGE_PERCENTILE = 99
MAX_PANEL_STEPS_LATENT = 20
PANEL_SIZE_LATENT = 128
STEP_LABEL = "Panel step"  # the page's label of the panel's step slider, which its refusals name


def to_uint8(images):
    """Images in 0..1 (any shape) as uint8."""
    return (np.asarray(images) * 255).round().astype(np.uint8)


def enlarge(image):
    """An [H, W, 3] uint8 image as a PIL image, enlarged by a whole factor to about DISPLAY_SIZE."""
    pil = Image.fromarray(image)
    factor = max(1, DISPLAY_SIZE // max(pil.size))
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST) if factor > 1 else pil


@dataclass
class Generation:
    """A finished run: the final images and, for the panel steps, every branch's clean-image estimate."""

    request: object  # the dimr.demo.request.Request it answers
    captions: list  # one per image
    images: np.ndarray  # [B, H, W, 3] uint8
    branch_names: list  # per branch, lowest resolution first
    panel_steps: list  # 1-based step numbers that have branch estimates, ascending; always ends with the last
    branch_images: np.ndarray  # [len(panel_steps), L, B, h, w, 3] uint8, upsampled (nearest) from each branch
    seconds: float

    def gallery(self):
        return [(enlarge(image), caption) for image, caption in zip(self.images, self.captions)]

    def step_refusal(self, step):
        """The panel note's refusal of a step that this run does not have (out of range, or not a whole number: a
        typed 2.5 is refused, not rounded), naming the step slider; None for a step of this run."""
        try:
            check_int("step", step, 1, self.request.num_inference_steps)
        except OutOfRange as error:
            return f"**{page_message(error, {'step': STEP_LABEL})}**"
        return None

    def panel_step(self, step):
        """The panel step nearest to a requested 1-based step."""
        return min(self.panel_steps, key=lambda s: (abs(s - step), s))

    def panel_note(self, step, view=ESTIMATES):
        """'Branch panel after step 10 of 25.', naming the nearest step with branch images when `step` has none, and
        for the CHANGES view how to read its maps."""
        shown = self.panel_step(step)
        nearest = "" if shown == step else f" (nearest step with branch images: {shown})"
        note = f"Branch panel after step {shown} of {self.request.num_inference_steps}{nearest}."
        if view == CHANGES:
            note += (" Changes in brightness, each map stretched to its own range: white and black are the change "
                     "given in its caption, in % of full brightness (mid-grey: no change).")
        return note

    def branch_panel(self, step=None, view=ESTIMATES):
        """Per image, one row after `step` (default: the last), then the final image, enlarged for display
        (`panel_cells`)."""
        return [(enlarge(cell), caption) for cell, caption in self.panel_cells(step, view)]

    def panel_cells(self, step=None, view=ESTIMATES):
        """[(uint8 [h, w, 3], caption)]: per image, one row after `step` (default: the last), then the final image.
        view ESTIMATES: each branch's clean-image estimate; CHANGES: the coarsest branch's estimate, then what each
        finer branch changes in the estimate of the branch below it (`change_map`)."""
        if view not in (ESTIMATES, CHANGES):
            raise ValueError(f"view must be {ESTIMATES!r} or {CHANGES!r}, got {view!r}")
        index = self.panel_steps.index(self.panel_step(self.request.num_inference_steps if step is None else step))
        estimates = self.branch_images[index]
        row_items = []
        for b, caption in enumerate(self.captions):
            for l, branch in enumerate(self.branch_names):
                if view == CHANGES and l > 0:
                    change, extent = change_map(estimates[l, b], estimates[l - 1, b])
                    row_items.append((change, f"change by {branch}, ±{100 * extent:.0f}%"))
                else:
                    row_items.append((estimates[l, b], branch))
            row_items.append((self.images[b], f"final: {caption}"))
        return row_items

    @property
    def columns(self):
        return len(self.branch_names) + 1


def change_map(finer, coarser):
    """What a finer branch changes in a coarser branch's estimate ([H, W, 3] uint8 each), as a grey [H, W, 3] uint8
    image and its extent: the change in brightness (the mean of R, G and B), stretched to the map's own range so
    that the small changes of late steps and the large ones of early steps both show (mid-grey: no change; white
    and black: +-extent, a fraction of full brightness)."""
    change = finer.astype(np.float32).mean(axis=-1) - coarser.astype(np.float32).mean(axis=-1)
    scale = max(float(np.percentile(np.abs(change), CHANGE_PERCENTILE)), 1.0)
    grey = np.clip(128 + 127 * change / scale, 0, 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), scale / 255


def panel_steps(pipe, steps):
    """0-based step indices the panel decodes: all for pixel-space models, evenly spaced ones for latent models."""
    if pipe.is_pixel_space or steps <= MAX_PANEL_STEPS_LATENT:
        return list(range(steps))
    return sorted(set(np.linspace(steps - 1, 0, MAX_PANEL_STEPS_LATENT).round().astype(int).tolist()))


def generation_from(pipe, request, output, seconds):
    """The Generation of a request from its pipeline output (np images, with the branch trace of `panel_steps`)."""
    trace = output.branches
    per_step = np.stack([np.stack([to_uint8(branch) for branch in step]) for step in trace.images])
    if not pipe.is_pixel_space and per_step.shape[-2] > PANEL_SIZE_LATENT:
        per_step = _shrink(per_step, PANEL_SIZE_LATENT)
    return Generation(request=request, captions=request.captions, images=to_uint8(output.images),
                      branch_names=model_branches(request.model), panel_steps=[s + 1 for s in trace.image_steps],
                      branch_images=per_step, seconds=seconds)


def _shrink(images, size):
    """[..., H, W, 3] uint8 -> [..., size, size, 3] (area filter), to keep the panel of a latent model small."""
    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    flat = images.reshape(-1, h, w, c)
    resized = [np.asarray(Image.fromarray(im).resize((size, size), Image.BOX)) for im in flat]
    return np.stack(resized).reshape(*lead, size, size, c)
