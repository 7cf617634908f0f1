"""`python -m dimr sample`: generate images, and optionally every branch's clean estimate over the steps, to PNG.

    python -m dimr sample --model DiMR-XL/2R --class 207 --class "tabby cat" --steps 50 --guidance 1.4 \\
        --seed 0 --out grid.png --branches branches.png

grid.png: the samples side by side. branches.png: for each sample, one row per branch (lowest resolution first,
then the full-resolution branch), one column per decoded step (from noisy to clean).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from dimr.network.acceleration import MODES, accelerate_pipeline, default_mode, mode_dtype
from dimr.sampling import defaults
from dimr.sampling.grids import save_png, tile, to_uint8
from dimr.sampling.loading import MODELS, load_pipeline
from dimr.sampling.pipeline import DEFAULT_SAMPLER, GUIDANCE_SCHEDULES, SAMPLERS


def add_sampling_arguments(parser, imagenet_steps, imagenet_steps_note=""):
    """--steps, --guidance, --guidance-schedule, --guidance-power and --sampler, as `dimr sample` and `dimr evaluate`
    take them (steps and guidance default to None: the model's own, known once it is loaded)."""
    parser.add_argument("--steps", type=int,
                        help=f"sampling steps (default: {imagenet_steps} for ImageNet models{imagenet_steps_note}, "
                             f"{defaults.SHAPES_STEPS} for the shapes models)")
    parser.add_argument("--guidance", type=float,
                        help=f"guidance scale s; 1 = off (default: {defaults.IMAGENET_GUIDANCE:g} for ImageNet "
                             f"models, {defaults.SHAPES_GUIDANCE:g} for the shapes models)")
    parser.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default="constant")
    parser.add_argument("--guidance-power", type=float, default=1.0, help="p of the power-cosine schedule")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default=DEFAULT_SAMPLER)


def add_cli_arguments(parser):
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", default="tiny-dimr",
                        help=f"one of {', '.join(MODELS)}, or a directory with config.json (default: tiny-dimr)")
    parser.add_argument("--class", dest="classes", action="append", required=True, metavar="LABEL",
                        help="class id, name or synonym; repeat for several images")
    add_sampling_arguments(parser, defaults.IMAGENET_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG with the samples in a row")
    parser.add_argument("--branches", type=Path, help="also write every branch's clean estimate over time here")
    parser.add_argument("--branch-steps", type=int, default=8,
                        help="how many evenly spaced steps to show in --branches (default 8)")
    parser.add_argument("--vae", help="local VAE directory or weights file (latent models; default sd-vae-ft-ema)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--speed", choices=MODES,
                        help="acceleration mode (default: 'fast' on a GPU: bf16, compiled, CUDA graphs; 'none' on a CPU)")


def cli_main(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = args.speed or default_mode(device)
    if mode != "none" and device.type != "cuda":
        raise ValueError(f"--speed {mode} needs a GPU; on a CPU only 'none' (float32) is sensible")
    if args.branch_steps < 1:
        raise ValueError(f"--branch-steps must be at least 1, got {args.branch_steps}")
    pipe = accelerate_pipeline(
        load_pipeline(args.model, device=device, torch_dtype=mode_dtype(mode), vae=args.vae, sampler=args.sampler),
        mode,
    )
    num_classes = len(pipe.labels)
    args.steps = defaults.num_inference_steps(num_classes) if args.steps is None else args.steps
    args.guidance = defaults.guidance_scale(num_classes) if args.guidance is None else args.guidance
    # Validate before the slow part, so a typo in a class name fails at once.
    ids = pipe.check_inputs(args.classes, args.guidance, args.guidance_schedule, args.guidance_power, args.steps)
    out = pipe(ids, guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
               guidance_power=args.guidance_power, num_inference_steps=args.steps,
               generator=torch.Generator(device).manual_seed(args.seed), output_type="np",
               return_branches=args.branches is not None, branch_steps=[])
    save_png(grid([out.images]), args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{i} ({pipe.labels.name(i)})" for i in ids))
    if args.branches is not None:
        trace = out.branches
        count = min(args.branch_steps, len(trace.timesteps))
        steps = np.linspace(0, len(trace.timesteps) - 1, count).round().astype(int).tolist()
        images = pipe.decode_branch_trace(trace, steps, output_type="np")  # images[step][branch] -> [B, H, W, 3]
        rows = [[images[j][l][b] for j in range(len(steps))] for b in range(len(ids)) for l in range(len(trace.scales))]
        save_png(grid(rows), args.branches)
        print(f"wrote {args.branches}: per sample, rows = branches at 1/{', 1/'.join(map(str, trace.scales))} "
              f"resolution, columns = steps {steps} (timesteps {[trace.timesteps[s] for s in steps]})")
    return 0


def grid(rows):
    """Rows of equally many [H, W, 3] float images in 0..1 -> one uint8 grid [3, H', W'], 2 white pixels apart."""
    images = torch.as_tensor(np.stack([image for row in rows for image in row]))
    return tile(to_uint8(images.permute(0, 3, 1, 2) * 2 - 1), len(rows[0]), margin=0)
