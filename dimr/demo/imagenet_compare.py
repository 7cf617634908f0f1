"""ImageNet side by side: DiT-XL/2 and DiMR-XL/2R sample the same classes from the same initial noise.

    request = ComparisonRequest.check(classes=["golden retriever", 88], num_inference_steps=50, seed=0)
    for update in stream_comparison(request):  # ComparisonProgress(model, step, total, dimr), then a Comparison
        ...
    comparison.dit_gallery()                   # [(PIL image, caption)]; DiT's token borders drawn when patch_grid
    comparison.dimr.gallery(), comparison.dimr.branch_panel()     # a dimr.demo.panel.Generation

One initial noise tensor [B, 4, 32, 32] (float32, drawn on the CPU from the seed, so it is the same on every
device) goes to both models unchanged. Each then samples with its own published settings:
- DiMR (`imagenet_dimr_model()`: DiMR-XL/2R, or DIMR_MODEL when that is an ImageNet model): the demo's run
  (dimr.demo.serving), with the branch panel; guidance `uncond + s (cond - uncond)`, s = 1.4 the official constant
  form, sampler dpm-solver-3s (the official solver).
- DiT-XL/2 (dimr.demo.dit): the sampling loop of diffusers' DiTPipeline from our noise; guidance on the noise channels
  only, s = 4.0, DiTPipeline's default. tests/test_dit.py checks that this loop gives DiTPipeline's images bit
  for bit.
Both sample on the demo's one sampling thread (dimr.demo.serving), in turn with other visitors' requests.
Both decode with an SD VAE (DiMR: sd-vae-ft-ema; DiT: the VAE in its repo), 0.18215 latent scaling.
On a CPU a comparison takes minutes: `estimate_seconds` says how many before sampling starts (dimr.demo.timing, as for
every request), and refuses one longer than the operator allows.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from dimr.demo import serving, timing
from dimr.demo.catalogue import default_model, model_choices, model_labels
from dimr.demo.dit import DIT_GUIDANCE, DIT_NAME, dit_decode, dit_denoise, dit_missing, load_dit
from dimr.demo.panel import Generation, enlarge
from dimr.demo.refusals import refusing
from dimr.demo.request import Request, check_guidance_scale
from dimr.network.acceleration import mode_dtype
from dimr.network.weights import CheckpointError
from dimr.sampling import caches
from dimr.sampling.loading import missing_parts

DIMR_IMAGENET = "DiMR-XL/2R"
DIMR_GUIDANCE = 1.4  # the official constant guidance, cond + 0.4 (cond - uncond)
DEFAULT_STEPS = 50
# What a visitor reads when the models are missing: what does not work and what does, no operator's instructions.
NOT_INSTALLED = ("The ImageNet models are not installed on this server, so this comparison cannot run here; the "
                 "Generate and Compare tabs work with the tiny models.")
PATCH_GRID_COLOR = (255, 255, 255, 110)


def imagenet_dimr_model():
    """The DiMR side: DIMR_MODEL when it is an ImageNet model (1000 classes), else DiMR-XL/2R."""
    name = default_model()
    return name if len(model_labels(name)) == 1000 else DIMR_IMAGENET


@dataclass(frozen=True)
class ComparisonRequest:
    """One comparison: the DiMR side's demo request (its classes, seed and steps are DiT's too) and DiT's guidance."""

    dimr: Request
    dit_guidance_scale: float = DIT_GUIDANCE
    patch_grid: bool = False

    @classmethod
    @refusing
    def check(cls, *, classes, images_per_class=1, num_inference_steps=DEFAULT_STEPS, seed=0,
              dimr_guidance_scale=DIMR_GUIDANCE, dit_guidance_scale=DIT_GUIDANCE, patch_grid=False):
        """Validate everything before any model is loaded; ValueError names the bad value and what is allowed."""
        check_guidance_scale(dimr_guidance_scale, "dimr_guidance_scale")
        dit_guidance_scale = check_guidance_scale(dit_guidance_scale, "dit_guidance_scale")
        dimr = Request.check(model=imagenet_dimr_model(), classes=classes, images_per_class=images_per_class,
                             guidance_scale=dimr_guidance_scale, num_inference_steps=num_inference_steps, seed=seed)
        if not isinstance(patch_grid, (bool, np.bool_)):
            raise ValueError(f"patch_grid must be true or false, got {patch_grid!r}")
        return cls(dimr, dit_guidance_scale, bool(patch_grid))


@dataclass
class ComparisonProgress:
    """`model` is at `step` of `total`; `dimr`: DiMR's own progress, with its preview (None while DiT samples)."""

    model: str
    step: int
    total: int
    dimr: serving.Progress = None


@dataclass
class Comparison:
    """Both sides of a finished comparison."""

    request: ComparisonRequest
    noise: torch.Tensor  # [B, C, S, S] float32 on the CPU: the initial noise both models started from
    dimr: Generation
    dit_images: np.ndarray  # [B, H, W, 3] uint8
    dit_tokens: int  # DiT's token grid is dit_tokens x dit_tokens
    dit_scheduler: str
    dit_seconds: float

    def dit_gallery(self):
        """[(PIL image, caption)], enlarged like DiMR's, with DiT's patch borders when the request asked for them."""
        images = [enlarge(image) for image in self.dit_images]
        if self.request.patch_grid:
            images = [draw_patch_grid(image, self.dit_tokens) for image in images]
        return list(zip(images, self.dimr.captions))


def setup_note():
    """For the tab, in one sentence for a visitor: the ImageNet models are not installed here and what works instead;
    or, with them at hand, what the device means for the wait. The operator's instructions: `operator_note`."""
    if missing_models():
        return NOT_INSTALLED
    return ("Weights: at hand. On a CPU a comparison takes many minutes (the status shows the estimate before "
            "sampling starts)." if serving.device().type == "cpu" else f"Weights: at hand. Device: {serving.device()}.")


def operator_note():
    """For the server's log at start-up: what the ImageNet tab and the model menu lack here and how to install it
    (docs/serving.md), or None when everything is at hand (looks at local files only)."""
    missing = {**missing_models(), **{what: how for name in model_choices() for what, how in missing_parts(name).items()}}
    if missing:
        return f"not installed here (the page tells visitors only that): {serving.how_list(missing)}"
    return None


def missing_models():
    """What a comparison still needs on this server, as {what: how to install it}: DiMR's weights and VAE, DiT;
    {} when everything is at hand (looks at local files only)."""
    return {**missing_parts(imagenet_dimr_model()), **dit_missing()}


def initial_noise(batch, shape, seed):
    """The noise both sides start from: [batch, *shape] float32, from a CPU generator (the same on every device)."""
    return torch.randn((batch, *shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def draw_patch_grid(image, tokens):
    """The image with the borders of a tokens x tokens grid drawn on top (DiT's patches, in image pixels)."""
    overlay = Image.new("RGBA", image.size)
    draw = ImageDraw.Draw(overlay)
    for k in range(1, tokens):
        x, y = round(k * image.width / tokens), round(k * image.height / tokens)
        draw.line([(x, 0), (x, image.height - 1)], fill=PATCH_GRID_COLOR)
        draw.line([(0, y), (image.width - 1, y)], fill=PATCH_GRID_COLOR)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def load_comparison(request):
    """Both pipelines on the demo's device (DiT in the demo's dtype); checks that their latents have one shape. A
    model that is neither here nor downloadable fails with one ModelUnavailable: NOT_INSTALLED for the visitor, every
    model still missing and how to install it for the operator."""
    try:
        dimr_pipe = serving.load(request.dimr.model)
        dit_pipe = load_dit(serving.device(), mode_dtype(serving.acceleration_mode()))
    except (serving.ModelUnavailable, CheckpointError):
        missing = missing_models()
        if not missing:
            raise
        raise serving.ModelUnavailable(NOT_INSTALLED, f"cannot download now (the Hugging Face hub cannot be reached, "
                                       f"or HF_HUB_OFFLINE is set); {serving.how_list(missing)}") from None
    config = dit_pipe.transformer.config
    dit_shape = (config.in_channels, config.sample_size, config.sample_size)
    if tuple(dimr_pipe.latent_shape) != dit_shape:
        raise ValueError(f"{request.dimr.model} samples latents of shape {tuple(dimr_pipe.latent_shape)} but "
                         f"{DIT_NAME} {dit_shape}; the same noise cannot start both. Use an ImageNet 256 DiMR model "
                         f"such as {DIMR_IMAGENET}.")
    return dimr_pipe, dit_pipe


def stream_comparison(request, stop=None):
    """Run a comparison: yields ComparisonProgress while sampling (DiMR first, then DiT), then the Comparison.
    Both sample on the demo's one sampling worker (dimr.demo.serving), in turn with other visitors' requests; setting
    `stop` (or closing this generator) ends the comparison after the current step."""
    dimr_pipe, dit_pipe = load_comparison(request)
    dimr_request = request.dimr
    steps = dimr_request.num_inference_steps
    noise = initial_noise(len(dimr_request.labels), dimr_pipe.latent_shape, dimr_request.seed)
    for update in serving.stream(dimr_request, stop, latents=noise):
        if isinstance(update, serving.Progress):
            yield ComparisonProgress(dimr_request.model, update.step, update.total, update)
        elif not isinstance(update, serving.Loading):  # loaded by load_comparison, timed by prepare: a moment
            generation = update

    def sample_dit(progress):
        start = time.perf_counter()
        latents = noise.to(dit_pipe.device)
        for step, latents in enumerate(dit_denoise(dit_pipe, dimr_request.labels, latents,
                                                   request.dit_guidance_scale, steps)):
            progress(step)
        images = (dit_decode(dit_pipe, latents).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return images, time.perf_counter() - start

    for update in serving.run_task(sample_dit, stop):
        if isinstance(update, int):
            yield ComparisonProgress(DIT_NAME, update, steps)
        else:
            images, seconds = update
    config = dit_pipe.transformer.config
    yield Comparison(request=request, noise=noise, dimr=generation, dit_images=images,
                     dit_tokens=config.sample_size // config.patch_size,
                     dit_scheduler=type(dit_pipe.scheduler).__name__, dit_seconds=seconds)


def page_updates(updates, wait, progress):
    """What the tab shows while `stream_comparison`'s updates come: (DiMR's samples, DiT's, DiMR's branch panel,
    status line), images as [(PIL image, caption)]; `wait` starts the status line (`cpu_wait`), and `progress` (a
    callable like Gradio's Progress) hears each step."""
    dimr_preview = []
    for update in updates:
        if isinstance(update, ComparisonProgress):
            progress((update.step, update.total), desc=f"{wait}Sampling with {update.model}", unit="steps")
            dimr_preview = update.dimr.gallery() if update.dimr else dimr_preview
            yield dimr_preview, [], [], f"{wait}Sampling with {update.model}: step {update.step} of {update.total}…"
        else:
            yield update.dimr.gallery(), update.dit_gallery(), update.dimr.branch_panel(), describe_comparison(update)


def describe_comparison(comparison):
    """The status box's text: what each side ran and how long it took."""
    r = comparison.request
    return (f"Same noise (seed {r.dimr.seed}) and classes for both. {serving.describe(comparison.dimr)}  \n"
            f"{DIT_NAME}: {len(comparison.dit_images)} images, {serving.counted(r.dimr.num_inference_steps, 'step')} of "
            f"{comparison.dit_scheduler}, guidance {r.dit_guidance_scale:g} (DiT's, on the noise channels), "
            f"{comparison.dit_seconds:.1f} s on {serving.device()}")


# ---------------------------------------------------------------------------------------- the wait


def estimate_seconds(request, dimr_pipe, dit_pipe):
    """How long a comparison holds the device, in seconds, from this device's speeds (dimr.demo.timing, the estimate
    of every request): DiMR's request (dimr.demo.serving.check_time), then DiT's steps (twice the batch when guided)
    and decodes of the same images. Refused when that is more than the operator allows."""
    dit_rates = caches.remembered(("rates", DIT_NAME, str(dit_pipe.device), str(dit_pipe.transformer.dtype)),
                                  lambda: dit_speeds(dit_pipe))

    def dit_seconds(r):
        return dit_rates.seconds(len(r.labels), r.num_inference_steps, request.dit_guidance_scale > 1, len(r.labels))

    return serving.check_time(request.dimr, dimr_pipe, dit_seconds)


def dit_speeds(dit_pipe):
    """timing.measured_rates of DiT's transformer and VAE on their device."""
    config, device = dit_pipe.transformer.config, dit_pipe.device
    shape = (config.in_channels, config.sample_size, config.sample_size)

    def run(batch, steps):
        for _ in range(steps):
            dit_pipe.transformer(torch.zeros((batch, *shape), device=device, dtype=dit_pipe.transformer.dtype),
                                 timestep=torch.full((batch,), 500, device=device),
                                 class_labels=torch.zeros(batch, dtype=torch.long, device=device))

    def decode(batch):
        dit_decode(dit_pipe, torch.zeros((batch, *shape), device=device))

    return timing.measured_rates(run, decode, f"this {device.type}")


def prepare(request):
    """Load both models and estimate the comparison's time (Refused over the limit); on a CPU, the status line's
    'On this CPU this comparison takes about 12 minutes. ', else ''."""
    dimr_pipe, dit_pipe = load_comparison(request)
    seconds = estimate_seconds(request, dimr_pipe, dit_pipe)
    return f"On this CPU this comparison takes {timing.wait_note(seconds)}. " if dimr_pipe.device.type == "cpu" else ""
