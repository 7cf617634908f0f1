"""Procedural, class-conditional shapes: the data of the distortion lab.

Every image is one anti-aliased shape of one colour on a plain background of another, with a
random size, position and rotation. The classes stress what large-patch transformers get wrong:
straight edges and corners (triangle, square, star, frame), curves (circle, ring), thin structures
(ring, plus, frame) and fine periodic textures (stripes, checkerboard, dots) whose period does not
line up with any patch grid.

Images are 32x32. That size is set by the budget: the models must train to recognisable shapes in
a few GPU minutes (or resumable CPU hours) and sample 8 images in under 3 seconds on a CPU. At
32x32 a 4x4 patch is already a coarse 8x8 token grid, so distortion shows, while a 2-3 px stripe
or ring is still a real structure.

Rendering is vectorised torch on any device: each shape is a signed distance d (in pixels,
negative inside) evaluated at every pixel centre, and the coverage clamp(0.5 - d, 0, 1) is the
exact anti-aliased area for straight edges (and very close for curves). Random parameters come
from a numpy Generator, so a seed fixes the dataset on every device.
"""

import math

import numpy as np
import torch

CLASS_NAMES = ["circle", "triangle", "square", "star", "ring", "plus", "frame", "stripes", "checkerboard", "dots"]
IMAGE_SIZE = 32

# Per class: the range of the shape's radius (half extent) in pixels of a 32x32 image.
RADIUS = {
    "circle": (6.0, 13.0),
    "triangle": (8.0, 14.0),
    "square": (6.0, 11.0),
    "star": (8.5, 14.5),
    "ring": (7.0, 13.0),
    "plus": (7.0, 13.5),
    "frame": (6.5, 11.0),
    "stripes": (9.0, 14.0),
    "checkerboard": (7.5, 11.0),
    "dots": (9.0, 14.0),
}
# Squares reach radius * sqrt(2) from their centre when turned 45 degrees; the rest reach their radius.
BOXES = ("square", "frame", "checkerboard")
# Stroke width of thin shapes, and the period of textures (stripe period, checker cell, dot spacing).
STROKE = (1.6, 3.0)
PERIOD = {"stripes": (3.6, 6.0), "checkerboard": (4.0, 6.0), "dots": (4.0, 5.5)}
MIN_COLOUR_DISTANCE = 0.45  # Euclidean distance in RGB [0, 1]^3 between shape and background


def _polygon(x, y, sides, apothem):
    """Regular polygon with one flat side facing down, folded into one sector (exact inside)."""
    sector = 2 * math.pi / sides
    phi = torch.remainder(torch.atan2(y, x) + math.pi / 2 + sector / 2, sector) - sector / 2
    return torch.hypot(x, y) * torch.cos(phi) - apothem


def _star(x, y, outer, inner_ratio=0.45, points=5):
    """Five-pointed star: fold into half a point and take the distance to its outer edge."""
    sector = 2 * math.pi / points
    phi = torch.remainder(torch.atan2(x, y) + sector / 2, sector) - sector / 2
    phi = phi.abs()
    rho = torch.hypot(x, y)
    px, py = rho * torch.cos(phi), rho * torch.sin(phi)
    ax, ay = outer, torch.zeros_like(outer)
    bx, by = inner_ratio * outer * math.cos(sector / 2), inner_ratio * outer * math.sin(sector / 2)
    ex, ey = bx - ax, by - ay
    length = torch.hypot(ex, ey)
    # Outward normal of the edge from the tip A to the inner corner B.
    nx, ny = ey / length, -ex / length
    return (px - ax) * nx + (py - ay) * ny


def _box(x, y, half_w, half_h):
    dx, dy = x.abs() - half_w, y.abs() - half_h
    outside = torch.hypot(dx.clamp(min=0), dy.clamp(min=0))
    return outside + torch.maximum(dx, dy).clamp(max=0)


def _triangle_wave(t):
    """Distance (in periods) from t to the nearest integer."""
    return (t - torch.round(t)).abs()


def _square_wave(t, period):
    """+1 / -1 on alternate unit intervals of t, ramping linearly over one pixel across each boundary."""
    parity = 1 - 2 * torch.remainder(torch.floor(t), 2)
    return parity * (_triangle_wave(t) * period * 2).clamp(max=1)


def _signed_distance(name, x, y, radius, stroke, period):
    """Signed distance in pixels (negative inside) of class `name`, in the shape's own frame."""
    if name == "circle":
        return torch.hypot(x, y) - radius
    if name == "triangle":
        return _polygon(x, y, 3, radius * 0.5)  # radius = circumradius; apothem = R cos(60 deg)
    if name == "square":
        return _polygon(x, y, 4, radius)
    if name == "star":
        return _star(x, y, radius)
    if name == "ring":
        return (torch.hypot(x, y) - radius).abs() - stroke / 2
    if name == "plus":
        return torch.minimum(_box(x, y, radius, stroke / 2 + 0.4), _box(x, y, stroke / 2 + 0.4, radius))
    if name == "frame":
        return _box(x, y, radius, radius).abs() - stroke / 2
    if name == "stripes":
        stripe = (_triangle_wave(x / period) - 0.25) * period
        return torch.maximum(torch.hypot(x, y) - radius, stripe)
    if name == "checkerboard":
        # A whole number of cells, so the board's edges are cell edges; anti-aliased as the product of two
        # smoothed square waves (a pseudo-distance 0.5 - coverage, exact away from the cell corners).
        half = period * torch.clamp(torch.round(radius / period), min=2)
        # The pattern is read at the nearest point inside the board, so nothing of it leaks past the edge.
        xi, yi = torch.clamp(x, -half + 0.5, half - 0.5), torch.clamp(y, -half + 0.5, half - 0.5)
        cover = 0.5 + 0.5 * _square_wave(xi / period, period) * _square_wave(yi / period, period)
        return torch.maximum(_box(x, y, half, half), 0.5 - cover)
    if name == "dots":
        # Only whole dots: a dot is kept when its centre lies inside the disk.
        cx, cy = torch.round(x / period) * period, torch.round(y / period) * period
        dot = torch.hypot(x - cx, y - cy) - 0.26 * period
        return torch.where(torch.hypot(cx, cy) < radius, dot, torch.full_like(dot, 1e3))
    raise ValueError(f"unknown shape class {name!r}; known: {CLASS_NAMES}")


def _random_colours(rng, n):
    """Background and shape colours at least MIN_COLOUR_DISTANCE apart (rejection sampling)."""
    background = rng.random((n, 3))
    shape = rng.random((n, 3))
    bad = np.linalg.norm(shape - background, axis=1) < MIN_COLOUR_DISTANCE
    while bad.any():
        shape[bad] = rng.random((int(bad.sum()), 3))
        bad = np.linalg.norm(shape - background, axis=1) < MIN_COLOUR_DISTANCE
    return background, shape


def sample_parameters(num_images, seed=0):
    """Every image's random parameters (numpy), drawn in a fixed order from one seed.

    Labels are balanced exactly (counts differ by at most one) and shuffled.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_images) % len(CLASS_NAMES))
    low = np.array([RADIUS[name][0] for name in CLASS_NAMES])[labels]
    high = np.array([RADIUS[name][1] for name in CLASS_NAMES])[labels]
    radius = low + (high - low) * rng.random(num_images)
    period_low = np.array([PERIOD.get(name, (1.0, 1.0))[0] for name in CLASS_NAMES])[labels]
    period_high = np.array([PERIOD.get(name, (1.0, 1.0))[1] for name in CLASS_NAMES])[labels]
    params = {
        "labels": labels,
        "radius": radius,
        "stroke": STROKE[0] + (STROKE[1] - STROKE[0]) * rng.random(num_images),
        "period": period_low + (period_high - period_low) * rng.random(num_images),
        "angle": 2 * math.pi * rng.random(num_images),
        # Centre offset from the image centre as a share of the free room, so shapes stay (mostly) inside.
        "offset": rng.uniform(-1, 1, (num_images, 2)),
    }
    params["background"], params["colour"] = _random_colours(rng, num_images)
    return params


def render_coverage(params, image_size=IMAGE_SIZE, device="cpu"):
    """How much of each pixel the shape covers, float [N, 1, S, S] in [0, 1], for parameters from `sample_parameters`."""
    scale = image_size / IMAGE_SIZE
    t = {k: torch.as_tensor(v, device=device, dtype=torch.float32) for k, v in params.items() if k != "labels"}
    labels = torch.as_tensor(params["labels"], device=device)
    n = labels.shape[0]
    radius, stroke, period = t["radius"] * scale, t["stroke"] * scale, t["period"] * scale
    is_box = torch.isin(labels, torch.tensor([CLASS_NAMES.index(b) for b in BOXES], device=device))
    extent = radius * torch.where(is_box, math.sqrt(2), 1.0) + stroke / 2
    room = (image_size / 2 - extent).clamp(min=0)
    centre = image_size / 2 + t["offset"] * room[:, None]
    coords = torch.arange(image_size, device=device, dtype=torch.float32) + 0.5
    gx = coords[None, None, :] - centre[:, 0, None, None]
    gy = coords[None, :, None] - centre[:, 1, None, None]
    cos, sin = torch.cos(t["angle"])[:, None, None], torch.sin(t["angle"])[:, None, None]
    x, y = cos * gx + sin * gy, cos * gy - sin * gx  # pixel grid in each shape's rotated frame

    distance = torch.empty(n, image_size, image_size, device=device)
    for k, name in enumerate(CLASS_NAMES):
        idx = (labels == k).nonzero().squeeze(1)
        if idx.numel():
            r, s, p = (v[idx, None, None] for v in (radius, stroke, period))
            distance[idx] = _signed_distance(name, x[idx], y[idx], r, s, p)
    return (0.5 - distance).clamp(0, 1)[:, None]


def colourise(coverage, params):
    """Coverage [N, 1, S, S] -> uint8 images [N, 3, S, S]: the shape's colour over its background."""
    background, colour = (torch.as_tensor(params[k], device=coverage.device, dtype=torch.float32)[:, :, None, None]
                          for k in ("background", "colour"))
    return ((background + coverage * (colour - background)) * 255).round().to(torch.uint8)


def render(params, image_size=IMAGE_SIZE, device="cpu"):
    """Rasterise parameters from `sample_parameters` to uint8 images [N, 3, S, S] on `device`."""
    return colourise(render_coverage(params, image_size, device), params)


def make_dataset(num_images, seed=0, image_size=IMAGE_SIZE, device="cpu", chunk=16384):
    """(uint8 images [N, 3, S, S], int64 labels [N]) on `device`, rendered in chunks to bound memory."""
    params = sample_parameters(num_images, seed)
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8, device=device)
    for start in range(0, num_images, chunk):
        part = {k: v[start : start + chunk] for k, v in params.items()}
        images[start : start + chunk] = render(part, image_size, device)
    return images, torch.as_tensor(params["labels"], device=device, dtype=torch.int64)


def to_model_range(images):
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1

