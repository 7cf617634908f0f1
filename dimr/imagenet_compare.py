"""ImageNet side by side: DiT-XL/2 and DiMR-XL/2R sample the same classes from the same initial noise.

    request = Request.check(classes=["golden retriever", 88], images_per_class=1, num_inference_steps=50, seed=0)
    for update in stream(request):          # Progress(model, step, total, preview) while sampling, then a Comparison
        ...
    comparison.dit_gallery()                # [(PIL image, caption)]; DiT's 16x16 token borders drawn when patch_grid
    comparison.dimr.gallery(), comparison.dimr.branch_panel()     # a dimr.demo.Generation

One initial noise tensor [B, 4, 32, 32] (float32, drawn on the CPU from the seed, so it is the same on every
device) goes to both models unchanged. Each then samples with its own published settings:
- DiMR (`imagenet_dimr_model()`: DiMR-XL/2R, or DIMR_MODEL when that is an ImageNet model): the demo's run, with
  the branch panel; guidance `uncond + s (cond - uncond)`, s = 1.4 the official constant form, sampler
  dpm-solver-3s (the official solver).
- DiT-XL/2 (hub `facebook/DiT-XL-2-256`, diffusers' DiTTransformer2DModel, the repo's own scheduler and VAE):
  the sampling loop of diffusers' DiTPipeline, which draws its own noise and so cannot take ours: guidance
  `uncond + s (cond - uncond)` on the first 4 output channels (the noise) only, when s > 1; the other 4 (the
  learned variance) are dropped; s = 4.0, DiTPipeline's default. tests/test_dit.py checks that this loop gives
  DiTPipeline's images bit for bit.
Both decode with an SD VAE (DiMR: sd-vae-ft-ema; DiT: the VAE in its repo), 0.18215 latent scaling.
"""

import functools
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import demo
from .config import VARIANTS
from .loading import cached_or_downloaded
from .pipeline import check_guidance

DIT_REPO = "facebook/DiT-XL-2-256"
DIT_NAME = "DiT-XL/2"
DIMR_IMAGENET = "DiMR-XL/2R"
DIT_DOWNLOAD = "3 GB transformer + 335 MB VAE"
DIT_NULL_CLASS = 1000  # DiT's label embedding has 1001 rows; the last is the classifier-free "no class"
DIMR_GUIDANCE = 1.4  # the official constant guidance, cond + 0.4 (cond - uncond)
DIT_GUIDANCE = 4.0  # diffusers' DiTPipeline default (the DiT paper's FID 2.27 used 1.5 with 250 DDPM steps)
DEFAULT_STEPS = 50
PATCH_GRID_COLOR = (255, 255, 255, 110)
# The XL networks' float32 forwards on a CPU reach about this share of a plain 1024^3 matmul's FLOP/s (README).
NETWORK_EFFICIENCY = 0.75

_dit_cache = {}
_dit_lock = threading.Lock()
_flops_cache = {}


def imagenet_dimr_model():
    """The DiMR side: DIMR_MODEL when it is an ImageNet model (1000 classes), else DiMR-XL/2R."""
    name = demo.default_model()
    return name if len(demo.model_labels(name)) == 1000 else DIMR_IMAGENET


@dataclass(frozen=True)
class Request:
    """One comparison: the DiMR side's demo request (its classes, seed and steps are DiT's too) and DiT's guidance."""

    dimr: demo.Request
    dit_guidance_scale: float = DIT_GUIDANCE
    patch_grid: bool = False

    @classmethod
    def check(cls, classes, images_per_class=1, num_inference_steps=DEFAULT_STEPS, seed=0,
              dimr_guidance_scale=DIMR_GUIDANCE, dit_guidance_scale=DIT_GUIDANCE, patch_grid=False):
        """Validate everything before any model is loaded; ValueError names the bad value and what is allowed."""
        for side, scale in (("dimr", dimr_guidance_scale), ("dit", dit_guidance_scale)):
            try:
                check_guidance(scale)
            except ValueError as err:
                raise ValueError(f"{side}_{err}") from None  # the message starts with "guidance_scale"
        dimr = demo.Request.check(model=imagenet_dimr_model(), classes=classes, images_per_class=images_per_class,
                                  guidance_scale=dimr_guidance_scale, num_inference_steps=num_inference_steps,
                                  seed=seed)
        if not isinstance(patch_grid, (bool, np.bool_)):
            raise ValueError(f"patch_grid must be true or false, got {patch_grid!r}")
        return cls(dimr, float(dit_guidance_scale), bool(patch_grid))


@dataclass
class Progress:
    """`model` is at `step` of `total`; preview: DiMR's clean estimate so far [B, H, W, 3] uint8 (None for DiT)."""

    model: str
    step: int
    total: int
    preview: np.ndarray = None


@dataclass
class Comparison:
    """Both sides of a finished comparison."""

    request: Request
    noise: torch.Tensor  # [B, C, S, S] float32 on the CPU: the initial noise both models started from
    dimr: demo.Generation
    dit_images: np.ndarray  # [B, H, W, 3] uint8
    dit_tokens: int  # DiT's token grid is dit_tokens x dit_tokens
    dit_scheduler: str
    dit_seconds: float

    def dit_gallery(self):
        """[(PIL image, caption)], enlarged like DiMR's, with DiT's patch borders when the request asked for them."""
        images = [demo.enlarge(image) for image in self.dit_images]
        if self.request.patch_grid:
            images = [draw_patch_grid(image, self.dit_tokens) for image in images]
        return list(zip(images, self.dimr.captions))


def load_dit(device, torch_dtype=torch.float32):
    """A diffusers DiTPipeline of DIT_REPO on a device, loaded once per (device, dtype); the VAE is never float16."""
    key = (str(device), torch_dtype)
    with _dit_lock:
        if key not in _dit_cache:
            pipe = _load_dit(torch_dtype).to(device)
            if torch.device(device).type == "cuda" and pipe.vae.dtype == torch.bfloat16:
                pipe.vae.to(memory_format=torch.channels_last)  # as dimr.loading keeps bf16 VAEs on GPUs
            _dit_cache[key] = pipe
        return _dit_cache[key]


def clear_dit_cache():
    with _dit_lock:
        _dit_cache.clear()


def _load_dit(torch_dtype):
    how = (f"On a connected machine run `huggingface-cli download {DIT_REPO}` ({DIT_DOWNLOAD}) and copy the "
           f"Hugging Face cache (HF_HOME) here.")
    return cached_or_downloaded(lambda **hub: _dit_pipeline(torch_dtype, **hub), f"{DIT_REPO} ({DIT_NAME})", how)


def _dit_pipeline(torch_dtype, local_files_only):
    import diffusers
    from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel

    # The repo's main branch holds .bin files only (diffusers reads them with torch.load(weights_only=True)).
    hub = dict(local_files_only=local_files_only, use_safetensors=False)
    transformer = DiTTransformer2DModel.from_pretrained(DIT_REPO, subfolder="transformer", torch_dtype=torch_dtype,
                                                       **hub)
    vae_dtype = torch.float32 if torch_dtype == torch.float16 else torch_dtype  # the SD VAE overflows in float16
    vae = AutoencoderKL.from_pretrained(DIT_REPO, subfolder="vae", torch_dtype=vae_dtype, **hub)
    # The scheduler class the repo names (DiTPipeline accepts any of KarrasDiffusionSchedulers).
    config = diffusers.DDIMScheduler.load_config(DIT_REPO, subfolder="scheduler", local_files_only=local_files_only)
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    return DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=scheduler)


def missing_weights():
    """What a first comparison still has to download, e.g. ['DiT-XL/2 (3 GB transformer + 335 MB VAE)']; [] when
    both models are at hand (looks at local files only)."""
    from huggingface_hub import try_to_load_from_cache

    from .loading import MODELS, _released_weights_available

    missing = []
    dimr = imagenet_dimr_model()
    if dimr in VARIANTS and not _released_weights_available(dimr):
        missing.append(f"{dimr} ({MODELS[dimr].split('(')[-1].rstrip(')')})")
    if not isinstance(try_to_load_from_cache(DIT_REPO, "transformer/diffusion_pytorch_model.bin"), str):
        missing.append(f"{DIT_NAME} ({DIT_DOWNLOAD})")
    return missing


def initial_noise(batch, shape, seed):
    """The noise both sides start from: [batch, *shape] float32, from a CPU generator (the same on every device)."""
    return torch.randn((batch, *shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


@torch.inference_mode()
def dit_denoise(pipe, class_ids, latents, guidance_scale=DIT_GUIDANCE, num_inference_steps=DEFAULT_STEPS):
    """DiTPipeline's sampling loop from given latents; yields the latents (float32) after every step.

    Differences that leave the result unchanged: the scheduler is a fresh copy per call (concurrent calls are
    safe), only the conditional half of the batch is stepped (DiTPipeline steps two equal halves), the latents
    stay float32 between steps when the transformer runs in bf16, and they start scaled by the scheduler's
    init_noise_sigma (1 for DDIM)."""
    transformer = pipe.transformer
    channels = transformer.config.in_channels
    device = latents.device
    scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    # DiTPipeline leaves this out: 1 for DDIM and DPM-Solver, needed by sigma-based schedulers (Euler, Heun).
    latents = latents * scheduler.init_noise_sigma
    guided = guidance_scale > 1
    labels = torch.tensor(list(class_ids), device=device)
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, DIT_NULL_CLASS)])
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        batch = torch.cat([model_input, model_input]) if guided else model_input
        timesteps = t[None].to(device).expand(len(batch))
        out = transformer(batch.to(transformer.dtype), timestep=timesteps, class_labels=labels).sample.float()
        eps = out[:, :channels]  # the rest, when present, is the learned variance, which these samplers ignore
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
        yield latents


@torch.inference_mode()
def dit_decode(pipe, latents):
    """Latents -> [B, 3, H, W] float32 in 0..1, as DiTPipeline decodes them."""
    vae = pipe.vae
    samples = vae.decode(1 / vae.config.scaling_factor * latents.to(vae.dtype)).sample
    return (samples.float() / 2 + 0.5).clamp(0, 1)


def draw_patch_grid(image, tokens):
    """The image with the borders of a tokens x tokens grid drawn on top (DiT's patches, in image pixels)."""
    overlay = Image.new("RGBA", image.size)
    draw = ImageDraw.Draw(overlay)
    for k in range(1, tokens):
        x, y = round(k * image.width / tokens), round(k * image.height / tokens)
        draw.line([(x, 0), (x, image.height - 1)], fill=PATCH_GRID_COLOR)
        draw.line([(0, y), (image.width - 1, y)], fill=PATCH_GRID_COLOR)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def load(request):
    """Both pipelines on the demo's device (DiT in the demo's dtype); checks that their latents have one shape."""
    dimr_pipe = demo.load(request.dimr.model)
    dit_pipe = load_dit(demo.device(), dimr_pipe.model.dtype)
    config = dit_pipe.transformer.config
    dit_shape = (config.in_channels, config.sample_size, config.sample_size)
    if tuple(dimr_pipe.latent_shape) != dit_shape:
        raise ValueError(f"{request.dimr.model} samples latents of shape {tuple(dimr_pipe.latent_shape)} but "
                         f"{DIT_NAME} {dit_shape}; the same noise cannot start both. Use an ImageNet 256 DiMR model "
                         f"such as {DIMR_IMAGENET}.")
    return dimr_pipe, dit_pipe


def stream(request):
    """Run a comparison: yields Progress while sampling (DiMR first, then DiT), then the Comparison."""
    dimr_pipe, dit_pipe = load(request)
    dimr_request = request.dimr
    noise = initial_noise(len(dimr_request.labels), dimr_pipe.latent_shape, dimr_request.seed)
    generation = None
    for update in demo.stream(dimr_request, latents=noise):
        if isinstance(update, demo.Progress):
            yield Progress(dimr_request.model, update.step, update.total, update.preview)
        else:
            generation = update
    steps = dimr_request.num_inference_steps
    start = time.perf_counter()
    latents = noise.to(dit_pipe.device)
    for step, latents in enumerate(dit_denoise(dit_pipe, dimr_request.labels, latents, request.dit_guidance_scale,
                                               steps), start=1):
        yield Progress(DIT_NAME, step, steps)
    images = (dit_decode(dit_pipe, latents).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    config = dit_pipe.transformer.config
    yield Comparison(request=request, noise=noise, dimr=generation, dit_images=images,
                     dit_tokens=config.sample_size // config.patch_size,
                     dit_scheduler=type(dit_pipe.scheduler).__name__, dit_seconds=time.perf_counter() - start)


def describe(comparison):
    """The status box's text: what each side ran and how long it took."""
    r = comparison.request
    return (f"Same noise (seed {r.dimr.seed}) and classes for both. {demo.describe(comparison.dimr)}  \n"
            f"{DIT_NAME}: {len(comparison.dit_images)} images, {r.dimr.num_inference_steps} steps of "
            f"{comparison.dit_scheduler}, guidance {r.dit_guidance_scale:g} (DiT's, on the noise channels), "
            f"{comparison.dit_seconds:.1f} s on {demo.device()}")


# ---------------------------------------------------------------------------------------- the wait on a CPU


def estimate_seconds(request, dimr_pipe, dit_pipe):
    """Roughly how long a comparison takes, in seconds: both networks' FLOPs per step (with guidance, twice the
    batch) plus the VAE decodes (final images, DiMR's previews and branch panel), divided by NETWORK_EFFICIENCY x
    this device's float32 matrix-multiply speed. Meant for CPUs, where the wait is many minutes."""
    r = request.dimr
    batch, steps = len(r.labels), r.num_inference_steps
    shape = (1, *dimr_pipe.latent_shape)
    # The calls run on the meta device: the tensors they make there hold shapes only.
    dimr_flops = _forward_flops(dimr_pipe.model, lambda m: m(torch.zeros(shape), torch.tensor([500.0]),
                                                             torch.tensor([0])))
    dit_flops = _forward_flops(dit_pipe.transformer, lambda m: m(torch.zeros(shape), timestep=torch.tensor([500]),
                                                                 class_labels=torch.tensor([0])))
    decode_flops = _forward_flops(dimr_pipe.vae, lambda m: m.decode(torch.zeros(shape)))
    panel_decodes = len(demo.panel_steps(dimr_pipe, steps)) * len(dimr_pipe.model.branch_scales)
    # Decodes per image: both final images, the panel, and about one DiMR preview per step (a CPU step of a
    # latent model takes longer than demo.PREVIEW_INTERVAL_S).
    decodes = 2 + panel_decodes + steps
    total = (steps * batch * ((1 + (r.guidance_scale != 1)) * dimr_flops + (1 + (request.dit_guidance_scale > 1))
                              * dit_flops) + batch * decodes * decode_flops)
    return total / (NETWORK_EFFICIENCY * matmul_speed(str(dimr_pipe.device)))


def _forward_flops(module, call):
    """FLOPs of one call of a module's architecture, counted on the meta device (no weights touched, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    key = (type(module).__name__, str(dict(module.config)))
    if key not in _flops_cache:
        with torch.device("meta"):
            twin = type(module).from_config(module.config)
            with FlopCounterMode(display=False) as counter:
                call(twin)
        _flops_cache[key] = counter.get_total_flops()
    return _flops_cache[key]



@functools.lru_cache(maxsize=None)
def matmul_speed(device, size=1024, repeats=4):
    """Measured float32 matrix-multiply FLOP/s of a device (one short measurement, then remembered)."""
    a = torch.randn(size, size, device=device)
    a @ a  # warm-up
    if a.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        b = a @ a
    b.sum().item()
    return repeats * 2 * size**3 / (time.perf_counter() - start)


def wait_note(seconds):
    """'about 12 minutes' / 'about 40 seconds'."""
    return f"about {seconds / 60:.0f} minutes" if seconds >= 90 else f"about {max(seconds, 1):.0f} seconds"
