"""The lab's reference point: a plain convolutional UNet (diffusers' UNet2DModel) trained the textbook way on the
same shapes, judged by the same measure, so a DiMR recipe can be held against it per image and per CPU minute.

    python benchmarks/plain_unet.py --steps 2000 [--batch-size 64] [--threads 1] [--samples 200] [--out DIR]

The network (as the lab issue measured it): channels 32-64-128, one ResNet block per level, self-attention at 8x8, a class embedding (the ten
shapes and the null class), 2.7M parameters. The recipe: epsilon prediction on the cosine schedule, uniform times,
AdamW 1e-3 (betas 0.9, 0.999, no weight decay), 200 warm-up steps, EMA 0.999, label dropout 0.1; sampled with DDIM
(x0 clipped to [-1, 1]) at the demo's steps and guidance, through the project's own pipeline. Data order, noise
and judge are those of `python -m dimr train` / `scripts/ablate.py` (same seeds), so the arms compare.
Prints one row (images, CPU minutes, images/s, misdrawn, FID, precision, recall) and writes result.json and a grid.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not

from dimr.lab.classifier import load_classifier  # noqa: E402
from dimr.lab.distortion import distortion_rate, even_labels, flag_frames, real_reference  # noqa: E402
from dimr.lab.objective import alphas_cumprod, diffusion_loss, sample_timesteps  # noqa: E402
from dimr.lab.shapes import CLASS_NAMES, make_dataset, to_model_range  # noqa: E402
from dimr.sampling.defaults import SHAPES_GUIDANCE, SHAPES_STEPS  # noqa: E402
from dimr.sampling.grids import save_png, tile, to_uint8  # noqa: E402
from dimr.sampling.pipeline import DiMRPipeline, make_scheduler  # noqa: E402

NULL_CLASS = len(CLASS_NAMES)
SCHEDULE = dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", thresholding=True)


class PlainUNet(ModelMixin, ConfigMixin):
    """UNet2DModel behind the two things the project's loss and pipeline ask of a network: one "branch" at full
    resolution, and a config with the shapes classes."""

    branch_scales = [1]
    null_class = NULL_CLASS
    sample_size = 32

    @register_to_config
    def __init__(self, channels=3, num_classes=NULL_CLASS + 1, class_names=tuple(CLASS_NAMES)):
        super().__init__()
        self.unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 128), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=NULL_CLASS + 1,
            norm_num_groups=8, attention_head_dim=32)

    def forward_branches(self, sample, timestep, class_labels):
        timestep = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])
        return [self.unet(sample, timestep, class_labels=class_labels).sample]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "runs" / "plain-unet"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = PlainUNet().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    images, labels = make_dataset(200000, 0)  # the configs' data (dimr.lab.train_config.DATA_DEFAULTS)
    abar = alphas_cumprod(SCHEDULE["beta_schedule"])
    g = torch.Generator().manual_seed(0)
    started = time.monotonic()
    for step in range(args.steps):
        b = args.batch_size
        # The draws of dimr.lab.train.Trainer.draw_batch, in its order.
        index = torch.randint(0, images.shape[0], (b,), generator=g)
        x0, y = to_model_range(images[index]), labels[index]
        y = torch.where(torch.rand(b, generator=g) < 0.1, torch.full_like(y, NULL_CLASS), y)
        t = sample_timesteps(torch.randn(b, generator=g))
        noise = torch.randn(x0.shape, generator=g)
        loss, _ = diffusion_loss(model, x0, y, t, noise, abar, [1.0], None, SCHEDULE["prediction_type"])
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 200)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {(step + 1) * b / (time.monotonic() - started):.1f} img/s",
                  flush=True)
    minutes = (time.monotonic() - started) / 60

    pipe = DiMRPipeline(model=ema, vae=None, scheduler=make_scheduler("ddim", **SCHEDULE))
    pipe.set_progress_bar_config(disable=True)
    wanted = even_labels(args.samples)
    noise = torch.randn(args.samples, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the measure's noise
    samples = torch.cat([to_uint8(pipe(wanted[i : i + 50].tolist(), guidance_scale=SHAPES_GUIDANCE,
                                       num_inference_steps=SHAPES_STEPS, latents=noise[i : i + 50],
                                       output_type="pt").images * 2 - 1) for i in range(0, args.samples, 50)])
    judge = load_classifier()
    result = distortion_rate(samples, wanted, judge, reference=real_reference(judge, args.samples))
    images_seen = args.steps * args.batch_size
    row = {"arm": "plain-unet", "images": images_seen, "minutes": round(minutes, 2),
           "images_per_s": round(images_seen / (minutes * 60), 1), "misdrawn": round(result["rate"], 3),
           "fid": round(result["fid"], 2), "precision": round(result["precision"], 3),
           "recall": round(result["recall"], 3), "per_class": result["per_class"]}
    (out / "result.json").write_text(json.dumps(row, indent=1) + "\n")
    shown = min(80, args.samples)
    save_png(tile(samples[:shown], len(CLASS_NAMES), pad=2, scale=2, frames=flag_frames(result["flagged_indices"], shown)),
             out / "grid.png")
    print(json.dumps({k: v for k, v in row.items() if k != "per_class"}))


if __name__ == "__main__":
    main()
