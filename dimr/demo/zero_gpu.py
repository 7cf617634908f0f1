"""ZeroGPU device time: how many seconds of GPU to ask `spaces.GPU` for, per request, before it runs (a shorter grant
queues sooner, and a request that outlives its grant is cut off).

    @on_gpu                           # on a ZeroGPU Space (the `spaces` package present): spaces.GPU, priced per call
    def generate(model, classes, images_per_class, num_inference_steps, ...): ...
    handler_seconds({"model": "DiMR-XL/2R", "classes": [1, 2], "images_per_class": 2, "num_inference_steps": 50})

The price is the committed H200 measurement (benchmarks/results/nvidia-h200.json, bf16 without compilation as
ZeroGPU samples: dimr.demo.serving.acceleration_mode) read by dimr.demo.timing at the request's network batch: twice
its images when guided, every evaluation of its sampler (Heun: 2N - 1 for N steps), its branch panel's decodes. A
model other than the measured one costs the measured one's time times its share of FLOPs per forward, never less.
The request's own checks run later, inside the grant; here a value they will refuse counts as the largest allowed
(dimr.demo.limits), so the estimate never fails.
"""

import inspect

import torch

from dimr.demo import timing
from dimr.demo.catalogue import TINY_DIMR, model_branches, model_choices, model_outline
from dimr.demo.limits import MAX_IMAGES, MAX_STEPS
from dimr.demo.panel import MAX_PANEL_STEPS_LATENT
from dimr.sampling import caches
from dimr.sampling.pipeline import DEFAULT_SAMPLER, SAMPLERS, model_evaluations

ZERO_GPU_DEVICE = "nvidia-h200.json"  # the GPU ZeroGPU lends
MODE = "ours_bf16_eager"
FIXED_SECONDS = 10  # attaching the GPU, moving the weights there
MARGIN = 2
MAX_SECONDS = 120


def gpu_seconds(model, classes, images_per_class, num_inference_steps, sampler=DEFAULT_SAMPLER, guidance_scale=None):
    """The GPU time for one sampling run of a request, from its raw (unchecked) arguments."""
    def bounded(value, high):
        return min(max(int(value), 1), high) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else high

    images = bounded(len(classes) if isinstance(classes, (list, tuple)) else 1, MAX_IMAGES) * \
        bounded(images_per_class, MAX_IMAGES)
    images, steps = min(images, MAX_IMAGES), bounded(num_inference_steps, MAX_STEPS)
    samplers = [sampler] if isinstance(sampler, str) and sampler in SAMPLERS else SAMPLERS
    evaluations = max(model_evaluations(name, steps) for name in samplers)
    guided = guidance_scale != 1  # a value the checks will refuse counts as guided
    # The branch panel decodes every branch at each panel step, then the final images.
    decodes = images * (branch_count(model) * min(steps, MAX_PANEL_STEPS_LATENT) + 1)
    rates = timing.committed_rates(timing.results_dir() / ZERO_GPU_DEVICE, MODE)
    work = rates.seconds(images, evaluations, guided, decodes) * flops_share(model)
    return min(MAX_SECONDS, round(FIXED_SECONDS + MARGIN * work))


def flops_share(model):
    """A model's FLOPs per forward over those of the model the H200 measured, at least 1 (a smaller network is no
    faster at the measured batches: their time is the GPU's per-step overhead); for a name the checks will refuse,
    the largest of the offered models."""
    def flops(name):
        outline = model_outline(name)
        shape = (1, outline.config.channels, outline.sample_size, outline.sample_size)
        return timing.forward_flops(outline, lambda m: m(torch.zeros(shape), torch.tensor([500.0]),
                                                           torch.tensor([0])))

    measured = timing.measured_model(timing.results_dir() / ZERO_GPU_DEVICE)
    names = [model] if model in model_choices() else model_choices()
    return caches.remembered(("flops share", tuple(names), measured),
                             lambda: max(1.0, max(flops(name) for name in names) / flops(measured)))


def branch_count(model):
    """The model's branches; for a name the checks will refuse, the most any offered model has."""
    names = [model] if model in model_choices() else model_choices()
    return max(len(model_branches(name)) for name in names)


def handler_seconds(arguments):
    """The GPU time for one call of an app handler, from its arguments by name: a handler with a `model` samples it
    once; one without (Compare: both tiny models in turn) samples twice."""
    runs = 1 if "model" in arguments else 2
    return min(MAX_SECONDS, runs * gpu_seconds(arguments.get("model", TINY_DIMR), arguments["classes"],
                                               arguments["images_per_class"], arguments["num_inference_steps"],
                                               arguments.get("sampler", DEFAULT_SAMPLER),
                                               arguments.get("guidance_scale", arguments.get("dimr_guidance_scale"))))


def on_gpu(fn):
    """fn wrapped in spaces.GPU, asking for the time its arguments need, where the `spaces` package is present (a
    ZeroGPU Space attaches a GPU only while such a function runs); elsewhere fn itself."""
    try:
        import spaces
    except ImportError:
        return fn
    signature = inspect.signature(fn)
    return spaces.GPU(duration=lambda *args, **kwargs: handler_seconds(signature.bind(*args, **kwargs).arguments))(fn)
