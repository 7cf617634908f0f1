"""DiT-XL/2 through diffusers, for the ImageNet comparison (dimr.demo.imagenet_compare): the hub repo's transformer, VAE
and scheduler, loaded once per device and dtype, and DiTPipeline's sampling loop from given latents.

    pipe = load_dit("cuda", torch.bfloat16)                     # a diffusers DiTPipeline, kept in dimr.sampling.caches
    for latents in dit_denoise(pipe, [207, 88], noise, 4.0, 50):  # after every step
        ...
    images = dit_decode(pipe, latents)                          # [B, 3, H, W] in 0..1
"""

import torch

from dimr.sampling import caches
from dimr.sampling.loading import cached_or_downloaded, hub_cache_how, in_hub_cache

DIT_REPO = "facebook/DiT-XL-2-256"
DIT_NAME = "DiT-XL/2"
DIT_DOWNLOAD = "3 GB transformer + 335 MB VAE"
DIT_NULL_CLASS = 1000  # DiT's label embedding has 1001 rows; the last is the classifier-free "no class"
DIT_GUIDANCE = 4.0  # diffusers' DiTPipeline default (the DiT paper's FID 2.27 used 1.5 with 250 DDPM steps)
DIT_WEIGHTS_FILE = "transformer/diffusion_pytorch_model.bin"


def load_dit(device, torch_dtype=torch.float32):
    """A diffusers DiTPipeline of DIT_REPO on a device, loaded once per (device, dtype); the VAE is never float16."""
    def load():
        pipe = _from_cache_or_hub(torch_dtype).to(device)
        if torch.device(device).type == "cuda" and pipe.vae.dtype == torch.bfloat16:
            pipe.vae.to(memory_format=torch.channels_last)  # as dimr.sampling.loading keeps bf16 VAEs on GPUs
        return pipe

    return caches.remembered(("dit", str(device), torch_dtype), load)


def dit_missing():
    """{DIT_NAME: how to install it} when DiT's transformer weights are not in the Hugging Face cache, else {}
    (looks at local files only)."""
    return {} if in_hub_cache(DIT_REPO, DIT_WEIGHTS_FILE) else {DIT_NAME: hub_cache_how(DIT_REPO, DIT_DOWNLOAD)}


def _from_cache_or_hub(torch_dtype):
    how = f"{hub_cache_how(DIT_REPO, DIT_DOWNLOAD)}."
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


@torch.inference_mode()
def dit_denoise(pipe, class_ids, latents, guidance_scale, num_inference_steps):
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
