"""The distortion measure of the shapes lab: how often samples are misdrawn, and how far they are from real shapes.

    python -m dimr distortion --model tiny-dimr --samples 500 [--steps 25 --guidance 3] [--save-grid g.png]
    python -m dimr distortion --model real --samples 500        # the floor: real renders against real renders
    python -m dimr distortion --images samples.npz              # given samples (dimr.sampling.sample_files, with labels)

In the spirit of the paper's "distortion rate" (the share of samples a classifier trained on real images
flags as low fidelity): a sample is flagged when the judge's probability of the class it was asked for is
below 0.5. The judge (`dimr.lab.classifier`) knows the ten shapes and "none of these", learned from real renders
broken the ways samples break (blurred, blobbed, warped, patch-shuffled, scrambled, cut, amorphous), so a
splotch is refused instead of being called the nearest shape. It is trained with faint pixel noise, so the
grain of a sample alone is not a flag; the shape has to be wrong.

Beside the rate, the judge's pooled features give distances between sets: the Frechet distance (the FID
formula, here in the judge's feature space) and improved precision/recall (Kynkaenniemi et al. 2019) against
real renders, overall and the distance per class. Real against real (two independent sets of the same size)
is the floor: a finite sample never reaches 0.

Classes are spread evenly over the samples (sample i asks for class i mod 10) and the initial noise comes from
one fixed seed, so two models are judged on the same noise and classes. The rate is printed with a 95% Wilson
score interval, which stays inside [0, 1] and is accurate for rates near 0 where the normal approximation is not.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dimr.lab.classifier import CLASSIFIER_DIR, JUDGE_CLASSES, NONE, load_classifier
from dimr.lab.shapes import CLASS_NAMES, make_dataset
from dimr.sampling import caches
from dimr.sampling.defaults import SHAPES_GUIDANCE, SHAPES_STEPS
from dimr.sampling.grids import save_png, tile, to_uint8
from dimr.sampling.pipeline import DEFAULT_SAMPLER, branch_x0

THRESHOLD = 0.5
REAL_SEED = 2  # real data for the measure: neither the diffusion models' (0) nor the classifier's (1, 3)
FLOOR_SEED = 4  # a second real set: real vs real gives the floor of the Frechet distance and precision/recall
FLAG_COLOUR = (220, 30, 30)
MIN_PER_CLASS_FID = 10


def wilson_interval(flagged, total, z=1.959963984540054):
    """95% Wilson score interval (low, high) for a binomial proportion flagged / total."""
    if total < 1:
        raise ValueError(f"need at least one sample, got {total}")
    p = flagged / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def even_labels(num_samples, num_classes=len(CLASS_NAMES)):
    """Class i mod num_classes for sample i: every class within one sample of num_samples / num_classes."""
    return torch.arange(num_samples) % num_classes


def real_images(num_samples, seed=REAL_SEED):
    """Rendered shapes with evenly spread labels, as uint8 [N, 3, 32, 32] and labels [N]."""
    images, labels = make_dataset(num_samples, seed)
    # make_dataset balances the classes exactly like even_labels but shuffles them: put them back in order.
    runs = [(labels == k).nonzero().squeeze(1) for k in range(len(CLASS_NAMES))]
    index = torch.tensor([int(runs[i % len(CLASS_NAMES)][i // len(CLASS_NAMES)]) for i in range(num_samples)])
    return images[index], labels[index]


def generated_images(model, num_samples, num_inference_steps=SHAPES_STEPS, guidance_scale=SHAPES_GUIDANCE,
                     sampler=None, seed=0, batch_size=100, device=None, progress=True, total_samples=None,
                     refinement=False):
    """Samples of a bundled model name or checkpoint directory via the pipeline, uint8 [N, 3, 32, 32] and labels;
    with refinement=True also `branch_refinement` of every sample and the model's branch_scales (None for a
    single-branch model).

    total_samples (default num_samples): the size of the run whose first num_samples samples these are, so a
    few samples of a stored measurement can be redrawn exactly."""
    from tqdm import tqdm

    from dimr.sampling.loading import load_pipeline

    pipe = load_pipeline(model, device=device, sampler=sampler or DEFAULT_SAMPLER)
    pipe.set_progress_bar_config(disable=True)
    if pipe.model.config.class_names != CLASS_NAMES:
        raise ValueError(f"model {model!r} was not trained on the shapes classes {CLASS_NAMES} "
                         f"(its classes: {pipe.model.config.class_names})")
    labels = even_labels(num_samples)
    size = pipe.model.sample_size
    # All noise drawn up front on the CPU: the same samples whatever the batch size or device.
    noise = torch.randn(total_samples or num_samples, 3, size, size, generator=torch.Generator().manual_seed(seed))
    noise = noise[:num_samples]
    trace_branches = refinement and len(pipe.model.branch_scales) > 1
    images, moves = [], []
    for start in tqdm(range(0, num_samples, batch_size), desc=f"sampling {model}", disable=not progress):
        out = pipe(labels[start : start + batch_size].tolist(), guidance_scale=guidance_scale,
                   num_inference_steps=num_inference_steps, latents=noise[start : start + batch_size],
                   output_type="pt", return_branches=trace_branches, branch_steps=[])
        images.append(to_uint8(out.images.cpu() * 2 - 1))
        if trace_branches:
            moves.append(branch_refinement(out.branches.x0_pred))
    if refinement:
        if not moves:
            return torch.cat(images), labels, None
        merged = {k: torch.cat([m[k] for m in moves], dim=1) for k in moves[0]}
        return torch.cat(images), labels, {**merged, "scales": pipe.model.branch_scales}
    return torch.cat(images), labels


def branch_refinement(x0_pred):
    """What each finer branch does to the estimate of the branch below it, per sample.

    x0_pred: every branch's clean estimate at every step, [S, B, C, H/f, W/f], lowest resolution first (a
    BranchTrace's). For each finer branch l >= 1, with r its resolution over branch l - 1's:
      "moved":  mean |avg_pool_r(estimate_l) - estimate_(l-1)| over all steps: how far it moves the coarse content
                it was given (0 when it keeps the layout the coarser branch drew);
      "detail": mean |estimate_l - its own avg_pool_r, upsampled back| at the last step: the content it adds below
                the coarser grid.
    Both in 0..255 pixel units, as tensors [L - 1, B]."""
    moved, detail = [], []
    for coarse, fine in zip(x0_pred, x0_pred[1:]):
        r = fine.shape[-1] // coarse.shape[-1]
        pooled = F.avg_pool2d(fine.flatten(0, 1), r).unflatten(0, fine.shape[:2])
        moved.append((pooled - coarse).abs().mean(dim=(0, 2, 3, 4)) * 127.5)
        detail.append(fine_detail(fine[-1], r))
    return {"moved": torch.stack(moved), "detail": torch.stack(detail)}


def fine_detail(images, r):
    """Mean |x - nearest_up(avg_pool_r(x))| per image [N] in 0..255 units, for images [N, C, H, W] in [-1, 1]:
    the content finer than an r x r grid (what a branch r times finer than another can add)."""
    coarse = F.interpolate(F.avg_pool2d(images, r), scale_factor=r, mode="nearest")
    return (images - coarse).abs().mean(dim=(1, 2, 3)) * 127.5


def branch_estimates(pipe, x0, labels, level, noise):
    """Every branch's clean estimate (clamped, lowest resolution first) of real images x0 [N, C, H, W] in [-1, 1]
    noised with `noise` to the training timestep whose abar is nearest `level`, given `labels`."""
    table = pipe.scheduler.alphas_cumprod
    k = int((table - level).abs().argmin())
    abar = table[k]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    with torch.inference_mode():
        outs = pipe.model.forward_branches(x_t, torch.tensor(float(k)), labels)
    prediction_type = pipe.scheduler.config.prediction_type
    return [branch_x0(x_t, out, scale, abar, prediction_type).clamp(-1, 1)
            for out, scale in zip(outs, pipe.model.branch_scales)]


def branch_denoising_errors(pipe, x0, labels, levels, noise):
    """How well each branch recovers real images given their class: RMSE per noise level (abar), branch and image
    [len(levels), L, N] in 0..255 units, each branch against x0 average-pooled to its own grid. The high noise
    levels decide a sample's layout, the low ones its fine detail."""
    errors = []
    for level in levels:
        estimates = branch_estimates(pipe, x0, labels, level, noise)
        errors.append(torch.stack([
            (estimate - F.avg_pool2d(x0, scale)).square().mean(dim=(1, 2, 3)).sqrt() * 127.5
            for estimate, scale in zip(estimates, pipe.model.branch_scales)]))
    return torch.stack(errors)


def bundled_judge():
    """The bundled judge, loaded once per process (dimr.sampling.caches)."""
    return caches.remembered(("judge", str(CLASSIFIER_DIR)), load_classifier)


def verdicts(probs, labels, threshold=THRESHOLD):
    """The rule of the measure: (flagged bool [N], p of the intended class [N]) from class probabilities [N, K]."""
    p_intended = probs[torch.arange(len(labels)), torch.as_tensor(labels)]
    return p_intended < threshold, p_intended


def judge(images, labels, classifier=None, threshold=THRESHOLD):
    """The judge's verdict per image: (flagged bool [N], p of the intended class [N]) for uint8 images [N, 3, 32, 32]."""
    return verdicts((classifier or bundled_judge()).probabilities(images), labels, threshold)


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D] (the FID formula)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # Tr sqrt(A B) = sum of sqrt(eigenvalues of sqrt(A) B sqrt(A)), which is symmetric positive semi-definite.
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def precision_recall(real, fake, k=3):
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature sets real [N, D] and fake [M, D].

    Each set's manifold is the union of balls around its points reaching their k-th nearest neighbour;
    precision is the share of fake points inside the real manifold (fidelity), recall the share of real
    points inside the fake manifold (coverage).
    """
    def radii(x):
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # k + 1: the nearest is the point itself

    real, fake = real.double(), fake.double()
    cross = torch.cdist(fake, real)
    precision = (cross <= radii(real)[None]).any(1).double().mean()
    recall = (cross.T <= radii(fake)[None]).any(1).double().mean()
    return float(precision), float(recall)


def distortion_rate(images, labels, classifier, threshold=THRESHOLD, reference=None):
    """The measure of a set of samples: the judge's flags (rate, interval, per class) and, given the reference
    (features [M, D] and labels [M] of real renders, from `real_reference`), the Frechet distance (overall and
    per class) and precision/recall in the judge's feature space."""
    probs, features = classifier.probabilities_and_features(images)
    labels = torch.as_tensor(labels)
    flagged, _ = verdicts(probs, labels, threshold)
    low, high = wilson_interval(int(flagged.sum()), len(labels))
    per_class = {name: [int(flagged[labels == k].sum()), int((labels == k).sum())] for k, name in enumerate(CLASS_NAMES)}
    result = {"flagged": int(flagged.sum()), "samples": len(labels), "rate": flagged.float().mean().item(),
              "ci95": [low, high], "per_class": per_class, "threshold": threshold,
              "flagged_indices": flagged.nonzero().squeeze(1).tolist(),
              "called_none": int((probs.argmax(1) == JUDGE_CLASSES.index(NONE)).sum())}
    if reference is not None:
        real_features, real_labels = reference
        result["fid"] = frechet_distance(features, real_features)
        result["precision"], result["recall"] = precision_recall(real_features, features)
        # Per class only where both sets have enough samples for a covariance worth the name.
        result["fid_per_class"] = {
            name: frechet_distance(features[labels == k], real_features[real_labels == k])
            for k, name in enumerate(CLASS_NAMES)
            if min(int((labels == k).sum()), int((real_labels == k).sum())) >= MIN_PER_CLASS_FID}
    return result


def measure(images, labels, classifier, threshold=THRESHOLD):
    """What `distortion` reports for samples: `distortion_rate` against as many real renders, with real against
    real (the floor) under "real"."""
    reference = real_reference(classifier, len(labels))
    floor = distortion_rate(*real_images(len(labels), FLOOR_SEED), classifier, threshold, reference)
    result = distortion_rate(images, labels, classifier, threshold, reference)
    result["real"] = {k: floor[k] for k in ("rate", "fid", "precision", "recall", "fid_per_class")}
    return result


def real_reference(classifier, num_samples, seed=REAL_SEED):
    """The judge's features [N, D] and the labels [N] of `num_samples` real renders: the reference of FID and P/R."""
    images, labels = real_images(num_samples, seed)
    return classifier.probabilities_and_features(images)[1], labels


def refinement_by_class(moves, labels, real, real_labels):
    """Per class, for each finer branch: the mean "moved" and "detail" of `branch_refinement` over the samples
    (from `generated_images(refinement=True)`), and the detail real renders have at that branch's resolution (what
    a branch that draws the class right adds). Rounded to 0.01 (0..255 units)."""
    scales = moves["scales"]
    real = real.float() / 127.5 - 1
    real_detail = [fine_detail(F.avg_pool2d(real, fine) if fine > 1 else real, coarse // fine)
                   for coarse, fine in zip(scales, scales[1:])]
    summary = {}
    for k, name in enumerate(CLASS_NAMES):
        mine, theirs = labels == k, real_labels == k
        summary[name] = {"moved": [round(float(m[mine].mean()), 2) for m in moves["moved"]],
                         "detail": [round(float(d[mine].mean()), 2) for d in moves["detail"]],
                         "real_detail": [round(float(d[theirs].mean()), 2) for d in real_detail]}
    return summary


def flag_frames(flagged_indices, num_images):
    """Grid border colours: red around flagged samples, none around the rest."""
    flagged = set(flagged_indices)
    return [FLAG_COLOUR if i in flagged else None for i in range(num_images)]


STORED_RESULT = "distortion.json"


def stored_result(model_dir):
    """The measured distortion of a model, as written next to its weights by `distortion --store`; None if not measured."""
    path = Path(model_dir) / STORED_RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def format_result(name, result):
    low, high = result["ci95"]
    per_class = ", ".join(f"{k} {f}/{n}" for k, (f, n) in result["per_class"].items())
    lines = [f"distortion rate of {name}: {100 * result['rate']:.1f}% ({result['flagged']} of {result['samples']} "
             f"samples), 95% CI {100 * low:.1f}%-{100 * high:.1f}% (Wilson)",
             f"  flagged when p(intended class) < {result['threshold']}; the judge called {result['called_none']} "
             f"'none of these'",
             f"  per class (flagged/samples): {per_class}"]
    if "fid" in result:
        floor = result.get("real", {})
        def against_floor(key):
            return f" (real vs real: {floor[key]:.3g})" if key in floor else ""
        lines.append(f"  judge-feature FID {result['fid']:.3g}{against_floor('fid')}, precision "
                     f"{result['precision']:.3f}{against_floor('precision')}, recall {result['recall']:.3f}"
                     f"{against_floor('recall')}")
        if result["fid_per_class"]:
            per_class_fid = ", ".join(f"{k} {v:.3g}" for k, v in result["fid_per_class"].items())
            lines.append(f"  FID per class: {per_class_fid}")
    if "refinement" in result:
        lines.append("  finer branches (0..255 units): moved = how far each moves the coarser branch's estimate (mean "
                     "over steps), detail = what it adds below the coarser grid at the end (real shapes: in brackets)")
        for name, r in result["refinement"].items():
            pairs = "; ".join(f"branch {l + 1}: moved {m:.1f}, detail {d:.1f} ({real:.1f})"
                              for l, (m, d, real) in enumerate(zip(r["moved"], r["detail"], r["real_detail"])))
            lines.append(f"    {name}: {pairs}")
    return "\n".join(lines)


def add_cli_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="tiny-dimr, tiny-baseline, a checkpoint directory, or 'real' for rendered data")
    source.add_argument("--images", help="judge the samples in this .npz (arr_0 uint8 [N, 32, 32, 3], arr_1 labels: "
                                         "what `dimr evaluate` writes) instead of sampling")
    parser.add_argument("--samples", type=int, default=500, help="number of samples (classes spread evenly)")
    parser.add_argument("--steps", type=int, default=SHAPES_STEPS, help="sampling steps (default: the demo's)")
    parser.add_argument("--guidance", type=float, default=SHAPES_GUIDANCE,
                        help="classifier-free guidance scale (default: the demo's)")
    parser.add_argument("--sampler", help="a sampler name from dimr.sampling.pipeline.SAMPLERS (default: the pipeline's, dpm-solver-3s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="flag when p(intended class) < this")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--classifier", default=str(CLASSIFIER_DIR), help="the judge's directory")
    parser.add_argument("--save-grid", help="write the judged samples as a PNG grid (one column per class, "
                                            "flagged samples framed in red)")
    parser.add_argument("--grid-samples", type=int, help="put only the first N samples in the grid (default: all)")
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--store", action="store_true",
                        help=f"write the result as {STORED_RESULT} into the model's directory (the app shows it)")


def cli_main(args):
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    if not 0 < args.threshold < 1:
        raise ValueError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.grid_samples is not None and args.grid_samples < 1:
        raise ValueError(f"--grid-samples must be at least 1, got {args.grid_samples}")
    if args.store and not (args.model and args.model != "real"):
        raise ValueError("--store needs a model: real data and a samples file have no model directory to store "
                         "the result in")
    classifier = load_classifier(args.classifier)
    if args.model == "real":
        images, labels = real_images(args.samples, FLOOR_SEED)
        result = distortion_rate(images, labels, classifier, args.threshold, real_reference(classifier, args.samples))
        settings = {"data": f"rendered shapes, seed {FLOOR_SEED}, against seed {REAL_SEED}"}
    else:
        if args.images:
            from dimr.sampling.sample_files import read_samples

            images, labels = read_samples(args.images)
            if images.shape[-2:] != (32, 32) or int(labels.min()) < 0 or int(labels.max()) >= len(CLASS_NAMES):
                raise ValueError(f"{args.images} does not hold shapes samples: the judge takes 32x32 images with "
                                 f"labels 0..{len(CLASS_NAMES) - 1}, got {list(images.shape[-2:])} px and labels "
                                 f"{int(labels.min())}..{int(labels.max())}")
            moves = None  # a samples file keeps no branch estimates
            settings = {"images": args.images, "samples": len(labels)}
        else:
            images, labels, moves = generated_images(args.model, args.samples, args.steps, args.guidance,
                                                     args.sampler, args.seed, args.batch_size, args.device,
                                                     refinement=True)
            settings = {"steps": args.steps, "guidance": args.guidance, "sampler": args.sampler or DEFAULT_SAMPLER,
                        "seed": args.seed, "samples": args.samples}
        result = measure(images, labels, classifier, args.threshold)
        if moves is not None:
            result["refinement"] = refinement_by_class(moves, labels, *real_images(len(labels), FLOOR_SEED))
    print(format_result(args.model or args.images, result))
    if args.save_grid:
        shown = len(images) if args.grid_samples is None else min(args.grid_samples, len(images))
        frames = flag_frames(result["flagged_indices"], shown)
        save_png(tile(images[:shown], len(CLASS_NAMES), pad=2, scale=2, frames=frames), args.save_grid)
    record = {"model": args.model or args.images, "settings": settings, **result}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    if args.store:
        from dimr.sampling.loading import model_files

        path = model_files(args.model).directory / STORED_RESULT
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"stored in {path}")
    return 0
