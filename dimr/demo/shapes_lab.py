"""What the shapes lab adds to the demo: real reference shapes beside the samples, the judge's verdict on each sample,
and the distortion measured for a bundled model (dimr.lab.distortion, stored beside its weights), as the page shows it.

    reference_shapes([4, 8])          # [(PIL image, "real ring"), (PIL image, "real checkerboard")]
    judged_gallery(generation)        # [(PIL image, "ring ✓ recognised, p 0.97"), ...]
    compare_pairs(request.labels, compare_side(dimr_generation), [])  # per sample: real shape, DiMR, baseline
    compared(compare_requests(**controls), sample)   # Compare's (pairs, status line) as sampling goes on
    measured_distortion("tiny-dimr")  # the stored result (dict), or None before it is measured
"""

import functools

import numpy as np
import torch

from dimr.demo.catalogue import TINY_BASELINE, TINY_DIMR, is_shapes_model
from dimr.demo.limits import MAX_COMPARE_IMAGES
from dimr.demo.panel import Generation, enlarge
from dimr.demo.request import Request
from dimr.demo.serving import Loading, describe
from dimr.lab.distortion import judge, stored_result
from dimr.lab.shapes import CLASS_NAMES, make_dataset
from dimr.sampling.loading import BUNDLED, model_files

REFERENCE_SEED = 4  # real reference shapes: not the diffusion models' training data (seed 0)


def reference_shapes(class_ids, seed=REFERENCE_SEED):
    """One real (rendered) shape per class id, in order, as [(PIL image, 'real <class>')]: what a sample should show.

    Each class gets its own shape from a fixed seed, so a class looks the same wherever it appears."""
    shapes = _real_shapes(seed)
    return [(shapes[c], f"real {CLASS_NAMES[c]}") for c in class_ids]


@functools.lru_cache(maxsize=4)
def _real_shapes(seed):
    """One enlarged real shape per class id, rendered once per seed: every request with real shapes shows them."""
    images, labels = make_dataset(len(CLASS_NAMES), seed)  # one shape of each class (make_dataset balances them)
    index = {int(k): i for i, k in enumerate(labels)}
    return [enlarge(images[index[c]].permute(1, 2, 0).numpy()) for c in range(len(CLASS_NAMES))]


def compare_requests(**controls):
    """The Compare tab's two checked requests: the tiny DiMR and the baseline with the same classes, noise and
    settings (up to MAX_COMPARE_IMAGES each)."""
    return [Request.check(model=name, max_images=MAX_COMPARE_IMAGES, **controls) for name in (TINY_DIMR, TINY_BASELINE)]


def reference_gallery(request):
    """The real shapes of a request's classes, one per image, or [] for a model without real shapes (ImageNet)."""
    return reference_shapes(request.labels) if is_shapes_model(request.model) else []


def sample_verdicts(generation):
    """The judge's verdict per sample of a shapes model's Generation: [(misdrawn, p of the intended class)]."""
    images = torch.from_numpy(generation.images).permute(0, 3, 1, 2)
    flagged, p_intended = judge(images, torch.tensor(generation.request.labels))
    return list(zip(flagged.tolist(), p_intended.tolist()))


def verdict(misdrawn, p):
    """'✓ recognised, p 0.97' or '✗ misdrawn, p 0.12'."""
    return f"{'✗ misdrawn' if misdrawn else '✓ recognised'}, p\u00a0{p:.2f}"  # no-break: p stays with its value


def judged_gallery(generation):
    """The samples captioned with the judge's verdict: 'ring ✓ recognised, p 0.97' or 'ring ✗ misdrawn, p 0.12'."""
    return [(image, f"{caption} {verdict(*judged)}")
            for (image, caption), judged in zip(generation.gallery(), sample_verdicts(generation))]


def final_gallery(generation):
    """A finished run's samples as the page shows them: with the judge's verdicts for a shapes model."""
    return judged_gallery(generation) if is_shapes_model(generation.request.model) else generation.gallery()


# Stands in for a sample still to come in Compare's pairs: a light grey square of the enlarged samples' size.
WAITING = enlarge(np.full((32, 32, 3), 235, np.uint8))


def compare_side(update):
    """One model's side of Compare's pairs, [(PIL image, what to say)] per sample: from a sampling preview
    (dimr.demo.serving.Progress) 'step 3/25', from a finished Generation the judge's verdict."""
    if isinstance(update, Generation):
        return [(image, verdict(*judged)) for (image, _), judged in zip(update.gallery(), sample_verdicts(update))]
    return [(image, f"step {update.step}/{update.total}") for image, _ in update.gallery()]


def compare_pairs(labels, dimr, baseline):
    """Compare's gallery, three to a row: per sample (one noise), its class's real shape, then DiMR's sample and the
    baseline's (`compare_side`, or [] for a side still to come: grey squares), each captioned with its model."""
    rows = []
    for k, real in enumerate(reference_shapes(labels)):
        rows.append(real)
        for name, side in (("DiMR", dimr), ("baseline", baseline)):
            image, said = side[k] if side else (WAITING, "to come")
            rows.append((image, f"{name}: {said}"))
    return rows


def compared(requests, sample):
    """Compare's page as it fills: yields (pairs, status line) while the requests of `compare_requests` sample one
    after the other through `sample(request)` (dimr.demo.serving.Progress updates, then the Generation)."""
    sides, lines = [[], []], []
    for k, request in enumerate(requests):
        for update in sample(request):
            if isinstance(update, Loading):  # the progress bar says so; the pairs wait for images
                continue
            sides[k] = compare_side(update)
            if isinstance(update, Generation):
                lines.append(f"{describe(update)}; {verdict_count(update)}")
            yield compare_pairs(request.labels, *sides), "  \n".join(lines) or f"Sampling with {request.model}…"


def verdict_count(generation):
    """'the judge finds 2 of 8 misdrawn'."""
    misdrawn = sum(flagged for flagged, _ in sample_verdicts(generation))
    return f"the judge finds {misdrawn} of {len(generation.captions)} misdrawn"


def measured_distortion(name):
    """The distortion measured for a bundled model and stored beside its weights (dimr.lab.distortion), or None."""
    return stored_result(model_files(name).directory) if name in BUNDLED else None


def rate_text(name):
    """'10.0% (50 of 500 samples)' from the distortion stored with a bundled model, or 'not measured yet'."""
    result = measured_distortion(name)
    if result is None:
        return "not measured yet"
    return f"{100 * result['rate']:.1f}% ({result['flagged']} of {result['samples']} samples)"


def rates_table():
    """Markdown: each shapes class's measured distortion for both tiny models (stored with them, not recomputed)."""
    models = (TINY_DIMR, TINY_BASELINE)
    results = {name: measured_distortion(name) for name in models}
    if None in results.values():
        missing = " and ".join(name for name, result in results.items() if result is None)
        return f"**Measured distortion per class:** not measured yet for {missing}."
    settings = results[TINY_DIMR]["settings"]
    lines = [f"**Measured distortion per class** (misdrawn of samples; {settings['samples']} samples per model, "
             f"{settings['steps']} steps of <span class=\"name\">{settings['sampler']}</span>, "  # never broken
             f"guidance {settings['guidance']:g}, seed {settings['seed']}; lower is better)", "",
             "| class | tiny DiMR | baseline |", "|---|---|---|"]
    for name in results[TINY_DIMR]["per_class"]:
        cells = [f"{f}/{n} ({100 * f / n:.0f}%)" for f, n in (results[m]["per_class"][name] for m in models)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(f"| **all** | {' | '.join(f'**{rate_text(m)}**' for m in models)} |")
    return "\n".join(lines)
