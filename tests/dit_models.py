"""A tiny DiT laid out as facebook/DiT-XL-2-256 in a Hugging Face cache, for the ImageNet comparison's tests."""

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

from dimr.demo.dit import DIT_REPO

REVISION = "0" * 40


def tiny_dit(sample_size=16):
    """A random DiT with XL/2's structure in miniature: patch 2, learned sigma (8 output channels), 1000 classes."""
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                 num_layers=2, sample_size=sample_size, patch_size=2, num_embeds_ada_norm=1000).eval()


def dit_scheduler():
    """DDIM on DiT's training schedule (linear betas 1e-4..0.02)."""
    return DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)


def put_dit_in_hub_cache(hub_cache, transformer, vae):
    """facebook/DiT-XL-2-256 as huggingface_hub caches it (weights as .bin files, like the repo's main branch)."""
    repo_dir = hub_cache / f"models--{DIT_REPO.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    snapshot = repo_dir / "snapshots" / REVISION
    transformer.save_pretrained(snapshot / "transformer", safe_serialization=False)
    vae.save_pretrained(snapshot / "vae", safe_serialization=False)
    dit_scheduler().save_pretrained(snapshot / "scheduler")
