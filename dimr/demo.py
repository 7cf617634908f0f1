"""What the Gradio demo (app.py) runs, without any UI code: which models it offers, the checks on a request,
one sampling run that keeps every branch's clean-image estimate at every step for the branch panel, real reference
shapes, and the distortion judge's verdicts. app.py imports nothing else from the package: this module is its door.

    request = Request.check(model="tiny-dimr", classes=["ring", 3], images_per_class=2, num_inference_steps=25, seed=0)
    for update in stream(request):            # Progress(step, total, preview) while sampling, then a Generation
        ...
    generation.gallery()                      # [(PIL image, caption)], small images enlarged for display
    generation.branch_panel(step=10)          # per image: every branch's estimate after step 10, then the final image
    generation.branch_panel(10, view=CHANGES) # per image: the coarse estimate, what each finer branch changes, final
    judged_gallery(generation)                # the samples captioned with the judge's verdict (shapes models)

Labels, guidance and steps are checked by the project's own checks (`dimr.labels`, `dimr.pipeline.check_guidance`,
`check_num_inference_steps`, `make_scheduler`), before any model is loaded; this module adds only the model list
and the demo's limits (how many images and steps one request may ask for).
"""

import functools
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import defaults
from .acceleration import accelerate_pipeline, default_mode, mode_dtype
from .batching import GPU_SECONDS_MAX, Batcher, gpu_seconds  # the GPU seconds: for app.py's ZeroGPU requests
from .data.shapes import CLASS_NAMES, make_dataset
from .distortion import judge, stored_result
from .labels import labels_for_model
from .loading import BUNDLED, MODELS, default_device, load_pipeline, model_config, model_files
from .model import DiMRModel
from .pipeline import DEFAULT_SCHEDULER, GUIDANCE_SCHEDULES, SCHEDULERS, check_guidance, check_num_inference_steps
from .pipeline import make_scheduler
from .weights import CheckpointError

TINY_DIMR, TINY_BASELINE = "tiny-dimr", "tiny-baseline"
# One request holds the device for its whole run: these bound its time and the memory its branch panel keeps.
MAX_IMAGES = 16
MAX_COMPARE_IMAGES = 40  # per model: the tiny models sample 4 images of each of the 10 shapes in seconds
MAX_STEPS = 250  # the official evaluation's 250 model evaluations
# Latent models pay a VAE decode per branch and step for the panel; pixel-space models keep every step.
MAX_PANEL_STEPS_LATENT = 20
PANEL_SIZE_LATENT = 128
DISPLAY_SIZE = 256  # smaller images are enlarged (nearest neighbour, so pixels stay visible) to about this
MAX_SEED = 2**32 - 1
SAMPLERS = list(SCHEDULERS)
DEFAULT_SAMPLER = DEFAULT_SCHEDULER
ESTIMATES, CHANGES = "estimates", "changes"  # the branch panel's two views
REFERENCE_SEED = 4  # real reference shapes: not the diffusion models' training data (seed 0)
PREVIEW_INTERVAL_S = 0.4


def default_model():
    """DIMR_MODEL (a name from MODELS or a directory with config.json), else the bundled tiny DiMR."""
    return os.environ.get("DIMR_MODEL") or TINY_DIMR


def device():
    """DIMR_DEVICE (e.g. cpu, cuda, cuda:1), else a GPU when there is one."""
    return torch.device(os.environ.get("DIMR_DEVICE") or default_device())


def acceleration_mode():
    """DIMR_ACCELERATION (none, bf16 or fast; see dimr.acceleration), else the fastest mode for the platform:
    "fast" on GPUs (`warm_up` compiles every batch shape at start-up), "bf16" under ZeroGPU (a GPU lent per
    request: compilation would be paid inside visitors' requests), float32 on CPUs."""
    zero_gpu = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
    return os.environ.get("DIMR_ACCELERATION") or ("bf16" if zero_gpu else default_mode(device()))


def model_choices():
    """The model picker's names: the known models, plus DIMR_MODEL when it is a directory."""
    return list(MODELS) if default_model() in MODELS else [default_model(), *MODELS]


def model_description(name):
    """One line about a model, for the picker's note."""
    return MODELS.get(name, "a converted model directory")


def check_model(name):
    allowed = model_choices()
    if name not in allowed:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(allowed)}")
    return name


@functools.lru_cache(maxsize=None)
def _model_outline(name):
    """A model object on the meta device: its config, labels and branches without loading (or downloading) weights."""
    check_model(name)
    with torch.device("meta"):
        return DiMRModel.from_config(model_config(name))


def model_labels(name):
    """The class labels of a model (ImageNet, or the names in its config)."""
    return labels_for_model(_model_outline(name))


def model_branches(name):
    """'8x8 transformer (4x4 px patches)', ... per branch, lowest resolution first."""
    return branch_names(_model_outline(name))


def is_shapes_model(name):
    """True for models trained on the shapes classes: they have real reference shapes and a distortion judge."""
    return model_labels(name).names == [[n] for n in CLASS_NAMES]


def class_choices(name):
    """(label, id) pairs for a class picker; the label lists the synonyms so that typing any of them finds it."""
    labels = model_labels(name)
    return [(f"{', '.join(names)} ({i})", i) for i, names in enumerate(labels.names)]


def default_classes(name):
    """A few classes that show the model well: ImageNet favourites, or shapes where distortion shows."""
    labels = model_labels(name)
    if len(labels) == defaults.IMAGENET_CLASSES:
        return [207, 88, 279, 980]  # golden retriever, macaw, arctic fox, volcano
    showcase = [i for i, names in enumerate(labels.names) if names[0] in ("ring", "star", "stripes", "checkerboard")]
    return showcase or list(range(min(4, len(labels))))


def default_guidance(name):
    """The guidance scale the demo starts at for a model (dimr.defaults)."""
    return defaults.guidance_scale(len(model_labels(name)))


def default_steps(name):
    """The number of sampling steps the demo starts at for a model (dimr.defaults)."""
    return defaults.num_inference_steps(len(model_labels(name)))


def same_classes(name, other):
    """True when two models have the same classes (a class choice carries over from one to the other)."""
    return model_labels(name).names == model_labels(other).names


def random_classes(name, count, rng):
    labels = model_labels(name)
    return sorted(rng.sample(range(len(labels)), min(max(count, 1), len(labels))))


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range: use {low}..{high}")
    return int(value)


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
    def check(cls, *, model, classes, images_per_class=1, guidance_scale=None, guidance_schedule="constant",
              guidance_power=1.0, num_inference_steps=None, seed=0, sampler=DEFAULT_SCHEDULER, max_images=MAX_IMAGES):
        """Validate everything before any model is loaded; ValueError says which value is wrong and what is allowed.

        Keyword arguments only: the controls are many and alike, so a call by position could swap two unnoticed.
        guidance_scale and num_inference_steps default to the model's (dimr.defaults)."""
        labels = model_labels(check_model(model))
        guidance_scale = default_guidance(model) if guidance_scale is None else guidance_scale
        num_inference_steps = default_steps(model) if num_inference_steps is None else num_inference_steps
        if isinstance(classes, (str, int)) and not isinstance(classes, bool):
            classes = [classes]
        if not isinstance(classes, (list, tuple)):
            raise ValueError(f"classes must be a list of class names or ids, got {type(classes).__name__} {classes!r}")
        if not classes:
            raise ValueError("no class chosen: pick at least one class (a name, synonym or id)")
        class_ids = tuple(labels.to_id(label) for label in classes)
        images_per_class = _check_int("images_per_class", images_per_class, 1, MAX_IMAGES)
        if len(class_ids) * images_per_class > max_images:
            raise ValueError(f"{len(class_ids)} classes x {images_per_class} images per class = "
                             f"{len(class_ids) * images_per_class} images; the demo makes at most {max_images} "
                             f"per request")
        check_guidance(guidance_scale, guidance_schedule, guidance_power)
        check_num_inference_steps(num_inference_steps)
        if num_inference_steps > MAX_STEPS:
            raise ValueError(f"num_inference_steps={num_inference_steps} is more than the demo allows: "
                             f"use 1..{MAX_STEPS}")
        seed = _check_int("seed", seed, 0, MAX_SEED)
        if not isinstance(sampler, str):
            raise ValueError(f"sampler must be one name, one of {', '.join(SAMPLERS)}; got {type(sampler).__name__} "
                             f"{sampler!r}")
        make_scheduler(sampler)  # raises for an unknown sampler name
        return cls(model=model, class_ids=class_ids, images_per_class=images_per_class,
                   guidance_scale=float(guidance_scale), guidance_schedule=guidance_schedule,
                   guidance_power=float(guidance_power), num_inference_steps=int(num_inference_steps), seed=seed,
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


def _to_uint8(images):
    return (np.asarray(images) * 255).round().astype(np.uint8)


def enlarge(image):
    """An [H, W, 3] uint8 image as a PIL image, enlarged by a whole factor to about DISPLAY_SIZE."""
    pil = Image.fromarray(image)
    factor = max(1, DISPLAY_SIZE // max(pil.size))
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST) if factor > 1 else pil


@dataclass
class Progress:
    """Sampling is at `step` of `total`; `preview`: the full-resolution clean estimate so far, [B, H, W, 3] uint8."""

    step: int
    total: int
    preview: np.ndarray


@dataclass
class Generation:
    """A finished run: the final images and, for the panel steps, every branch's clean-image estimate."""

    request: Request
    captions: list  # one per image
    images: np.ndarray  # [B, H, W, 3] uint8
    branch_names: list  # per branch, lowest resolution first
    panel_steps: list  # 1-based step numbers that have branch estimates, ascending; always ends with the last
    branch_images: np.ndarray  # [len(panel_steps), L, B, h, w, 3] uint8, upsampled (nearest) from each branch
    seconds: float

    def gallery(self):
        return [(enlarge(image), caption) for image, caption in zip(self.images, self.captions)]

    def panel_step(self, step):
        """The panel step nearest to a requested 1-based step."""
        return min(self.panel_steps, key=lambda s: (abs(s - step), s))

    def branch_panel(self, step=None, view=ESTIMATES):
        """Per image, one row after `step` (default: the last), then the final image. view ESTIMATES: each branch's
        clean-image estimate; CHANGES: the coarsest branch's estimate, then what each finer branch changes in the
        estimate of the branch below it (mid-grey: nothing; lighter or darker: brighter or darker there)."""
        if view not in (ESTIMATES, CHANGES):
            raise ValueError(f"view must be {ESTIMATES!r} or {CHANGES!r}, got {view!r}")
        index = self.panel_steps.index(self.panel_step(self.request.num_inference_steps if step is None else step))
        estimates = self.branch_images[index]
        row_items = []
        for b, caption in enumerate(self.captions):
            for l, branch in enumerate(self.branch_names):
                if view == CHANGES and l > 0:
                    change = estimates[l, b].astype(np.int16) - estimates[l - 1, b]
                    row_items.append((enlarge(np.clip(128 + change, 0, 255).astype(np.uint8)), f"change by {branch}"))
                else:
                    row_items.append((enlarge(estimates[l, b]), branch))
            row_items.append((enlarge(self.images[b]), f"final: {caption}"))
        return row_items

    @property
    def columns(self):
        return len(self.branch_names) + 1


def branch_names(model):
    """What each branch is, lowest resolution first: a transformer with its token grid and patch size (the coarseness
    that distorts fine detail), or a convolutional branch with its grid. Latent models' grids are latent pixels."""
    latent = "" if model.config.channels == 3 else " latent"
    names = []
    for stage in model.stage_configs:
        grid = stage["max_height"]
        if stage["block_type"] == "TransformerBlock":
            patch = model.sample_size // grid
            names.append(f"{grid}x{grid}{latent} transformer ({patch}x{patch} px patches)")
        else:
            names.append(f"{grid}x{grid}{latent} ConvNeXt")
    return names


def panel_steps(pipe, steps):
    """0-based step indices the panel decodes: all for pixel-space models, evenly spaced ones for latent models."""
    if pipe.is_pixel_space or steps <= MAX_PANEL_STEPS_LATENT:
        return list(range(steps))
    return sorted(set(np.linspace(steps - 1, 0, MAX_PANEL_STEPS_LATENT).round().astype(int).tolist()))


class ModelUnavailable(ValueError):
    """A model cannot be loaded on this server; the message says so to a visitor, then what the operator must do."""


def load(model_name, sampler=DEFAULT_SCHEDULER):
    """The pipeline for a model on the demo's device (networks are loaded once and kept by dimr.loading)."""
    mode = acceleration_mode()
    try:
        pipe = load_pipeline(model_name, device=device(), torch_dtype=mode_dtype(mode), scheduler=sampler)
    except CheckpointError as err:
        bundled = " and ".join(BUNDLED)
        raise ModelUnavailable(f"{model_name} is not available on this server right now (its weights are not "
                               f"installed here); {bundled} work meanwhile. What the operator of this demo must do: "
                               f"{err}") from err
    return accelerate_pipeline(pipe, mode)


def stream(request, stop=None, latents=None):
    """Sample a request: yields Progress about every PREVIEW_INTERVAL_S, then the Generation.

    latents: the initial noise [B, C, H, W] instead of noise drawn from the request's seed (dimr.imagenet_compare
    gives the same tensor to DiMR and DiT); such a request samples alone.

    Requests waiting at the same time share sampling runs (dimr.batching); this one gets its own previews and
    result. Setting the `stop` event (or closing this generator, as Gradio does when the browser goes away) ends
    this request after the current step."""
    stop = stop or threading.Event()
    job = _BATCHER.submit(request, stop, latents)
    try:
        while not job.finished.wait(PREVIEW_INTERVAL_S):
            item = job.take_preview()
            if item is not None:
                yield Progress(item[0] + 1, request.num_inference_steps, _to_uint8(item[1]))
    finally:
        stop.set()
    out, seconds = job.result()
    yield _generation(job.pipe, request, out, seconds)


_BATCHER = Batcher(load=lambda request: load(request.model, request.sampler), branch_steps=panel_steps)


def warm_up(model_name):
    """Load a model and compile its batch shapes in the background (dimr.batching.Batcher.warm_up); requests
    that arrive meanwhile go first."""
    _BATCHER.warm_up(lambda: load(model_name))


def _generation(pipe, request, out, seconds):
    trace = out.branches
    per_step = np.stack([np.stack([_to_uint8(branch) for branch in step]) for step in trace.images])
    if not pipe.is_pixel_space and per_step.shape[-2] > PANEL_SIZE_LATENT:
        per_step = _shrink(per_step, PANEL_SIZE_LATENT)
    return Generation(request=request, captions=request.captions, images=_to_uint8(out.images),
                      branch_names=model_branches(request.model), panel_steps=[s + 1 for s in trace.image_steps],
                      branch_images=per_step, seconds=seconds)


def _shrink(images, size):
    """[..., H, W, 3] uint8 -> [..., size, size, 3] (area filter), to keep the panel of a latent model small."""
    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    flat = images.reshape(-1, h, w, c)
    resized = [np.asarray(Image.fromarray(im).resize((size, size), Image.BOX)) for im in flat]
    return np.stack(resized).reshape(*lead, size, size, c)


def describe(generation):
    """One line for the status box."""
    r = generation.request
    guidance = f"guidance {r.guidance_scale:g} ({r.guidance_schedule}" + (
        f", power {r.guidance_power:g})" if r.guidance_schedule == "power-cosine" else ")")
    return (f"{r.model}: {len(generation.captions)} images, {r.num_inference_steps} steps of {r.sampler}, {guidance}, "
            f"seed {r.seed}, {generation.seconds:.1f} s on {device()}")


def reference_shapes(class_ids, seed=REFERENCE_SEED):
    """One real (rendered) shape per class id, in order, as [(PIL image, 'real <class>')]: what a sample should show.

    Each class gets its own shape from a fixed seed, so a class looks the same wherever it appears."""
    images, labels = make_dataset(len(CLASS_NAMES), seed)  # one shape of each class (make_dataset balances them)
    index = {int(k): i for i, k in enumerate(labels)}
    return [(enlarge(images[index[c]].permute(1, 2, 0).numpy()), f"real {CLASS_NAMES[c]}") for c in class_ids]


def verdicts(generation):
    """The distortion judge's verdict per sample of a shapes model: [(misdrawn, p of the intended class)]."""
    images = torch.from_numpy(generation.images).permute(0, 3, 1, 2)
    flagged, p_intended = judge(images, torch.tensor(generation.request.labels))
    return list(zip(flagged.tolist(), p_intended.tolist()))


def judged_gallery(generation):
    """The samples captioned with the judge's verdict: 'ring ✓ recognised, p 0.97' or 'ring ✗ misdrawn, p 0.12'."""
    # A no-break space keeps p and its value together when the caption wraps.
    return [(image, f"{caption} {'✗ misdrawn' if misdrawn else '✓ recognised'}, p\u00a0{p:.2f}")
            for (image, caption), (misdrawn, p) in zip(generation.gallery(), verdicts(generation))]


def measured_distortion(name):
    """The distortion measured for a bundled model and stored beside its weights (dimr.distortion), or None."""
    return stored_result(model_files(name).directory) if name in BUNDLED else None
