"""The distortion rate: the share of samples that the shapes classifier does not recognise as their class.

    python -m dimr distortion --model tiny-dimr --samples 500 [--steps 25 --guidance 1.5]
    python -m dimr distortion --model real --samples 500        # the same measure on real (rendered) data

In the spirit of the paper's "distortion rate" (the share of samples a classifier trained on real images
flags as low fidelity): a sample is distorted when the classifier's probability of the class it was asked
for is below 0.5. At 0.5 the intended class is less likely than all others together: the shape is either
another shape or none at all. The classifier is trained on real shapes only (with mild pixel noise added, so
that the faint residual noise of samples does not count as distortion; the shape has to be wrong) and is
confident on them (see checkpoints/shapes-classifier/config.json), so real data scores 0% and a flag means the
sample itself is off, not the judge.

Classes are spread evenly over the samples (sample i asks for class i mod 10) and the initial noise comes from
one fixed seed, so two models are judged on the same noise and classes. The rate is printed with a 95% Wilson
score interval, which stays inside [0, 1] and is accurate for rates near 0 where the normal approximation is not.
"""

import json
import math
from pathlib import Path

import torch

from .classifier import CLASSIFIER_DIR, load_classifier
from .data.shapes import CLASS_NAMES, make_dataset, to_uint8

THRESHOLD = 0.5
REAL_SEED = 2  # real data for the measure: neither the diffusion models' (0) nor the classifier's (1, 3)


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


def generated_images(model, num_samples, num_inference_steps=25, guidance_scale=1.5, sampler=None, seed=0,
                     batch_size=100, device=None, progress=True):
    """Samples of a bundled model name or checkpoint directory via the pipeline, uint8 [N, 3, 32, 32] and labels."""
    from tqdm import tqdm

    from .loading import load_pipeline
    from .pipeline import DEFAULT_SCHEDULER

    pipe = load_pipeline(model, device=device, scheduler=sampler or DEFAULT_SCHEDULER)
    pipe.set_progress_bar_config(disable=True)
    if pipe.model.config.class_names != CLASS_NAMES:
        raise ValueError(f"model {model!r} was not trained on the shapes classes {CLASS_NAMES} "
                         f"(its classes: {pipe.model.config.class_names})")
    labels = even_labels(num_samples)
    size = pipe.model.sample_size
    # All noise drawn up front on the CPU: the same samples whatever the batch size or device.
    noise = torch.randn(num_samples, 3, size, size, generator=torch.Generator().manual_seed(seed))
    images = []
    for start in tqdm(range(0, num_samples, batch_size), desc=f"sampling {model}", disable=not progress):
        out = pipe(labels[start : start + batch_size].tolist(), guidance_scale=guidance_scale,
                   num_inference_steps=num_inference_steps, latents=noise[start : start + batch_size],
                   output_type="pt").images
        images.append(to_uint8(out.cpu() * 2 - 1))
    return torch.cat(images), labels


def distortion_rate(images, labels, classifier, threshold=THRESHOLD):
    """Share of images whose intended-class probability is below threshold, with its interval and per class."""
    probs = classifier.probabilities(images)
    p_intended = probs[torch.arange(len(labels)), labels]
    flagged = p_intended < threshold
    low, high = wilson_interval(int(flagged.sum()), len(labels))
    per_class = {name: [int(flagged[labels == k].sum()), int((labels == k).sum())] for k, name in enumerate(CLASS_NAMES)}
    return {"flagged": int(flagged.sum()), "samples": len(labels), "rate": flagged.float().mean().item(),
            "ci95": [low, high], "per_class": per_class, "threshold": threshold,
            "accuracy": (probs.argmax(1) == labels).float().mean().item()}


def judge(images, labels, classifier=None, threshold=THRESHOLD):
    """The judge's verdict per image: (flagged bool [N], p of the intended class [N]) for uint8 images [N, 3, 32, 32]."""
    classifier = classifier or load_classifier()
    probs = classifier.probabilities(images)
    p_intended = probs[torch.arange(len(labels)), torch.as_tensor(labels)]
    return p_intended < threshold, p_intended


STORED_RESULT = "distortion.json"


def stored_result(model_dir):
    """The measured distortion of a model, as written next to its weights by `distortion --store`; None if not measured."""
    path = Path(model_dir) / STORED_RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def format_result(name, result):
    low, high = result["ci95"]
    per_class = ", ".join(f"{k} {f}/{n}" for k, (f, n) in result["per_class"].items())
    return (f"distortion rate of {name}: {100 * result['rate']:.1f}% ({result['flagged']} of {result['samples']} "
            f"samples), 95% CI {100 * low:.1f}%-{100 * high:.1f}% (Wilson)\n"
            f"  flagged when p(intended class) < {result['threshold']}; classifier top-1 accuracy "
            f"{100 * result['accuracy']:.1f}%\n  per class (flagged/samples): {per_class}")


def add_cli_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="tiny-dimr, tiny-baseline, a checkpoint directory, or 'real' for rendered data")
    parser.add_argument("--samples", type=int, default=500, help="number of samples (classes spread evenly)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale")
    parser.add_argument("--sampler", help="a sampler name from dimr.pipeline.SCHEDULERS (default: the pipeline's, dpm-solver-3s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="flag when p(intended class) < this")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--classifier", default=str(CLASSIFIER_DIR), help="classifier directory")
    parser.add_argument("--save-grid", help="write the judged samples as a PNG grid (one column per class)")
    parser.add_argument("--json", help="also write the result as JSON here")


def cli_main(args):
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    if not 0 < args.threshold < 1:
        raise ValueError(f"--threshold must be between 0 and 1, got {args.threshold}")
    classifier = load_classifier(args.classifier)
    if args.model == "real":
        images, labels = real_images(args.samples)
        settings = {"data": f"rendered shapes, seed {REAL_SEED}"}
    else:
        images, labels = generated_images(args.model, args.samples, args.steps, args.guidance, args.sampler,
                                          args.seed, args.batch_size, args.device)
        settings = {"steps": args.steps, "guidance": args.guidance, "sampler": args.sampler or "default",
                    "seed": args.seed}
    result = distortion_rate(images, labels, classifier, args.threshold)
    print(format_result(args.model, result))
    if args.save_grid:
        from .train import save_png, tile

        save_png(tile(images, len(CLASS_NAMES), scale=2), args.save_grid)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, **settings, **result}, indent=1) + "\n")
    return 0
