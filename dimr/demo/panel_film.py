"""The branch panel over its steps, from what a run kept (nothing is sampled again): frames for the page's player,
and files for slides.

    frames(generation, view)             # [(step, PIL image)]: the whole panel after each step with branch images
    animation(generation, view)          # GIF bytes: those frames, enlarged for slides, looped
    strips(generation, view)             # PNG bytes per sample: the sample across its steps, one row per branch
    download_files(generation, view, folder)   # the animation and the strips as files, named for what they show

A frame lays the panel's cells out as the page does (one row per image: each branch, then the final image) at the
branches' own resolution, a gap between cells: the player enlarges it in the browser (it stays small to send), the
files are enlarged without smoothing, so that the branches' grids stay visible on a slide.
"""

import io

import numpy as np
from PIL import Image

from dimr.demo.png_files import content_file

GAP = 2  # px of white between cells, at the cells' own resolution
SLIDE_WIDTH = 512  # files for slides are enlarged by a whole factor to at least about this width
FRAME_MS, LAST_FRAME_MS = 300, 1500  # the animation holds the final step so that it can be read


def grid(cells, columns):
    """uint8 [h, w, 3] cells, row by row in `columns` columns, as one PIL image; every cell takes the first one's size
    (a latent model's final image is larger than its branch images)."""
    h, w = cells[0].shape[:2]
    rows = -(-len(cells) // columns)
    canvas = Image.new("RGB", (columns * (w + GAP) - GAP, rows * (h + GAP) - GAP), "white")
    for k, cell in enumerate(cells):
        image = Image.fromarray(cell)
        if image.size != (w, h):
            image = image.resize((w, h), Image.BOX if image.width > w else Image.NEAREST)
        canvas.paste(image, ((k % columns) * (w + GAP), (k // columns) * (h + GAP)))
    return canvas


def frames(generation, view):
    """[(step, PIL image)]: the whole panel after each step that has branch images, in order."""
    return [(step, grid([cell for cell, _ in generation.panel_cells(step, view)], generation.columns))
            for step in generation.panel_steps]


def for_slides(image):
    """A PIL image enlarged (nearest neighbour) by the whole factor that makes it at least about SLIDE_WIDTH wide."""
    factor = max(1, round(SLIDE_WIDTH / image.width))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def animation(generation, view):
    """GIF bytes: the panel after each step with branch images, one frame each, looped."""
    shown = [image for _, image in frames(generation, view)]
    # One palette for all frames, found once at the cells' own resolution (fast; a colour keeps its value from frame
    # to frame), then each frame cut out and enlarged.
    w, h = shown[0].size
    column = grid([np.asarray(image) for image in shown], 1).quantize(256, dither=Image.Dither.NONE)
    images = [for_slides(column.crop((0, k * (h + GAP), w, k * (h + GAP) + h))) for k in range(len(shown))]
    durations = [FRAME_MS] * (len(images) - 1) + [LAST_FRAME_MS]
    buffer = io.BytesIO()
    images[0].save(buffer, format="gif", save_all=True, append_images=images[1:], duration=durations, loop=0,
                   disposal=1)
    return buffer.getvalue()


def strips(generation, view):
    """PNG bytes per sample: the sample across the steps with branch images, left to right, one row per branch
    (lowest resolution first)."""
    branches, columns = len(generation.branch_names), generation.columns
    per_step = [[cell for cell, _ in generation.panel_cells(step, view)] for step in generation.panel_steps]
    files = []
    for sample in range(len(generation.captions)):
        cells = [cells[sample * columns + b] for b in range(branches) for cells in per_step]
        buffer = io.BytesIO()
        for_slides(grid(cells, len(per_step))).save(buffer, format="png")
        files.append(buffer.getvalue())
    return files


def file_name(generation, kind, sample=None):
    """What a download is saved as, for kind 'panel.gif': 'tiny-dimr-seed0-steps25-panel.gif'; with a sample (0-based):
    'tiny-dimr-seed0-steps25-sample2-ring-strip.png' for kind 'strip.png'."""
    r = generation.request
    name = f"{r.model}-seed{r.seed}-steps{r.num_inference_steps}"
    if sample is not None:
        name += f"-sample{sample + 1}-{generation.captions[sample]}"
    return "".join(c if c.isalnum() or c in "-." else "-" for c in f"{name}-{kind}")



def download_files(generation, view, folder):
    """The paths of the animation and of every sample's strip as files under `folder`, named for what they show."""
    return [content_file(animation(generation, view), folder, file_name(generation, "panel.gif")),
            *(content_file(data, folder, file_name(generation, "strip.png", k))
              for k, data in enumerate(strips(generation, view)))]
