"""Sampling: `DiMRPipeline` turns a DiMR network into images, and shows what every branch predicts at every step.

    pipe = load_pipeline("DiMR-XL/2R")                       # dimr.sampling.loading
    out = pipe(["golden retriever", 281], guidance_scale=1.4, num_inference_steps=50,
               generator=torch.Generator().manual_seed(0), return_branches=True, branch_steps=[0, 24, 49])
    out.images                     # final images (PIL list; or np / pt / latent per output_type)
    out.branches                   # a BranchTrace (below), None unless return_branches=True

Guidance is `uncond + w (cond - uncond)` with the model's null class, cond and uncond in one batched forward
(w == 1 at every step skips the uncond half). guidance_scale is one number, or a tensor [B] with one per sample
(so that requests with different scales can share one run). `guidance_schedule="constant"`: w = guidance_scale
(the official U-ViT form `cond + 0.4 (cond - uncond)` is guidance_scale=1.4). `"power-cosine"`: the official decay
`w(n) = 1 + (s - 1) (1 - cos(pi (1 - n/1000)^p)) / 2`, n = k + 1 for timestep index k, s = guidance_scale,
p = guidance_power: 1 at pure noise, s at the end.

BranchTrace (all tensors float32 on the pipeline's device; S = number of steps = len(timesteps), B = batch, L = branches, lowest resolution first, branch l has scale f = trace.scales[l] (1 for the last)):
    timesteps    list of S timestep indices k (floats for sigma-based samplers): of each step's last evaluation
                 (a step is one model evaluation, or two for Heun: `model_evaluations` counts them)
    scales       list of L downsampling factors (model.branch_scales)
    noise_pred   list of L tensors [S, B, C, H/f, W/f]: the branch's guided output: the noise (the released
                 models; "v" or x0 for models trained so, per the scheduler's prediction_type), sum-pooled over
                 f x f and divided by f (unit variance for noise).
    x0_pred      list of L tensors [S, B, C, H/f, W/f]: the clean estimate the branch implies, as an image at
                 its own resolution (= what avg-pooling the clean sample over f x f should give): with the
                 branch's noisy input x_t^f = sum-pool_f(x_t) / f, x0 = (x_t^f - sqrt(1 - abar) eps_f) / sqrt(abar) / f
                 for noise predictions (`branch_x0`).
    image_steps  the step indices (into 0..S-1) that were decoded to images, in the order given
    images       images[j][l]: branch l at step image_steps[j], upsampled (nearest, so the blocks show the
                 branch's resolution) to full size and decoded (VAE in batches of `pipe.vae_batch_size`, or
                 directly for pixel-space models), in the pipeline's output_type: a list of B PIL images, an array
                 [B, H, W, 3] in 0..1 ("np"), or a tensor [B, 3, H, W] in 0..1 ("pt"). Empty when output_type
                 is "latent"; `pipe.decode_branch_trace(trace, steps, output_type)` decodes any steps later.

On a CPU, decoding a 256x256 image with the SD VAE costs more than a network step: choose `branch_steps` accordingly.
`callback_on_step_end(pipe, i, t, kwargs)` is called once per step i (t: its last evaluation's timestep) and may ask
for "latents", "noise_pred", "branch_noise_pred" and "branch_x0_pred" (lists of L tensors [B, C, H/f, W/f] for the
current step).
"""

import inspect
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from dimr.checks import check_int, shown
from dimr.network.config import NUM_TRAIN_TIMESTEPS
from dimr.sampling.labels import labels_for_model

# The schedule DiMR was trained on (Stable Diffusion's "scaled linear"); epsilon prediction, no clipping.
SD_SCHEDULE = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", prediction_type="epsilon")

# Where the official sampler stops: t = 1/1000, i.e. timestep index 0 (sigma 0.029), not sigma = 0. With this
# endpoint diffusers' solvers converge to the official result (relative L2 < 3e-5 at 250+ steps).
OFFICIAL_END = dict(final_sigmas_type="sigma_min")
# Sampler name -> (diffusers scheduler class, settings): a "sampler" is the name a user picks, the scheduler the
# diffusers object it makes. Timesteps are uniform in time (as the official sampler's) unless the name says karras.
# scripts/compare_samplers.py measures how close each gets to the official result.
SAMPLERS = {
    "dpm-solver-3s": (DPMSolverSinglestepScheduler, dict(solver_order=3, algorithm_type="dpmsolver++",
                                                        lower_order_final=True, **OFFICIAL_END)),
    "dpm++2m": (DPMSolverMultistepScheduler, dict(solver_order=2, algorithm_type="dpmsolver++", **OFFICIAL_END)),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, dict(solver_order=2, algorithm_type="dpmsolver++",
                                                         use_karras_sigmas=True, **OFFICIAL_END)),
    "dpm++3m": (DPMSolverMultistepScheduler, dict(solver_order=3, algorithm_type="dpmsolver++", **OFFICIAL_END)),
    "unipc": (UniPCMultistepScheduler, dict(**OFFICIAL_END)),
    "unipc-karras": (UniPCMultistepScheduler, dict(use_karras_sigmas=True, **OFFICIAL_END)),
    "deis": (DEISMultistepScheduler, dict()),
    # trailing: the grid 999 ... 999/N, like the others (DDIM's default "leading" never starts at pure noise);
    # set_alpha_to_one=False: the last step also ends at index 0.
    "ddim": (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")),
    "euler": (EulerDiscreteScheduler, dict(**OFFICIAL_END)),
    "heun": (HeunDiscreteScheduler, dict()),
}
# The official sampler's own method (singlestep DPM-Solver, order 3, data prediction) on its time-uniform grid
# and endpoint: it converges to the official 250-step result as the steps grow (scripts/compare_samplers.py
# prints how close each sampler gets, dpm++2m-karras / unipc-karras being closer at 10-20 steps), and its step
# needs no device-to-host sync.
DEFAULT_SAMPLER = "dpm-solver-3s"
GUIDANCE_SCHEDULES = ("constant", "power-cosine")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MAX_INFERENCE_STEPS = NUM_TRAIN_TIMESTEPS  # more steps than the training table has cannot be distinct
# Images per VAE decoder call. Its activations grow with the batch, and the branch panel decodes hundreds of images
# (16 images x 20 steps x 3 branches): one call would need all of them at once. `python benchmarks/demo_requests.py
# --vae-peak` prints the decoder's peak memory per batch size.
VAE_BATCH_SIZE = 8


# What a model was trained with, kept beside its weights in scheduler_config.json (diffusers' name) and applied to
# whichever sampler is chosen: the noise schedule, what the network predicts, and clipping of x0 estimates
# (thresholding, for pixel-space models whose images lie in [-1, 1]).
NOISE_SETTINGS = ("beta_schedule", "beta_start", "beta_end", "prediction_type", "thresholding", "sample_max_value",
                  "dynamic_thresholding_ratio")


def make_scheduler(name=DEFAULT_SAMPLER, **overrides):
    """A fresh diffusers scheduler by sampler name, on DiMR's training schedule unless overridden.

    Settings the sampler does not have are left out (Euler and Heun cannot clip x0: they sample unclipped)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    cls, settings = SAMPLERS[name]
    known = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in {**SD_SCHEDULE, **settings, **overrides}.items() if k in known})


def model_evaluations(sampler, num_inference_steps):
    """How many times sampling `num_inference_steps` steps with `sampler` (a SAMPLERS name) runs the network: one
    per step, 2N - 1 for Heun (two per step, one in its last). What a request costs, for limits and prices; with
    guidance each evaluation runs a batch twice the size."""
    scheduler = make_scheduler(sampler)
    scheduler.set_timesteps(check_int("num_inference_steps", num_inference_steps, 1, MAX_INFERENCE_STEPS))
    return len(scheduler.timesteps)


def noise_settings(scheduler_config):
    """The NOISE_SETTINGS of a scheduler config (a dict, as in scheduler_config.json)."""
    return {k: scheduler_config[k] for k in NOISE_SETTINGS if k in scheduler_config}


def check_guidance(guidance_scale, guidance_schedule="constant", guidance_power=1.0):
    if guidance_schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance_schedule {shown(guidance_schedule)} is not one of {', '.join(GUIDANCE_SCHEDULES)}")
    for name, value in (("guidance_scale", guidance_scale), ("guidance_power", guidance_power)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale} is negative; use 0 (unconditional), 1 (no guidance) or more")
    if guidance_power <= 0:
        raise ValueError(f"guidance_power={guidance_power} must be positive")


def per_sample_guidance(guidance_scale, batch):
    """A guidance_scale tensor [batch] as a list of floats, each checked as a scalar one is; None for a scalar."""
    if not isinstance(guidance_scale, torch.Tensor):
        return None
    if tuple(guidance_scale.shape) != (batch,):
        raise ValueError(f"a guidance_scale tensor needs one value per sample, shape ({batch},); "
                         f"got shape {tuple(guidance_scale.shape)}")
    scales = guidance_scale.detach().cpu().double().tolist()
    for scale in scales:
        check_guidance(scale)
    return scales


def check_output_type(output_type):
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")


def guidance_weights(timesteps, guidance_scale, guidance_schedule="constant", guidance_power=1.0):
    """The guidance weight w at each timestep index k (python floats)."""
    if guidance_schedule == "constant":
        return [float(guidance_scale)] * len(timesteps)
    # Official power-cosine decay in the discrete step n = k + 1: 1 at n = 1000, guidance_scale at n = 0.
    return [1 + (guidance_scale - 1) * (1 - math.cos(math.pi * (1 - (k + 1) / NUM_TRAIN_TIMESTEPS) ** guidance_power))
            / 2 for k in timesteps]


@dataclass
class BranchTrace:
    """Every branch's prediction at every step; see the module docstring for shapes and units."""

    timesteps: list
    scales: list
    noise_pred: list
    x0_pred: list
    image_steps: list = field(default_factory=list)
    images: list = field(default_factory=list)


@dataclass
class DiMRPipelineOutput(BaseOutput):
    """`images` per output_type; `branches` a BranchTrace when return_branches=True."""

    images: object
    branches: BranchTrace = None


class DiMRPipeline(DiffusionPipeline):
    """Class-conditional DiMR sampling with classifier-free guidance and per-branch traces.

    Components: `model` (DiMRModel), `vae` (AutoencoderKL for latent models, None for pixel-space models),
    `scheduler` (a diffusers scheduler on the SD scaled-linear schedule; `make_scheduler(name)` builds one).
    Each call samples with a fresh copy of the scheduler and its own stop flag, so one pipeline can serve concurrent
    calls (one per thread).
    """

    model_cpu_offload_seq = "model->vae"
    vae_batch_size = VAE_BATCH_SIZE
    _callback_tensor_inputs = ["latents", "noise_pred", "branch_noise_pred", "branch_x0_pred"]

    def __init__(self, model, vae=None, scheduler=None):
        super().__init__()
        self.register_modules(model=model, vae=vae, scheduler=scheduler if scheduler is not None else make_scheduler())
        self.image_processor = VaeImageProcessor(do_resize=False)
        # What a step calls: model.forward_branches, or an accelerated stand-in (dimr.network.acceleration) for this
        # pipeline alone, the shared model left as it is.
        self.network = None
        self._call = threading.local()  # the state of the sampling call running on each thread: its stop flag

    @property
    def labels(self):
        """Class names of this model (ImageNet, or the model's own `class_names`)."""
        return labels_for_model(self.model)

    @property
    def is_pixel_space(self):
        return self.vae is None and self.model.config.channels == 3

    def resolve_class_labels(self, class_labels):
        """Ids for ints, names or synonyms (one label or a list); ValueError names a bad one."""
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        elif isinstance(class_labels, (str, int, np.integer)):
            class_labels = [class_labels]
        class_labels = list(class_labels)
        if not class_labels:
            raise ValueError("class_labels is empty: give at least one class id or name")
        labels = self.labels
        return [labels.to_id(label) for label in class_labels]

    def check_inputs(self, class_labels, guidance_scale=1.4, guidance_schedule="constant", guidance_power=1.0,
                     num_inference_steps=50, output_type="pil", latents=None, callback_on_step_end_tensor_inputs=()):
        """Validate a call's arguments (ValueError naming the bad value and what is allowed); returns class ids."""
        ids = self.resolve_class_labels(class_labels)
        per_sample = per_sample_guidance(guidance_scale, len(ids))
        check_guidance(1.0 if per_sample else guidance_scale, guidance_schedule, guidance_power)
        check_int("num_inference_steps", num_inference_steps, 1, MAX_INFERENCE_STEPS)
        check_output_type(output_type)
        if output_type != "latent" and self.vae is None and not self.is_pixel_space:
            raise ValueError(f"output_type={output_type!r} needs a VAE to decode {self.model.config.channels}-channel "
                             "latents, and this pipeline has none; use output_type='latent'")
        if latents is not None:
            expected = (len(ids), *self.latent_shape)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
                shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"latents must be a tensor of shape {expected} (one per class label), got {shape}")
        unknown = set(callback_on_step_end_tensor_inputs or ()) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} are not available; "
                             f"choose from {self._callback_tensor_inputs}")
        return ids

    @property
    def latent_shape(self):
        size = self.model.sample_size
        return (self.model.config.channels, size, size)

    @torch.inference_mode()
    def __call__(self, class_labels, guidance_scale=1.4, guidance_schedule="constant", guidance_power=1.0,
                 num_inference_steps=50, generator=None, latents=None, output_type="pil", return_dict=True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",), return_branches=False,
                 branch_steps=None):
        """Sample one image per class label. See the module docstring for guidance and the branch trace.

        branch_steps: step indices to decode into `branches.images` (negative counts from the end); None = all.
        """
        ids = self.check_inputs(class_labels, guidance_scale, guidance_schedule, guidance_power, num_inference_steps,
                                output_type, latents, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        self.model.eval()
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        prediction_type = scheduler.config.prediction_type
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)  # the scheduler then never searches its timesteps (a host sync)
        timesteps = scheduler.timesteps.tolist()  # python numbers for scheduler.step; the model gets tensors

        # Everything the loop needs is computed here, so the loop itself never waits for the device.
        # [S, samples]: one column per sample for a per-sample guidance_scale, one column shared by all otherwise.
        guidance_scales = per_sample_guidance(guidance_scale, len(ids)) or [guidance_scale]
        weights = [guidance_weights(timesteps, s, guidance_schedule, guidance_power) for s in guidance_scales]
        do_guidance = any(w != 1 for column in weights for w in column)
        weight_t = torch.tensor(weights, device=device, dtype=torch.float32).T.reshape(len(timesteps), -1, 1, 1, 1)
        model_t = torch.tensor(timesteps, device=device, dtype=torch.float32)
        abar = torch.tensor(alpha_bar(scheduler, timesteps), device=device, dtype=torch.float32)
        labels = torch.tensor(ids, device=device)
        if do_guidance:
            labels = torch.cat([labels, torch.full_like(labels, self.model.null_class)])

        shape = (len(ids), *self.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma

        want = set(callback_on_step_end_tensor_inputs or ()) if callback_on_step_end else set()
        trace_branches = return_branches or bool(want & {"branch_noise_pred", "branch_x0_pred"})
        branch_scales = self.model.branch_scales
        trace_eps, trace_x0 = [[] for _ in branch_scales], [[] for _ in branch_scales]
        # Checked before sampling, so a bad step index fails at once.
        image_steps = branch_step_indices(num_inference_steps, branch_steps) if return_branches else []
        self._call.stopped = False
        network = self.network or self.model.forward_branches
        step_timesteps = []  # the timestep of each finished step's last evaluation
        with self.progress_bar(total=num_inference_steps) as progress:
            for i, t in enumerate(timesteps):
                if self._call.stopped:
                    break
                model_input = scheduler.scale_model_input(latents, t)
                batch = torch.cat([model_input, model_input]) if do_guidance else model_input
                branches = network(batch, model_t[i], labels)
                if do_guidance:
                    branches = [u + weight_t[i] * (c - u) for c, u in (b.float().chunk(2) for b in branches)]
                else:
                    branches = [b.float() for b in branches]
                noise_pred = branches[-1]
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                # Heun's step takes two evaluations (its last step one): the step ends when its scheduler is back
                # in first order. The trace, the callback, the stop and the progress bar count steps.
                if not (getattr(scheduler, "state_in_first_order", True) or i == len(timesteps) - 1):
                    continue
                step = len(step_timesteps)
                step_timesteps.append(t)
                if trace_branches:
                    x0s = [branch_x0(model_input, out, scale, abar[i], prediction_type)
                           for out, scale in zip(branches, branch_scales)]
                    for l, (eps, x0) in enumerate(zip(branches, x0s)):
                        trace_eps[l].append(eps)
                        trace_x0[l].append(x0)
                if callback_on_step_end is not None:
                    available = {"latents": latents, "noise_pred": noise_pred}
                    if trace_branches:
                        available.update(branch_noise_pred=branches, branch_x0_pred=x0s)
                    outputs = callback_on_step_end(self, step, t, {k: available[k] for k in want})
                    latents = outputs.pop("latents", latents)
                progress.update()

        trace = None
        if return_branches:
            trace = BranchTrace(timesteps=step_timesteps, scales=branch_scales,
                                noise_pred=[torch.stack(eps) for eps in trace_eps],
                                x0_pred=[torch.stack(x0) for x0 in trace_x0])
            if output_type != "latent":
                # Steps past an interrupt were never run, so they cannot be shown.
                trace.image_steps = [s for s in image_steps if s < len(trace.timesteps)]
                trace.images = self.decode_branch_trace(trace, trace.image_steps, output_type)
        images = latents if output_type == "latent" else self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, trace)
        return DiMRPipelineOutput(images=images, branches=trace)

    def stop(self):
        """Stop the sampling call running on this thread after its current step (call it from callback_on_step_end);
        calls of this pipeline on other threads go on."""
        self._call.stopped = True

    def decode(self, latents, output_type="pil"):
        """Latents (or pixel-space samples) [N, C, H, W] -> images per output_type.

        The VAE decodes `vae_batch_size` latents at a time (each image is decoded on its own, so batching does not
        change it), and each batch leaves the device as soon as it is decoded when output_type is "pil" or "np"."""
        check_output_type(output_type)
        if output_type == "latent":
            return latents
        if self.vae is None:
            if not self.is_pixel_space:
                raise ValueError("this pipeline has no VAE to decode latents; use output_type='latent'")
            return self.image_processor.postprocess(latents.float(), output_type=output_type)
        parts = [self.image_processor.postprocess(self._vae_decode(part).float(), output_type=output_type)
                 for part in latents.split(self.vae_batch_size)]
        if output_type == "pil":
            return [image for part in parts for image in part]
        return np.concatenate(parts) if output_type == "np" else torch.cat(parts)

    @torch.inference_mode()
    def _vae_decode(self, latents):
        vae = self.vae
        # Never in float16: the SD VAE overflows there (NaN, black images). Autocast off: run in the VAE's dtype.
        if vae.dtype == torch.float16:
            vae.to(torch.float32)
        z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            z = z + vae.config.shift_factor
        with torch.autocast(vae.device.type, enabled=False):
            return vae.decode(z).sample

    def decode_branch_trace(self, trace, steps=None, output_type="pil"):
        """Decode the chosen steps (default all) of a BranchTrace; returns images[j][l] (see module docstring)."""
        steps = branch_step_indices(len(trace.timesteps), steps)
        if not steps:
            return []
        full = trace.x0_pred[-1].shape[-2:]
        # [steps, branches, batch], every branch upsampled to full size, decoded together (in VAE batches).
        upsampled = [F.interpolate(x0[steps].flatten(0, 1), size=full, mode="nearest").unflatten(0, (len(steps), -1))
                     for x0 in trace.x0_pred]
        images = self.decode(torch.stack(upsampled, dim=1).flatten(0, 2), output_type)
        batch, branches = trace.x0_pred[0].shape[1], len(trace.x0_pred)
        per_branch = [images[n : n + batch] for n in range(0, len(images), batch)]
        return [per_branch[j * branches : (j + 1) * branches] for j in range(len(steps))]


def branch_step_indices(num_steps, steps=None):
    """Step indices into a BranchTrace of num_steps steps, negative ones counted from the end; None = all."""
    if steps is None:
        return list(range(num_steps))
    return [check_int("branch step", step, -num_steps, num_steps - 1) % num_steps for step in steps]


def alpha_bar(scheduler, timesteps):
    """abar at each (possibly fractional) timestep index, interpolating sigma = sqrt((1 - abar) / abar) linearly
    as the sigma-based diffusers samplers do (exact at integer indices)."""
    table = scheduler.alphas_cumprod.double().numpy()
    sigmas = np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(len(table)), ((1 - table) / table) ** 0.5)
    return (1 / (1 + sigmas**2)).tolist()


def branch_x0(x_t, prediction, scale, abar, prediction_type="epsilon"):
    """The clean image a branch's prediction implies, at the branch's resolution (avg-pool units).

    The branch at scale f is trained on targets sum-pooled over f x f and divided by f, and its noisy input in
    those units is avg_pool(x_t) * f; the clean estimate in those units is divided by f again."""
    x_t_f = F.avg_pool2d(x_t, scale) * scale if scale > 1 else x_t
    if prediction_type == "epsilon":
        x0 = (x_t_f - (1 - abar).sqrt() * prediction) / abar.sqrt()
    elif prediction_type == "v_prediction":
        x0 = abar.sqrt() * x_t_f - (1 - abar).sqrt() * prediction
    else:
        x0 = prediction
    return x0 / scale
