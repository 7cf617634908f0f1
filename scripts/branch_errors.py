"""What each branch gets wrong, per class: real renders noised to several levels, each branch's clean estimate
against the real image pooled to that branch's grid (RMSE, 0..255 units), beside each ConvNeXt branch's receptive
field. The texture classes (stripes, checkerboards, dots, with periods of about 3.6-6 px) need the 32x32 branch to
draw detail finer than the 8x8 transformer's 4-pixel patches.

    python scripts/branch_errors.py tiny-dimr tiny-baseline [--images 500] [--classes stripes checkerboard dots]
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not

import torch  # noqa: E402

from dimr.lab.distortion import REAL_SEED, branch_denoising_errors, real_images  # noqa: E402
from dimr.lab.shapes import CLASS_NAMES, to_model_range  # noqa: E402
from dimr.network.config import stage_num_blocks  # noqa: E402
from dimr.sampling.loading import load_pipeline  # noqa: E402

LEVELS = (0.7, 0.3, 0.1, 0.02)  # abar: from the fine detail (0.7) to the layout (0.02)
TEXTURES = ("stripes", "checkerboard", "dots")


def receptive_field(stage):
    """A ConvNeXt branch's receptive field in input pixels: its depthwise convolutions and 3x3 head, at its grid."""
    if stage["block_type"] != "ConvNeXtBlock":
        return None
    pixels_per_cell = stage["input_feature_ratio"] * stage["image_input_ratio"]
    cells = 1 + stage_num_blocks(stage) * (stage["kernel_size"] - 1) + stage["final_kernel_size"] - 1
    return cells * pixels_per_cell


def branch_table(name, num_images, classes):
    pipe = load_pipeline(name, device="cpu")
    images, labels = real_images(num_images, REAL_SEED)
    x0 = to_model_range(images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    errors = branch_denoising_errors(pipe, x0, labels, LEVELS, noise)  # [levels, branches, N]
    stages = pipe.model.config.stage_configs
    grids = [f"{s['max_height'] * s['head_patch_size']}x{s['max_width'] * s['head_patch_size']}" for s in stages]
    fields = [receptive_field(s) for s in stages]
    head = " | ".join(f"{g} branch" + (f" (sees {f} px)" if f else "") for g, f in zip(grids, fields))
    lines = [f"### {name}: RMSE of each branch's clean estimate at abar = {' / '.join(map(str, LEVELS))}", "",
             f"| class | {head} |", "|---|" + "---|" * len(stages)]
    rows = [(c, labels == CLASS_NAMES.index(c)) for c in classes] + [("all classes", torch.ones_like(labels, dtype=bool))]
    for label, chosen in rows:
        cells = [" / ".join(f"{float(errors[i, b][chosen].square().mean().sqrt()):.1f}" for i in range(len(LEVELS)))
                 for b in range(len(stages))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model names or directories")
    parser.add_argument("--images", type=int, default=500, help="real renders, classes in turn")
    parser.add_argument("--classes", nargs="+", default=list(TEXTURES), choices=CLASS_NAMES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        print(branch_table(name, args.images, args.classes) + "\n")


if __name__ == "__main__":
    main()
