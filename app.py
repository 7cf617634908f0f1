"""The DiMR demo: pick a model, classes, guidance and steps; see the samples, real shapes beside them, what every
resolution branch predicts, and how often the tiny DiMR and a single-transformer baseline distort.

UI only, one function per tab; the package does the work. `python app.py` serves on 127.0.0.1:7860 (settings:
docs/serving.md); the main actions are also the API endpoints `/generate`, `/compare` and `/compare_imagenet`.
"""

import collections
import hashlib
import inspect
import io
import logging
import random
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from dimr import catalogue, imagenet_compare, lab, limits, serving
from dimr.atomic import replaced_atomically
from dimr.dit import DIT_GUIDANCE, DIT_NAME
from dimr.panel import CHANGES, ESTIMATES
from dimr.pipeline import DEFAULT_SAMPLER, GUIDANCE_SCHEDULES, SAMPLERS
from dimr.request import Request
from dimr.zero_gpu import on_gpu

log = logging.getLogger("dimr.app")
ROOT = Path(__file__).resolve().parent
THEME = gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"])
GALLERY = dict(height="fit-content", format="png", object_fit="contain", elem_classes="pixelated",
               buttons=["download", "fullscreen"])
PRIVATE = dict(api_visibility="private")  # browser-only events: not part of the API
CONCURRENT_REQUESTS = 32  # handed to dimr.serving at once: it samples those that wait together in shared runs

# The API's handlers get raw values (preprocess=False), so API callers see the pipeline's own messages (which value,
# what is allowed) instead of a generic component error. They return plain values only, never gr.update / gr.skip /
# components for non-State outputs: for each of those Gradio 6.31 builds a component that it keeps in the session's
# config, so a long-lived client session grew with every request. Layout updates run in browser-only events.

# The message of each browser session's last refused request, shown in its status line by a failure event. API
# clients never trigger that event, so only the latest sessions are kept.
_refusals = collections.OrderedDict()
MAX_REFUSALS = 256


def checked(visitor, fn, *args, **kwargs):
    """fn(...); a bad request or an unavailable model becomes a gr.Error with its clear message, logged as one line."""
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


def last_refusal(visitor: gr.Request = None):
    """The status line after a failed run: the reason stays there until the next action."""
    return f"**Could not run:** {_refusals.pop(visitor.session_hash, 'see the message above')}"


def on(trigger, fn, components, outputs, **options):
    """trigger(fn, inputs, outputs), fn's inputs taken from `components` by its parameters' names (not by position)."""
    parameters = inspect.signature(fn).parameters.items()
    inputs = [components[name] for name, p in parameters if name in components or p.default is p.empty]
    return trigger(fn, inputs, outputs, **options)


def cached_png(image):
    """A PIL image as a PNG file in Gradio's cache, written once per content (Gradio's own save rewrites the file for
    every equal request, and a client fetching it meanwhile gets it empty)."""
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    path = Path(get_upload_folder()) / "dimr" / hashlib.sha256(buffer.getvalue()).hexdigest() / "image.png"
    if not path.exists():
        with replaced_atomically(path) as partial:
            partial.write_bytes(buffer.getvalue())
    return str(path)


def as_files(captioned_images):
    return [(cached_png(image), caption) for image, caption in captioned_images]


def controls(arguments):
    """A handler's own arguments (its locals() on entry) without Gradio's progress and request: the controls."""
    return {name: value for name, value in arguments.items() if name not in ("progress", "visitor")}


def text(name, **values):
    """A text of the page, from assets/text/NAME.md, with its {placeholders} filled in."""
    return (ROOT / "assets" / "text" / f"{name}.md").read_text().format(**values)


def sample(request, progress, visitor):
    """Yield ('preview', captioned image files) while sampling, then ('done', Generation)."""
    progress(0, desc=f"Loading {request.model} (the first use of a released model downloads it)")
    updates = checked(visitor, serving.stream, request)
    while (update := checked(visitor, next, updates, None)) is not None:
        if isinstance(update, serving.Progress):
            progress((update.step, update.total), desc=f"Sampling with {request.model}", unit="steps")
            yield "preview", as_files(update.gallery())
        else:
            yield "done", update


# ---- the settings column: model, classes and sampling, used by the Generate and Compare tabs ----
def class_picker(model, classes):
    label = f"Classes ({len(catalogue.model_labels(model))}; type to search names and synonyms)"
    return dict(choices=catalogue.model_labels(model).choices(), value=classes, label=label)


def on_model_change(model, classes, classes_model):
    """A new model: its classes (the chosen ones kept when it has the same classes), note, and default settings."""
    checked(None, catalogue.check_model, model)
    keep = classes_model is not None and catalogue.same_classes(model, classes_model) and classes
    return (gr.update(**class_picker(model, classes if keep else catalogue.default_classes(model))),
            serving.model_note(model), catalogue.default_guidance(model), catalogue.default_steps(model), model)


def pick_random_classes(model, classes):  # as many classes as are chosen, 4 when none is
    return checked(None, catalogue.random_classes, model, len(classes or []) or 4, random.Random())


def settings_column():
    """The model, classes and sampling settings and the Generate button; returns the components by name."""
    model = catalogue.default_model()
    c = dict(model=gr.Dropdown(catalogue.model_choices(), value=model, label="Model", elem_id="model"),
             model_note=gr.Markdown(serving.model_note(model), elem_classes="note"),
             classes_model=gr.State(model))  # the model whose classes the class picker holds
    c["classes"] = gr.Dropdown(**class_picker(model, catalogue.default_classes(model)), multiselect=True,
                               allow_custom_value=True, elem_id="classes")
    with gr.Row():
        c["images_per_class"] = gr.Slider(1, limits.MAX_IMAGES, value=1, step=1, label="Images per class", scale=3,
                                          elem_id="images-per-class")
        random_classes = gr.Button("Random classes", size="sm", scale=1, min_width=100)
    c["generate_button"] = gr.Button("Generate", variant="primary", elem_id="generate-button")
    gr.Markdown("### Sampling")
    c["guidance_scale"] = gr.Slider(0, limits.MAX_GUIDANCE, value=catalogue.default_guidance(model), step=0.1,
                                    label="Guidance scale", elem_id="guidance", info="1 = no guidance; starts at "
                                    "the paper's 1.4 for ImageNet models, 3 for the shapes models")
    with gr.Row():
        c["guidance_schedule"] = gr.Radio(list(GUIDANCE_SCHEDULES), value="constant", label="Guidance schedule",
                                          info="power-cosine rises from 1 at pure noise to the scale", scale=3)
        c["guidance_power"] = gr.Slider(0.1, 4, value=1.0, step=0.1, label="Power", info="of power-cosine", scale=2,
                                        interactive=False)
    c["num_inference_steps"] = gr.Slider(1, limits.MAX_STEPS, value=catalogue.default_steps(model), step=1,
                                         label="Steps", info="model evaluations", elem_id="steps")
    with gr.Row():
        c["sampler"] = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler", scale=2)
        c["seed"] = gr.Number(0, precision=0, minimum=0, maximum=limits.MAX_SEED, label="Seed", scale=2)
        dice = gr.Button("Random seed", size="sm", scale=1, min_width=90)

    on(c["model"].change, on_model_change, c, [c["classes"], c["model_note"], c["guidance_scale"],
                                                c["num_inference_steps"], c["classes_model"]], **PRIVATE)
    on(random_classes.click, pick_random_classes, c, c["classes"], **PRIVATE)
    dice.click(lambda: random.randint(0, limits.MAX_SEED), None, c["seed"], **PRIVATE)
    c["guidance_schedule"].change(lambda schedule: gr.update(interactive=schedule == "power-cosine"),
                                  c["guidance_schedule"], c["guidance_power"], **PRIVATE)
    return c


# ---- Generate: the samples, their real shapes and the branch panel ----
@on_gpu
def generate(model, classes, images_per_class, guidance_scale, guidance_schedule, guidance_power,
             num_inference_steps, seed, sampler, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """Sample images_per_class images of each class. Returns the samples, the branch panel after the last step (per
    image: each branch's estimate, lowest resolution first, then the final image), its step, and a status line."""
    request = checked(visitor, Request.check, **controls(locals()))
    steps = request.num_inference_steps
    for kind, value in sample(request, progress, visitor):
        if kind == "preview":  # the panel of the previous run is cleared: it will belong to this one
            yield value, [], steps, f"Sampling with {request.model}…", gr.skip()
        else:
            yield as_files(value.gallery()), as_files(value.branch_panel()), steps, serving.describe(value), value


def fit_panel(generation, panel_view):
    """After a run: the panel in the chosen view and columns, the step slider, and the real shapes (shapes models)."""
    steps = generation.request.num_inference_steps
    shapes = catalogue.is_shapes_model(generation.request.model)
    references = as_files(lab.reference_shapes(generation.request.labels)) if shapes else []
    return (gr.update(value=as_files(generation.branch_panel(view=panel_view)), columns=generation.columns),
            gr.update(maximum=steps, value=steps, interactive=steps > 1),
            generation.panel_note(steps), gr.update(value=references, visible=shapes))


def show_step(generation, panel_step, panel_view):
    """The branch panel after another step of the last generation (from what it kept; nothing is re-run)."""
    if generation is None:  # nothing generated yet: the panel stays empty
        return gr.skip(), gr.skip()
    return as_files(generation.branch_panel(panel_step, panel_view)), generation.panel_note(panel_step)


def generate_tab(settings):
    """The Generate tab and its API endpoint /generate (the Generate button sits in the settings column)."""
    with gr.Tab("Generate"):
        c = dict(settings, generation=gr.State(time_to_live=3600))
        c["status"] = gr.Markdown("Pick classes and press **Generate**.", label="status", elem_id="status")
        c["gallery"] = gr.Gallery(label="Samples", columns=4, elem_id="gallery", **GALLERY)
        c["references"] = gr.Gallery(label="Real shapes: what each sample should look like", columns=4,
                                     elem_id="references", visible=False, **GALLERY)
        gr.Markdown(text("branch_panel"))
        with gr.Group(elem_id="panel-controls"):
            views = [("each branch's estimate", ESTIMATES), ("what each finer branch changes", CHANGES)]
            c["panel_view"] = gr.Radio(views, value=ESTIMATES, label="Branch panel shows", elem_id="panel-view")
            c["panel_step"] = gr.Slider(1, 25, value=25, step=1, interactive=False, elem_id="panel-step",
                                        label="Branch panel: after step")
            c["panel_note"] = gr.Markdown("", elem_id="panel-note")
        c["panel"] = gr.Gallery(label="What each branch predicts", columns=4, elem_id="branch-panel", **GALLERY)

    generated = on(settings["generate_button"].click, generate, c,
                   [c["gallery"], c["panel"], c["panel_step"], c["status"], c["generation"]], api_name="generate",
                   preprocess=False, concurrency_id="device", concurrency_limit=CONCURRENT_REQUESTS)
    on(generated.success, fit_panel, c, [c["panel"], c["panel_step"], c["panel_note"], c["references"]], **PRIVATE)
    on(generated.failure, last_refusal, c, c["status"], **PRIVATE)
    for trigger in (c["panel_step"].input, c["panel_view"].change):
        on(trigger, show_step, c, [c["panel"], c["panel_note"]], trigger_mode="always_last", concurrency_limit=4,
           **PRIVATE)


# ---- Compare: the tiny DiMR and the baseline from the same noise, judged ----
@on_gpu
def compare(classes, images_per_class, guidance_scale, guidance_schedule, guidance_power, num_inference_steps, seed,
            sampler, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """Sample the tiny DiMR and the single-resolution baseline with the same classes, noise and settings; every
    final sample is captioned with the judge's verdict: 'ring ✓ recognised, p 0.97' or 'ring ✗ misdrawn, p 0.12'."""
    chosen = controls(locals())
    requests = [checked(visitor, Request.check, model=name, max_images=limits.MAX_COMPARE_IMAGES, **chosen)
                for name in (catalogue.TINY_DIMR, catalogue.TINY_BASELINE)]
    galleries, lines = [[], []], []
    for k, request in enumerate(requests):
        for kind, value in sample(request, progress, visitor):
            galleries[k] = value if kind == "preview" else as_files(lab.judged_gallery(value))
            if kind == "done":
                lines.append(f"{serving.describe(value)}; {lab.verdict_count(value)}")
            yield *galleries, "  \n".join(lines) or f"Sampling with {request.model}…"


def compare_references(classes):
    """The real shapes of the classes chosen for Compare (ids: the picker takes no typed names)."""
    return as_files(lab.reference_shapes(classes or []))


def compare_tab(settings):
    """The Compare tab and its API endpoint /compare; the sampling settings are the settings column's."""
    labels = catalogue.model_labels(catalogue.TINY_DIMR)
    with gr.Tab("Compare", elem_id="compare-tab"):
        gr.Markdown(text("compare"))
        c = dict(settings, classes=gr.Dropdown(labels.choices(), value=list(range(len(labels))), multiselect=True,
                                               label="Classes (shapes)", elem_id="compare-classes"))
        c["images_per_class"] = gr.Slider(1, limits.MAX_COMPARE_IMAGES // len(labels), value=3, step=1,
                                          label="Samples per class", elem_id="compare-per-class")
        button = gr.Button("Compare (same noise, classes and settings)", variant="primary", elem_id="compare-button")
        status = gr.Markdown("", label="status", elem_id="compare-status")
        references = gr.Gallery(compare_references(c["classes"].value), columns=5, elem_id="compare-references",
                                label="Real shapes: what each class should look like", **GALLERY)
        with gr.Row():
            dimr = gr.Gallery(label="tiny DiMR", columns=3, elem_id="compare-dimr", **GALLERY)
            baseline = gr.Gallery(label="baseline: transformer only", columns=3, elem_id="compare-baseline", **GALLERY)
        gr.Markdown(lab.rates_table(), elem_id="compare-rates")

    compared = on(button.click, compare, c, [dimr, baseline, status], api_name="compare", preprocess=False,
                  concurrency_id="device", concurrency_limit=CONCURRENT_REQUESTS)
    compared.success(lambda per_class: [gr.update(columns=per_class)] * 2,  # one row per class in both galleries
                     c["images_per_class"], [dimr, baseline], **PRIVATE)
    on(compared.failure, last_refusal, c, status, **PRIVATE)
    on(c["classes"].change, compare_references, c, references, **PRIVATE)


# ---- ImageNet: DiT-XL/2 and DiMR-XL/2R from the same noise (dimr.imagenet_compare) ----
@on_gpu
def compare_imagenet(classes, images_per_class, num_inference_steps, seed, dimr_guidance_scale, dit_guidance_scale,
                     patch_grid, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """DiMR and DiT-XL/2 from the same initial noise and classes. Returns DiMR's samples, DiT's samples, DiMR's
    branch panel after the last step (per image: each branch's estimate, then the final image) and a status line."""
    request = checked(visitor, imagenet_compare.ComparisonRequest.check, **controls(locals()))
    progress(0, desc="Loading both models (the first use downloads them)")
    wait = imagenet_compare.cpu_wait(request, *checked(visitor, imagenet_compare.load_comparison, request))
    yield [], [], [], wait + "Sampling…"
    updates, dimr_preview = imagenet_compare.stream_comparison(request), []
    while (update := checked(visitor, next, updates, None)) is not None:
        if isinstance(update, imagenet_compare.ComparisonProgress):
            progress((update.step, update.total), desc=f"{wait}Sampling with {update.model}", unit="steps")
            dimr_preview = as_files(update.dimr.gallery()) if update.dimr else dimr_preview
            yield dimr_preview, [], [], f"{wait}Sampling with {update.model}: step {update.step} of {update.total}…"
        else:
            yield (as_files(update.dimr.gallery()), as_files(update.dit_gallery()),
                   as_files(update.dimr.branch_panel()), imagenet_compare.describe_comparison(update))


def imagenet_tab():
    """The ImageNet comparison tab and its API endpoint /compare_imagenet."""
    dimr_model = imagenet_compare.imagenet_dimr_model()
    with gr.Tab("ImageNet: DiT vs DiMR", elem_id="imagenet-tab"):
        gr.Markdown(text("imagenet", dit=DIT_NAME, dimr=dimr_model, dimr_guidance=imagenet_compare.DIMR_GUIDANCE,
                         dit_guidance=DIT_GUIDANCE))
        gr.Markdown(imagenet_compare.setup_note(), elem_classes="note", elem_id="imagenet-note")
        c = dict(classes=gr.Dropdown(catalogue.model_labels(dimr_model).choices(), multiselect=True,
                                     value=catalogue.default_classes(dimr_model)[:2], allow_custom_value=True,
                                     label="Classes (ImageNet)"))
        with gr.Row():
            c["images_per_class"] = gr.Slider(1, 4, value=1, step=1, label="Images per class")
            c["num_inference_steps"] = gr.Slider(1, limits.MAX_STEPS, value=imagenet_compare.DEFAULT_STEPS, step=1,
                                                 label="Steps")
            c["seed"] = gr.Number(0, precision=0, minimum=0, maximum=limits.MAX_SEED, label="Seed (the shared noise)")
        with gr.Row():
            c["dimr_guidance_scale"] = gr.Slider(0, limits.MAX_GUIDANCE, value=imagenet_compare.DIMR_GUIDANCE,
                                                 step=0.1, label="DiMR guidance")
            c["dit_guidance_scale"] = gr.Slider(0, limits.MAX_GUIDANCE, value=DIT_GUIDANCE, step=0.1,
                                                label="DiT guidance")
            c["patch_grid"] = gr.Checkbox(False, label="Patch grid (DiT's 16x16 tokens)")
        button = gr.Button("Compare (same noise, same classes)", variant="primary", elem_id="imagenet-button")
        status = gr.Markdown("", label="status", elem_id="imagenet-status")
        with gr.Row():
            dimr = gr.Gallery(label=dimr_model, columns=2, height="fit-content", format="png", elem_id="imagenet-dimr")
            dit = gr.Gallery(label=DIT_NAME, columns=2, height="fit-content", format="png", elem_id="imagenet-dit")
        panel = gr.Gallery(label="What each DiMR branch predicts (last step)", columns=3, height="fit-content",
                           format="png", elem_classes="pixelated", elem_id="imagenet-panel")

    compared = on(button.click, compare_imagenet, c, [dimr, dit, panel, status], api_name="compare_imagenet",
                  preprocess=False, concurrency_id="imagenet", concurrency_limit=1)
    on(compared.failure, last_refusal, c, status, **PRIVATE)


def build():
    """The whole page: the header, then the settings column beside the tabs that use it."""
    with gr.Blocks(title="DiMR demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(text("intro", tiny_dimr_rate=lab.rate_text(catalogue.TINY_DIMR),  # the header, above every tab
                         tiny_baseline_rate=lab.rate_text(catalogue.TINY_BASELINE)), elem_id="intro")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                settings = settings_column()
            with gr.Column(scale=3), gr.Tabs():
                generate_tab(settings)
                compare_tab(settings)
                imagenet_tab()
    return blocks


demo = build()  # the name Gradio's reload mode and Hugging Face Spaces look for

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serving.start(catalogue.default_model())
    demo.queue(max_size=64).launch(theme=THEME, css_paths=[ROOT / "assets" / "app.css"], show_error=True)
