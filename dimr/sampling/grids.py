"""Image grids: model outputs as uint8, tiled into one picture (optionally framed per image), and PNG writing."""

import math
from pathlib import Path

import torch


def to_uint8(samples):
    """float [-1, 1] -> uint8 [0, 255]."""
    return ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def tile(images, columns, pad=2, scale=1, frames=None, margin=None):
    """uint8 images [N, 3, H, W] -> one uint8 grid [3, rows (H+pad) - pad + 2 margin, columns (W+pad) - pad + 2 margin].

    Images are enlarged `scale` times (nearest, so pixels stay visible), `pad` white pixels apart, with a white
    border of `margin` pixels (default: pad). `frames`, optional, gives each image an RGB colour [N, 3] (or None)
    for the pad-wide border around it.
    """
    margin = pad if margin is None else margin
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * (h + pad) - pad + 2 * margin, columns * (w + pad) - pad + 2 * margin), 255,
                      dtype=torch.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = margin + r * (h + pad), margin + col * (w + pad)
        if frames is not None and frames[i] is not None:
            colour = torch.as_tensor(frames[i], dtype=torch.uint8)[:, None, None]
            grid[:, top - pad : top + h + pad, left - pad : left + w + pad] = colour
        grid[:, top : top + h, left : left + w] = image
    return grid


def save_png(grid, path):
    """Write a uint8 grid [3, H, W] as a PNG, creating the folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).cpu().numpy()).save(path)


def class_grid(model, scheduler, per_class=8, num_inference_steps=25, guidance_scale=3.0, seed=0, scale=2):
    """One row per class, `per_class` samples each, from the DiMR pipeline with `scheduler`; uint8 grid [3, H, W]."""
    from dimr.sampling.pipeline import DiMRPipeline

    pipe = DiMRPipeline(model=model, vae=None, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    device = next(model.parameters()).device
    labels = [k for k in range(model.null_class) for _ in range(per_class)]
    generator = torch.Generator(device).manual_seed(seed)
    images = pipe(labels, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  generator=generator, output_type="pt").images
    return tile(to_uint8(images.cpu() * 2 - 1), per_class, scale=scale)
