"""Draw the lab's branch panels for docs/lab.md: per texture class, what each branch believes the clean image is.

    python scripts/branch_panels.py                       # tiny-dimr -> assets/branch_panels_tiny_dimr.png

One row per sample (two per class by default: stripes, checkerboard, dots, ring), at the demo's settings; each row
shows, after the chosen steps, every branch's clean-image estimate (lowest resolution first, enlarged without
smoothing) and then the final image. A finer branch that refines keeps the coarse layout and adds detail inside
its cells; `python -m dimr distortion` prints the same as numbers (the branch measure). Run it again whenever the
bundled models change.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dimr import load_pipeline  # noqa: E402
from dimr.defaults import SHAPES_GUIDANCE, SHAPES_STEPS  # noqa: E402
from dimr.grids import save_png, tile  # noqa: E402
from dimr.panel import to_uint8  # noqa: E402

TEXTURES = ["stripes", "checkerboard", "dots", "ring"]


def panel_rows(pipe, classes, per_class, steps, at_steps, seed):
    """uint8 [rows * columns, 3, 32, 32]: per sample, for each step in `at_steps` every branch's estimate, then the
    final image."""
    labels = [name for name in classes for _ in range(per_class)]
    out = pipe(labels, num_inference_steps=steps, guidance_scale=SHAPES_GUIDANCE, output_type="np",
               generator=torch.Generator().manual_seed(seed), return_branches=True)
    trace = out.branches
    cells = []
    for b in range(len(labels)):
        for step in at_steps:
            cells += [to_uint8(branch[b]) for branch in trace.images[trace.image_steps.index(step - 1)]]
        cells.append(to_uint8(out.images[b]))
    return torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2), len(at_steps) * len(trace.images[0]) + 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-dimr")
    parser.add_argument("--classes", nargs="+", default=TEXTURES)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--at-steps", type=int, nargs="+", default=[8, SHAPES_STEPS],
                        help="1-based steps whose branch estimates are shown (default: 8 and the last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="default assets/branch_panels_<model>.png")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    cells, columns = panel_rows(pipe, args.classes, args.per_class, SHAPES_STEPS, args.at_steps, args.seed)
    out = Path(args.out or ROOT / "assets" / f"branch_panels_{args.model.replace('-', '_')}.png")
    save_png(tile(cells, columns, pad=4, scale=4), out)
    print(f"wrote {out}: rows {', '.join(f'{c} x{args.per_class}' for c in args.classes)}; columns: per step in "
          f"{args.at_steps} each branch (lowest resolution first), then the final image")


if __name__ == "__main__":
    main()
