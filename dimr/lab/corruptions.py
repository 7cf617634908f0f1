"""Misdrawn shapes: real renders broken the ways generative models break them, for the judge's "none" class.

Each corruption works on a shape's coverage (float [N, 1, S, S] in [0, 1], from `shapes.render_coverage`),
so the result is recoloured with the image's own two colours and differs from a real render only in its
geometry, which is what the judge must learn to see:

- blur: soft edges (a sample that never resolved its boundary);
- blob: blurred and re-thresholded, so corners round off and fine patterns melt into blobs;
- warp: a smooth random displacement field, so edges wobble and stripes turn into wavy bands;
- shuffle: 4x4 or 8x8 pixel patches swapped, the seams of a patch-wise transformer;
- scramble: the shape's area filled with random blobs instead of its pattern (a checkerboard of splotches);
- erase: pieces cut out (a broken plus, a ring with gaps);
- amorphous: a random star-shaped blob with a few lobes, in place of the shape (spiky splats, blobby triangles).

A corruption that barely changes the coverage (blurring a large circle a little, warping a dot pattern by a
fraction of a pixel) would teach the judge that real shapes are misdrawn, so each output must move at least
MIN_CHANGE of the shape's area (and MIN_CHANGE_PIXELS pixels) as a binary mask; those that do not are drawn again.
"""

import math

import torch
import torch.nn.functional as F

KINDS = ("blur", "blob", "warp", "shuffle", "scramble", "erase", "amorphous")
MIN_CHANGE = 0.1
MIN_CHANGE_PIXELS = 8.0


def _uniform(n, low, high, generator, device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def gaussian_blur(coverage, sigma):
    """Blur each image [N, 1, S, S] with its own Gaussian std sigma [N] (pixels), reflecting at the border."""
    radius = 8
    offsets = torch.arange(-radius, radius + 1, device=coverage.device, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)
    n, _, s, _ = coverage.shape
    x = F.pad(coverage.reshape(1, n, s, s), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernels[:, None, None, :], groups=n)
    x = F.conv2d(x, kernels[:, None, :, None], groups=n)
    return x.reshape(n, 1, s, s)


def _smooth_noise(n, size, cells, generator, device):
    """Random fields [N, 1, size, size] that vary smoothly over about size / cells pixels, unit std."""
    coarse = torch.randn(n, 1, cells, cells, generator=generator, device=device)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return field / field.flatten(1).std(1).clamp(min=1e-6)[:, None, None, None]


def blur(coverage, generator):
    return gaussian_blur(coverage, _uniform(coverage.shape[0], 1.0, 2.2, generator, coverage.device))


def blob(coverage, generator):
    soft = gaussian_blur(coverage, _uniform(coverage.shape[0], 2.0, 3.6, generator, coverage.device))
    # Re-threshold at a level that keeps about the shape's area, with a one-pixel ramp like real edges.
    level = 0.5 * soft.flatten(1).amax(1).clamp(min=1e-3)[:, None, None, None]
    return ((soft - level) / (level.clamp(max=0.5) * 0.5) + 0.5).clamp(0, 1)


def warp(coverage, generator):
    n, _, s, _ = coverage.shape
    device = coverage.device
    amplitude = _uniform(n, 1.5, 3.5, generator, device)[:, None, None, None]
    cells = int(torch.randint(3, 7, (), generator=generator, device=device))
    shift = torch.cat([_smooth_noise(n, s, cells, generator, device) for _ in range(2)], 1) * amplitude
    grid_1d = (torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s * 2 - 1
    gy, gx = torch.meshgrid(grid_1d, grid_1d, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None] + shift.permute(0, 2, 3, 1) * (2 / s)
    return F.grid_sample(coverage, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shuffle(coverage, generator):
    n, _, s, _ = coverage.shape
    device = coverage.device
    patch = 8 if torch.rand((), generator=generator, device=device) < 0.5 else 4
    g = s // patch
    patches = coverage.reshape(n, g, patch, g, patch).permute(0, 1, 3, 2, 4).reshape(n, g * g, patch, patch)
    # Swap a few pairs of patches, preferring patches the shape covers, so its outline breaks at patch seams.
    order = torch.arange(g * g, device=device).repeat(n, 1)
    weights = patches.flatten(2).sum(2) + 0.5
    for _ in range(int(torch.randint(1, 4, (), generator=generator, device=device))):
        a = torch.multinomial(weights, 1, generator=generator)
        b = torch.multinomial(weights, 1, generator=generator)
        order_a, order_b = order.gather(1, a), order.gather(1, b)
        order = order.scatter(1, a, order_b).scatter(1, b, order_a)
    patches = torch.gather(patches, 1, order[:, :, None, None].expand(-1, -1, patch, patch))
    return patches.reshape(n, g, g, patch, patch).permute(0, 1, 3, 2, 4).reshape(n, 1, s, s)


def scramble(coverage, generator):
    n, _, s, _ = coverage.shape
    device = coverage.device
    region = (gaussian_blur(coverage, torch.full((n,), 2.0, device=device)) > 0.08).float()
    fill = (coverage * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp(min=1)
    cells = int(torch.randint(5, 11, (), generator=generator, device=device))
    field = _smooth_noise(n, s, cells, generator, device)
    # The quantile of the field that fills the same share of the region as the pattern did.
    masked = torch.where(region > 0, field, torch.full_like(field, float("inf"))).flatten(1)
    ranks = (fill * region.flatten(1).sum(1)).long().clamp(min=1)
    level = torch.sort(masked, dim=1).values.gather(1, (ranks - 1)[:, None])[:, :, None, None]
    return ((level - field) * 3 + 0.5).clamp(0, 1) * region


def erase(coverage, generator):
    n, _, s, _ = coverage.shape
    device = coverage.device
    out = coverage.clone()
    ys = torch.arange(s, device=device, dtype=torch.float32)[None, :, None]
    for _ in range(3):
        # Centre the cut on a covered pixel so it always takes something away.
        weights = coverage.flatten(1) + 1e-6
        centre = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        cy, cx = (centre // s).float()[:, None, None], (centre % s).float()[:, None, None]
        half = _uniform(n, 1.5, 3.5, generator, device)[:, None, None]
        hole = ((ys - cy).abs() <= half) & ((ys.transpose(1, 2) - cx).abs() <= half)
        keep = torch.rand(n, generator=generator, device=device)[:, None, None] < 0.7
        out[:, 0] = torch.where(hole & keep, torch.zeros_like(out[:, 0]), out[:, 0])
    return out


def amorphous(coverage, generator):
    n, _, s, _ = coverage.shape
    device = coverage.device
    # Centre and size of the shape it replaces, so the blob sits where the shape was.
    mass = coverage.flatten(1).sum(1).clamp(min=1)
    coords = torch.arange(s, device=device, dtype=torch.float32) + 0.5
    cy = (coverage.sum(3).squeeze(1) * coords).sum(1) / mass
    cx = (coverage.sum(2).squeeze(1) * coords).sum(1) / mass
    radius = (mass / math.pi).sqrt().clamp(4, 12) * _uniform(n, 0.9, 1.3, generator, device)
    y = coords[None, :, None] - cy[:, None, None]
    x = coords[None, None, :] - cx[:, None, None]
    theta, rho = torch.atan2(y, x), torch.hypot(x, y)
    edge = torch.ones_like(theta)
    for k in range(2, 8):
        amp = _uniform(n, 0.0, 0.35 / math.sqrt(k - 1), generator, device)[:, None, None]
        phase = _uniform(n, 0.0, 2 * math.pi, generator, device)[:, None, None]
        edge = edge + amp * torch.cos(k * theta + phase)
    return (0.5 - (rho - radius[:, None, None] * edge.clamp(min=0.2))).clamp(0, 1)[:, None]


CORRUPTIONS = {name: globals()[name] for name in KINDS}


def enough_change(before, after, kinds):
    """True where the corruption moved at least MIN_CHANGE of the shape's area (and MIN_CHANGE_PIXELS pixels).

    The shape is compared as a binary mask (coverage > 0.5), so a change of edge softness alone does not count,
    except for "blur", whose point is the softness: there the coverage itself is compared.
    """
    soft = torch.tensor([k == "blur" for k in kinds], device=before.device)[:, None]
    geometric = ((after > 0.5) != (before > 0.5)).float().flatten(1)
    moved = torch.where(soft, (after - before).abs().flatten(1), geometric).sum(1)
    area = before.flatten(1).sum(1)
    return moved >= torch.maximum(MIN_CHANGE * area, torch.full_like(area, MIN_CHANGE_PIXELS))


def corrupt(coverage, kinds, generator, attempts=6):
    """Apply corruption kinds[i] (names from KINDS) to coverage[i]; returns the corrupted coverage.

    Items whose corruption changed too little are corrupted again with fresh randomness, then, as a last
    resort, given an amorphous blob (which always differs from a real shape).
    """
    out = coverage.clone()
    todo = torch.ones(coverage.shape[0], dtype=torch.bool, device=coverage.device)
    for _ in range(attempts):
        for name in KINDS:
            idx = (todo & torch.tensor([k == name for k in kinds], device=coverage.device)).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = CORRUPTIONS[name](coverage[idx], generator)
        todo = ~enough_change(coverage, out, kinds)
        if not todo.any():
            return out
    idx = todo.nonzero().squeeze(1)
    out[idx] = amorphous(coverage[idx], generator)
    return out
