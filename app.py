"""The DiMR demo: pick a model, classes, guidance and steps; see the samples, real shapes beside them, what every
resolution branch predicts, and how often the tiny DiMR and a single-transformer baseline distort.

UI only: requests are checked, sampled and judged by `dimr.demo`, the one module of the package this file uses.
`python app.py` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change that); DIMR_MODEL and
DIMR_DEVICE choose the default model and the device. The main actions are also the API endpoints `/generate` and
`/compare` (gradio_client), with the same checks.
"""

import collections
import hashlib
import inspect
import io
import logging
import os
import random
import tempfile
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from dimr import demo, imagenet_compare

try:
    import spaces  # Hugging Face ZeroGPU attaches a GPU only while a function wrapped in spaces.GPU runs
except ImportError:
    spaces = None

log = logging.getLogger("dimr.app")


def on_gpu(fn):
    """Under ZeroGPU, ask for as much GPU time as the request's size needs (dimr.batching.gpu_seconds)."""
    if spaces is None:
        return fn
    signature = inspect.signature(fn)

    def duration(*args, **kwargs):
        call = signature.bind(*args, **kwargs).arguments  # compare() samples two tiny models in turn
        runs = 1 if "model" in call else 2
        return min(demo.GPU_SECONDS_MAX, runs * demo.gpu_seconds(call.get("model", demo.TINY_DIMR), call["classes"],
                                                       call["images_per_class"], call["num_inference_steps"]))

    return spaces.GPU(duration=duration)(fn)


def lab_rate(name):
    """'10.0% (50 of 500 samples)' from the distortion stored with a bundled model, or 'not measured yet'."""
    result = demo.measured_distortion(name)
    if result is None:
        return "not measured yet"
    return f"{100 * result['rate']:.1f}% ({result['flagged']} of {result['samples']} samples)"


def intro():
    return f"""
# DiMR: where fine detail comes from, branch by branch
[DiMR](https://arxiv.org/abs/2406.09416) (NeurIPS 2024) is a diffusion model built against **distortion**: fine
detail that comes out lost or broken because a transformer sees the image as large patches (here 4x4 pixels
per token) and must paint everything inside a patch at once. DiMR lets the transformer lay out the coarse image
and adds convolutional branches at 2x and 4x the resolution that draw the detail.

**What to look for:** rings with gaps, stars with missing points, blobby triangles, stripes and checkerboards that
lose their rhythm, blocks at the 4x4 patch borders. Compare each sample with the real shape beside it.

**How often:** a judge trained on real images flags 29.2% of DiMR's ImageNet samples as distorted in the paper
(DiT 71.0%, U-ViT 63.5%). In this lab a classifier trained on real shapes flags as misdrawn: tiny DiMR
{lab_rate(demo.TINY_DIMR)}; the same-size single-transformer baseline {lab_rate(demo.TINY_BASELINE)} (tab
*Compare*). The tiny models run on a CPU; the released ImageNet models download on first use.
"""


PANEL_HELP = """
**Branch panel.** One row per image, after the chosen step: what each branch believes the clean image is (lowest
resolution first, enlarged without smoothing so you see its grid), then the final output. Early on only the coarse
transformer has a layout. Switch to *what each finer branch changes* to see where detail is added (mid-grey: no
change; lighter or darker: the branch brightens or darkens there); a finer branch can also undo detail the coarse
one had. The slider goes back in time without running the model again.
"""
COMPARE_HELP = """
The tiny DiMR (an 8x8-token transformer plus convolutional branches at 16x16 and 32x32) and a baseline of the same
size and cost (the transformer alone, predicting each 4x4-pixel patch from its token), trained the same way, sampled
from the **same noise**, classes and settings. A classifier trained on real shapes judges every sample: *recognised*
(✓) or *misdrawn* (✗), with its probability p of the class asked for (misdrawn below 0.5). One run is a handful of
samples; the table below gives each model's measured rate per class.
"""
CSS = """
.pixelated img { image-rendering: pixelated; }
.note { font-size: 0.9em; color: var(--body-text-color-subdued); }
#generate-button, #compare-button { min-height: 3em; }
/* Images shrink with narrow screens instead of leaving their container (Gradio's columns are at least 100 px), and
   captions sit under the image, wrapped, never cut: branch names and verdicts are the point of the labels. */
.pixelated .grid-container { grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
                             grid-template-rows: none !important; grid-auto-rows: auto !important;
                             padding-top: 2.4em !important; }
.pixelated .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex;
                             flex-direction: column; }
.pixelated .thumbnail-lg > img { aspect-ratio: 1; height: auto !important; }
.pixelated .caption-label { position: static !important; max-width: none !important; white-space: normal !important;
                            overflow: visible !important; overflow-wrap: anywhere; opacity: 1 !important;
                            border: none !important; border-radius: 0 !important; text-align: center !important;
                            padding: 2px !important; font-size: 0.8rem !important; }
/* The step slider stays in view while the rows it moves are scrolled through. */
#panel-controls { position: sticky; top: 0; z-index: 5; background: var(--background-fill-primary); }
"""
THEME = gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"])
APP_LIMITS = f"at most {demo.MAX_IMAGES} images and {demo.MAX_STEPS} steps per request"
# Requests handed to dimr.demo at once; it samples those that wait together in shared runs (dimr.batching).
CONCURRENT_REQUESTS = 32


# The API's handlers (generate, compare) return plain values only, never gr.update / gr.skip / components for
# non-State outputs: for each of those Gradio 6.31 builds a component that it keeps in the session's config, so a
# long-lived client session grew by about 80 KB per request. Layout updates run in browser-only events instead.

# The message of each browser session's last refused request, shown in its status line by a failure event. API
# clients never trigger that event, so only the latest sessions are kept.
_refusals = collections.OrderedDict()
MAX_REFUSALS = 256


def checked(visitor, fn, *args, **kwargs):
    """Call fn; a bad request or an unavailable model becomes a gr.Error with the clear message it carries, logged
    as one line (a refused request is the visitor's mistake or the operator's to-do, not a crash)."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError; OSError: files, downloads
        message = str(err)
        log.warning("refused: %s", " ".join(message.split()))
        if visitor is not None and visitor.session_hash:
            _refusals[visitor.session_hash] = message
            _refusals.move_to_end(visitor.session_hash)
            while len(_refusals) > MAX_REFUSALS:
                _refusals.popitem(last=False)
        raise gr.Error(message, title="Cannot generate", print_exception=False) from None


def last_refusal(visitor: gr.Request):
    """The status line after a failed run: the reason stays there until the next action."""
    return f"**Could not run:** {_refusals.pop(visitor.session_hash, 'see the message above')}"


def inputs_for(fn, components):
    """The components for fn's parameters, matched by name: Gradio passes inputs by position, so the order is taken
    from fn's signature and cannot silently differ from it."""
    return [components[name] for name in inspect.signature(fn).parameters if name in components]


def cached_png(image):
    """A PIL image as a PNG file in Gradio's cache, written once under its content hash and renamed into place.

    Gradio's own save rewrites the file for every request that produces the same image (same seed, classes and
    settings); a browser or client fetching it meanwhile receives an empty file."""
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    data = buffer.getvalue()
    path = Path(get_upload_folder()) / "dimr" / hashlib.sha256(data).hexdigest() / "image.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as partial:
            partial.write(data)
        os.replace(partial.name, path)
    return str(path)


def as_files(captioned_images):
    return [(cached_png(image), caption) for image, caption in captioned_images]


def sample(request, progress, visitor):
    """Yield ('preview', captioned images) while sampling, then ('done', Generation)."""
    progress(0, desc=f"Loading {request.model} (the first use of a released model downloads it)")
    updates = checked(visitor, demo.stream, request)
    while True:
        update = checked(visitor, next, updates, None)
        if update is None:
            return
        if isinstance(update, demo.Progress):
            progress((update.step, update.total), desc=f"Sampling with {request.model}", unit="steps")
            yield "preview", as_files((demo.enlarge(image), f"{caption} · step {update.step}/{update.total}")
                                      for image, caption in zip(update.preview, request.captions))
        else:
            yield "done", update


@on_gpu
def generate(model, classes, images_per_class, guidance_scale, guidance_schedule, guidance_power,
             num_inference_steps, seed, sampler, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """Sample images_per_class images of each class. Returns the samples, the branch panel after the last step
    (per image: each branch's clean-image estimate, lowest resolution first, then the final image), the step
    shown in the panel, and a status line."""
    request = checked(visitor, demo.Request.check, model=model, classes=classes, images_per_class=images_per_class,
                      guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                      guidance_power=guidance_power, num_inference_steps=num_inference_steps, seed=seed,
                      sampler=sampler)
    steps = request.num_inference_steps
    for kind, value in sample(request, progress, visitor):
        if kind == "preview":  # the panel of the previous run is cleared: it will belong to this one
            yield value, [], steps, f"Sampling with {request.model}…", gr.skip()
        else:
            yield as_files(value.gallery()), as_files(value.branch_panel()), steps, demo.describe(value), value


def fit_panel(generation, view):
    """After a run (browser only, not part of the API): the panel in the chosen view, its columns, the step slider,
    and the real shapes of the samples' classes beside them (shapes models)."""
    steps = generation.request.num_inference_steps
    shapes = demo.is_shapes_model(generation.request.model)
    references = as_files(demo.reference_shapes(generation.request.labels)) if shapes else []
    return (gr.update(value=as_files(generation.branch_panel(view=view)), columns=generation.columns),
            gr.update(maximum=steps, value=steps, interactive=steps > 1),
            f"Branch panel after step {steps} of {steps}.", gr.update(value=references, visible=shapes))


def show_step(generation, step, view):
    """The branch panel after another step of the last generation (from what it kept; nothing is re-run)."""
    if generation is None:  # nothing generated yet: the panel stays empty
        return gr.skip(), gr.skip()
    shown = generation.panel_step(step)
    note = "" if shown == step else f" (nearest step with branch images: {shown})"
    return (as_files(generation.branch_panel(shown, view)),
            f"Branch panel after step {shown} of {generation.request.num_inference_steps}{note}.")


def verdict_count(generation):
    misdrawn = sum(flagged for flagged, _ in demo.verdicts(generation))
    return f"the judge finds {misdrawn} of {len(generation.captions)} misdrawn"


@on_gpu
def compare(classes, images_per_class, guidance_scale, guidance_schedule, guidance_power, num_inference_steps, seed,
            sampler, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """Sample the tiny DiMR and the single-resolution baseline with the same classes, noise and settings; every
    final sample is captioned with the judge's verdict: 'ring ✓ recognised, p 0.97' or 'ring ✗ misdrawn, p 0.12'."""
    requests = [checked(visitor, demo.Request.check, model=name, classes=classes, images_per_class=images_per_class,
                        guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                        guidance_power=guidance_power, num_inference_steps=num_inference_steps, seed=seed,
                        sampler=sampler, max_images=demo.MAX_COMPARE_IMAGES)
                for name in (demo.TINY_DIMR, demo.TINY_BASELINE)]
    galleries, lines = [[], []], []
    for k, request in enumerate(requests):
        for kind, value in sample(request, progress, visitor):
            if kind == "preview":
                galleries[k] = value
            else:
                galleries[k] = as_files(demo.judged_gallery(value))
                lines.append(f"{demo.describe(value)}; {verdict_count(value)}")
            yield *galleries, "  \n".join(lines) or f"Sampling with {request.model}…"


def fit_compare(images_per_class):
    """After a comparison (browser only): one row per class in both galleries."""
    row = gr.update(columns=images_per_class)
    return row, row


def compare_references(classes):
    """The real shapes of the classes chosen for Compare (browser only)."""
    if not classes:
        return []
    class_ids = checked(None, demo.Request.check, model=demo.TINY_DIMR, classes=classes,
                        max_images=demo.MAX_COMPARE_IMAGES).class_ids
    return as_files(demo.reference_shapes(class_ids))


def rates_table():
    """Markdown: each shapes class's measured distortion for both tiny models (stored with them, not recomputed)."""
    models = (demo.TINY_DIMR, demo.TINY_BASELINE)
    results = {name: demo.measured_distortion(name) for name in models}
    if None in results.values():
        missing = " and ".join(name for name, result in results.items() if result is None)
        return f"**Measured distortion per class:** not measured yet for {missing}."
    settings = results[demo.TINY_DIMR]["settings"]
    lines = [f"**Measured distortion per class** (misdrawn of samples; {settings['samples']} samples per model, "
             f"{settings['steps']} steps of {settings['sampler']}, guidance {settings['guidance']:g}, "
             f"seed {settings['seed']}; lower is better)", "",
             "| class | tiny DiMR | baseline |", "|---|---|---|"]
    for name in results[demo.TINY_DIMR]["per_class"]:
        cells = [f"{f}/{n} ({100 * f / n:.0f}%)" for f, n in (results[m]["per_class"][name] for m in models)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(f"| **all** | {' | '.join(f'**{lab_rate(m)}**' for m in models)} |")
    return "\n".join(lines)


def on_model_change(model, classes, previous):
    """A new model: its classes (the chosen ones kept when it has the same classes), note, and default settings."""
    labels = checked(None, demo.model_labels, model)
    keep = previous is not None and demo.same_classes(model, previous) and classes
    return (gr.update(choices=demo.class_choices(model), value=classes if keep else demo.default_classes(model),
                      label=f"Classes ({len(labels)}; type to search names and synonyms)"),
            model_note(model), demo.default_guidance(model), demo.default_steps(model), model)


def model_note(model):
    return f"{demo.model_description(model)}. Device: {demo.device()}; {APP_LIMITS}."


def pick_random_classes(model, classes):
    count = len(classes) if isinstance(classes, list) and classes else 4
    return checked(None, demo.random_classes, model, count, random.Random())


# ---- ImageNet side by side: DiT-XL/2 and DiMR-XL/2R from the same noise (dimr.imagenet_compare) ----

IMAGENET_HELP = f"""
The paper's claim on real images: **{imagenet_compare.DIT_NAME}** (diffusers' DiT, 16x16 tokens of 2x2 latent
patches) and **DiMR** ({imagenet_compare.imagenet_dimr_model()}) sample the same classes from **one and the same
initial noise tensor**, each with its own published settings (DiMR: dpm-solver-3s, guidance 1.4; DiT: its repo's
scheduler (DDIM), its own guidance on the noise channels, 4.0). Paper, ImageNet 256: distortion rate DiT-XL/2 71.0%,
DiMR-XL/2R 29.2%; FID 2.27 and 1.70. *Patch grid* draws DiT's token borders on its images: look for breaks there.
"""


def imagenet_note():
    missing = imagenet_compare.missing_weights()
    where = (f"Not downloaded yet: {'; '.join(missing)}. The first comparison downloads them (needs the internet); "
             "offline it stops at once and says what to copy where." if missing else "Weights: at hand.")
    speed = ("On a CPU a comparison takes many minutes (the status shows the estimate before sampling starts)."
             if demo.device().type == "cpu" else f"Device: {demo.device()}.")
    return f"{where} {speed}"


@on_gpu
def compare_imagenet(classes, images_per_class, num_inference_steps, seed, dimr_guidance_scale, dit_guidance_scale,
                     patch_grid, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """DiMR and DiT-XL/2 from the same initial noise and classes. Returns DiMR's samples, DiT's samples, DiMR's
    branch panel after the last step (per image: each branch's estimate, then the final image) and a status line."""
    request = checked(visitor, imagenet_compare.Request.check, classes, images_per_class, num_inference_steps, seed,
                      dimr_guidance_scale, dit_guidance_scale, patch_grid)
    progress(0, desc="Loading both models (the first use downloads them)")
    pipes = checked(visitor, imagenet_compare.load, request)
    wait = ""
    if demo.device().type == "cpu":
        wait = (f"On this CPU this comparison takes "
                f"{imagenet_compare.wait_note(imagenet_compare.estimate_seconds(request, *pipes))}. ")
    yield [], [], [], wait + "Sampling…"
    updates, dimr_preview = imagenet_compare.stream(request), []
    while (update := checked(visitor, next, updates, None)) is not None:
        if isinstance(update, imagenet_compare.Progress):
            progress((update.step, update.total), desc=f"{wait}Sampling with {update.model}", unit="steps")
            if update.preview is not None:
                dimr_preview = as_files((demo.enlarge(image), caption)
                                        for image, caption in zip(update.preview, request.dimr.captions))
            yield dimr_preview, [], [], f"{wait}Sampling with {update.model}: step {update.step} of {update.total}…"
        else:
            yield (as_files(update.dimr.gallery()), as_files(update.dit_gallery()),
                   as_files(update.dimr.branch_panel()), imagenet_compare.describe(update))


def imagenet_tab():
    """The ImageNet comparison tab and its API endpoint /compare_imagenet."""
    dimr_model = imagenet_compare.imagenet_dimr_model()
    with gr.Tab("ImageNet: DiT vs DiMR", elem_id="imagenet-tab"):
        gr.Markdown(IMAGENET_HELP)
        gr.Markdown(imagenet_note(), elem_classes="note", elem_id="imagenet-note")
        classes = gr.Dropdown(demo.class_choices(dimr_model), value=demo.default_classes(dimr_model)[:2],
                              multiselect=True, allow_custom_value=True, label="Classes (ImageNet)")
        with gr.Row():
            per_class = gr.Slider(1, 4, value=1, step=1, label="Images per class")
            steps = gr.Slider(1, demo.MAX_STEPS, value=imagenet_compare.DEFAULT_STEPS, step=1, label="Steps")
            seed = gr.Number(0, precision=0, minimum=0, maximum=demo.MAX_SEED, label="Seed (the shared noise)")
        with gr.Row():
            dimr_guidance = gr.Slider(0, 10, value=imagenet_compare.DIMR_GUIDANCE, step=0.1, label="DiMR guidance")
            dit_guidance = gr.Slider(0, 10, value=imagenet_compare.DIT_GUIDANCE, step=0.1, label="DiT guidance")
            patch_grid = gr.Checkbox(False, label="Patch grid (DiT's 16x16 tokens)")
        button = gr.Button("Compare (same noise, same classes)", variant="primary", elem_id="imagenet-button")
        status = gr.Markdown("", label="status", elem_id="imagenet-status")
        with gr.Row():
            dimr_gallery = gr.Gallery(label=dimr_model, columns=2, height="fit-content", format="png",
                                      elem_id="imagenet-dimr")
            dit_gallery = gr.Gallery(label=imagenet_compare.DIT_NAME, columns=2, height="fit-content", format="png",
                                     elem_id="imagenet-dit")
        panel = gr.Gallery(label="What each DiMR branch predicts (last step)", columns=3, height="fit-content",
                           format="png", elem_classes="pixelated", elem_id="imagenet-panel")
    compared = button.click(compare_imagenet, [classes, per_class, steps, seed, dimr_guidance, dit_guidance,
                                               patch_grid], [dimr_gallery, dit_gallery, panel, status],
                            api_name="compare_imagenet", preprocess=False, concurrency_id="device", concurrency_limit=1)
    compared.failure(last_refusal, None, status, api_visibility="private")


def build():
    model = demo.default_model()
    shapes_model = demo.TINY_DIMR
    gallery_style = dict(height="fit-content", format="png", object_fit="contain", elem_classes="pixelated",
                         buttons=["download", "fullscreen"])
    with gr.Blocks(title="DiMR demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(intro(), elem_id="intro")
        generation = gr.State(time_to_live=3600)
        classes_model = gr.State(model)  # the model whose classes the class picker holds
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                model_box = gr.Dropdown(demo.model_choices(), value=model, label="Model", elem_id="model")
                model_info = gr.Markdown(model_note(model), elem_classes="note")
                class_box = gr.Dropdown(demo.class_choices(model), value=demo.default_classes(model),
                                        multiselect=True, allow_custom_value=True, elem_id="classes",
                                        label=f"Classes ({len(demo.model_labels(model))}; type to search names "
                                              "and synonyms)")
                with gr.Row():
                    per_class = gr.Slider(1, demo.MAX_IMAGES, value=1, step=1, label="Images per class", scale=3,
                                          elem_id="images-per-class")
                    random_button = gr.Button("Random classes", size="sm", scale=1, min_width=100)
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                gr.Markdown("### Sampling")
                guidance_scale = gr.Slider(0, 10, value=demo.default_guidance(model), step=0.1,
                                           label="Guidance scale", elem_id="guidance",
                                           info="1 = no guidance; starts at the paper's 1.4 for ImageNet models, "
                                                "3 for the shapes models")
                with gr.Row():
                    schedule = gr.Radio(list(demo.GUIDANCE_SCHEDULES), value="constant", label="Guidance schedule",
                                        info="power-cosine rises from 1 at pure noise to the scale", scale=3)
                    power = gr.Slider(0.1, 4, value=1.0, step=0.1, label="Power", info="of power-cosine", scale=2,
                                      interactive=False)
                steps = gr.Slider(1, demo.MAX_STEPS, value=demo.default_steps(model), step=1, label="Steps",
                                  info="model evaluations", elem_id="steps")
                with gr.Row():
                    sampler = gr.Dropdown(demo.SAMPLERS, value=demo.DEFAULT_SAMPLER, label="Sampler", scale=2)
                    seed = gr.Number(0, precision=0, minimum=0, maximum=demo.MAX_SEED, label="Seed", scale=2)
                    dice = gr.Button("Random seed", size="sm", scale=1, min_width=90)
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Generate"):
                        status = gr.Markdown("Pick classes and press **Generate**.", label="status", elem_id="status")
                        gallery = gr.Gallery(label="Samples", columns=4, elem_id="gallery", **gallery_style)
                        references = gr.Gallery(label="Real shapes: what each sample should look like", columns=4,
                                                elem_id="references", visible=False, **gallery_style)
                        gr.Markdown(PANEL_HELP)
                        with gr.Group(elem_id="panel-controls"):
                            panel_view = gr.Radio([("each branch's estimate", demo.ESTIMATES),
                                                   ("what each finer branch changes", demo.CHANGES)],
                                                  value=demo.ESTIMATES, label="Branch panel shows",
                                                  elem_id="panel-view")
                            step_slider = gr.Slider(1, 25, value=25, step=1, interactive=False, elem_id="panel-step",
                                                    label="Branch panel: after step")
                            panel_note = gr.Markdown("", elem_id="panel-note")
                        panel = gr.Gallery(label="What each branch predicts", columns=4, elem_id="branch-panel",
                                           **gallery_style)
                    with gr.Tab("Compare", elem_id="compare-tab"):
                        gr.Markdown(COMPARE_HELP)
                        shapes_classes = len(demo.model_labels(shapes_model))
                        compare_classes = gr.Dropdown(demo.class_choices(shapes_model),
                                                      value=list(range(shapes_classes)),
                                                      multiselect=True, label="Classes (shapes)",
                                                      elem_id="compare-classes")
                        compare_per_class = gr.Slider(1, demo.MAX_COMPARE_IMAGES // shapes_classes, value=3, step=1,
                                                      label="Samples per class", elem_id="compare-per-class")
                        compare_button = gr.Button("Compare (same noise, classes and settings)", variant="primary",
                                                   elem_id="compare-button")
                        compare_status = gr.Markdown("", label="status", elem_id="compare-status")
                        references_box = gr.Gallery(compare_references(compare_classes.value), columns=5,
                                                    label="Real shapes: what each class should look like",
                                                    elem_id="compare-references", **gallery_style)
                        with gr.Row():
                            dimr_gallery = gr.Gallery(label="tiny DiMR", columns=3, elem_id="compare-dimr",
                                                      **gallery_style)
                            baseline_gallery = gr.Gallery(label="baseline: transformer only", columns=3,
                                                          elem_id="compare-baseline", **gallery_style)
                        gr.Markdown(rates_table(), elem_id="compare-rates")
                    imagenet_tab()

        settings = dict(images_per_class=per_class, guidance_scale=guidance_scale, guidance_schedule=schedule,
                        guidance_power=power, num_inference_steps=steps, seed=seed, sampler=sampler)
        # preprocess=False: the handlers get the raw values, so API callers see the pipeline's own messages
        # (which value, what is allowed) instead of a generic component error.
        generated = generate_button.click(generate, inputs_for(generate, {**settings, "model": model_box,
                                                                          "classes": class_box}),
                                          [gallery, panel, step_slider, status, generation], api_name="generate",
                                          preprocess=False, concurrency_id="device",
                                          concurrency_limit=CONCURRENT_REQUESTS)
        generated.success(fit_panel, [generation, panel_view], [panel, step_slider, panel_note, references],
                          api_visibility="private")
        generated.failure(last_refusal, None, status, api_visibility="private")
        compared = compare_button.click(compare, inputs_for(compare, {**settings, "classes": compare_classes,
                                                                      "images_per_class": compare_per_class}),
                                        [dimr_gallery, baseline_gallery, compare_status], api_name="compare",
                                        preprocess=False, concurrency_id="device",
                                        concurrency_limit=CONCURRENT_REQUESTS)
        compared.success(fit_compare, compare_per_class, [dimr_gallery, baseline_gallery], api_visibility="private")
        compare_classes.change(compare_references, compare_classes, references_box, api_visibility="private")
        compared.failure(last_refusal, None, compare_status, api_visibility="private")
        for control in (step_slider.input, panel_view.change):
            control(show_step, [generation, step_slider, panel_view], [panel, panel_note], api_visibility="private",
                    trigger_mode="always_last", concurrency_limit=4)
        model_box.change(on_model_change, [model_box, class_box, classes_model],
                         [class_box, model_info, guidance_scale, steps, classes_model], api_visibility="private")
        random_button.click(pick_random_classes, [model_box, class_box], class_box, api_visibility="private")
        dice.click(lambda: random.randint(0, demo.MAX_SEED), None, seed, api_visibility="private")
        schedule.change(lambda name: gr.update(interactive=name == "power-cosine"), schedule, power,
                        api_visibility="private")
    return blocks


app = build()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if spaces is not None:
        demo.load(demo.default_model())  # ZeroGPU: weights are placed on the GPU at start-up, outside requests
    else:
        demo.warm_up(demo.default_model())  # in the background: the app answers meanwhile
    app.queue(max_size=64).launch(theme=THEME, css=CSS, show_error=True)
