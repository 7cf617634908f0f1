"""ZeroGPU device time: how many seconds of GPU to ask `spaces.GPU` for, per request, before it runs (a shorter grant
queues sooner, and a request that outlives its grant is cut off).

    @on_gpu                           # on a ZeroGPU Space (the `spaces` package present): spaces.GPU, priced per call
    def generate(model, classes, images_per_class, num_inference_steps, ...): ...
    handler_seconds({"model": "DiMR-XL/2R", "classes": [1, 2], "images_per_class": 2, "num_inference_steps": 50})

The request's own checks run later, inside the grant; here a value they will refuse counts as the largest allowed
(dimr.demo.limits), so the estimate never fails.
"""

import inspect

from dimr.demo.catalogue import TINY_DIMR, model_branches, model_choices
from dimr.demo.limits import MAX_IMAGES, MAX_STEPS
from dimr.demo.panel import MAX_PANEL_STEPS_LATENT

# Seconds per image and step of the network in bf16 with guidance on an H200 (from benchmarks/results/nvidia-h200.json,
# "bf16" running at about 60% of "fast"), and per 256x256 VAE decode.
SECONDS_PER_IMAGE_STEP = {"DiMR-XL/2R": 0.0036, "DiMR-G/2R": 0.0075}
SECONDS_PER_DECODE = 0.005
FIXED_SECONDS = 10  # attaching the GPU, moving the weights there
MARGIN = 2
MAX_SECONDS = 120


def gpu_seconds(model, classes, images_per_class, num_inference_steps):
    """The GPU time for one sampling run of a request, from its raw (unchecked) arguments."""
    def bounded(value, high):
        return min(max(int(value), 1), high) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else high

    images = bounded(len(classes) if isinstance(classes, (list, tuple)) else 1, MAX_IMAGES) * \
        bounded(images_per_class, MAX_IMAGES)
    images, steps = min(images, MAX_IMAGES), bounded(num_inference_steps, MAX_STEPS)
    per_step = SECONDS_PER_IMAGE_STEP.get(model, max(SECONDS_PER_IMAGE_STEP.values()))
    # The branch panel decodes every branch at each panel step, then the final images.
    decodes = images * (branch_count(model) * min(steps, MAX_PANEL_STEPS_LATENT) + 1)
    work = images * steps * per_step + decodes * SECONDS_PER_DECODE
    return min(MAX_SECONDS, round(FIXED_SECONDS + MARGIN * work))


def branch_count(model):
    """The model's branches; for a name the checks will refuse, the most any offered model has."""
    names = [model] if model in model_choices() else model_choices()
    return max(len(model_branches(name)) for name in names)


def handler_seconds(arguments):
    """The GPU time for one call of an app handler, from its arguments by name: a handler with a `model` samples it
    once; one without (Compare: both tiny models in turn) samples twice."""
    runs = 1 if "model" in arguments else 2
    return min(MAX_SECONDS, runs * gpu_seconds(arguments.get("model", TINY_DIMR), arguments["classes"],
                                               arguments["images_per_class"], arguments["num_inference_steps"]))


def on_gpu(fn):
    """fn wrapped in spaces.GPU, asking for the time its arguments need, where the `spaces` package is present (a
    ZeroGPU Space attaches a GPU only while such a function runs); elsewhere fn itself."""
    try:
        import spaces
    except ImportError:
        return fn
    signature = inspect.signature(fn)
    return spaces.GPU(duration=lambda *args, **kwargs: handler_seconds(signature.bind(*args, **kwargs).arguments))(fn)
