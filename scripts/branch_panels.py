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

from dimr import serving  # noqa: E402
from dimr.demo.request import Request  # noqa: E402
from dimr.sampling.defaults import SHAPES_STEPS  # noqa: E402
from dimr.sampling.grids import save_png, tile  # noqa: E402

TEXTURES = ["stripes", "checkerboard", "dots", "ring"]


def panel_cells(generation, at_steps):
    """uint8 [images * columns, 3, H, W] of a Generation (dimr.demo.panel): per image, for each step in `at_steps` every
    branch's estimate as the branch panel keeps it, then the final image."""
    cells = []
    for b in range(len(generation.images)):
        for step in at_steps:
            cells += list(generation.branch_images[generation.panel_steps.index(step), :, b])
        cells.append(generation.images[b])
    return torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2), len(at_steps) * len(generation.branch_names) + 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-dimr")
    parser.add_argument("--classes", nargs="+", default=TEXTURES)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--at-steps", type=int, nargs="+", default=[8, SHAPES_STEPS],
                        help="1-based steps whose branch estimates are shown (default: 8 and the demo's last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="default assets/branch_panels_<model>.png")
    args = parser.parse_args(argv)
    # The demo's own request and sampling path at its defaults: the figure is what the branch panel shows.
    request = Request.check(model=args.model, classes=args.classes, images_per_class=args.per_class, seed=args.seed)
    *_, generation = serving.stream(request)
    cells, columns = panel_cells(generation, args.at_steps)
    out = Path(args.out or ROOT / "assets" / f"branch_panels_{args.model.replace('-', '_')}.png")
    save_png(tile(cells, columns, pad=4, scale=4), out)
    print(f"wrote {out}: rows {', '.join(f'{c} x{args.per_class}' for c in args.classes)}; columns: per step in "
          f"{args.at_steps} each branch (lowest resolution first), then the final image")


if __name__ == "__main__":
    main()
