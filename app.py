"""The DiMR demo: pick a model, classes, guidance and steps; see the samples, real shapes beside them, what every
resolution branch predicts, and how often the tiny DiMR and a single-transformer baseline distort. UI only, one
function per tab, each tab with the settings it uses; the package does the work. `python app.py` serves on
127.0.0.1:7860 (docs/serving.md); the main actions are also the API's `/generate`, `/compare`, `/compare_imagenet`."""

import inspect
import logging
import random
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from dimr.demo import catalogue, imagenet_compare, limits, panel_film, serving, shapes_lab
from dimr.demo.dit import DIT_GUIDANCE, DIT_NAME
from dimr.demo.kept import EVICTED, held, kept
from dimr.demo.panel import CHANGES, ESTIMATES, STEP_LABEL, Generation
from dimr.demo.png_files import png_file
from dimr.demo.refusals import Refusals, explained
from dimr.demo.request import Request
from dimr.demo.zero_gpu import on_gpu
from dimr.sampling.pipeline import DEFAULT_SAMPLER, GUIDANCE_SCHEDULES, SAMPLERS

log = logging.getLogger("dimr.app")
ROOT = Path(__file__).resolve().parent
THEME = gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"])
GALLERY = dict(height="fit-content", format="png", object_fit="contain", elem_classes="pixelated",
               buttons=["download", "fullscreen"])
PRIVATE = dict(api_visibility="private")  # browser-only events: not part of the API
# The panel's browser-only updates read images already made: many at once, and never behind a sampling request.
PANEL_EVENTS = dict(concurrency_id="panel", concurrency_limit=8, **PRIVATE)
# Sampling requests and ImageNet comparisons wait in groups of their own: Gradio gives every event of a group the
# group's lowest limit, and a comparison (minutes on a CPU) runs one at a time. Up to 32 sampling requests go to
# dimr.demo.serving at once: it samples those that wait together in shared runs.
SAMPLING_EVENTS = dict(concurrency_id="sampling", concurrency_limit=32)
IMAGENET_EVENTS = dict(concurrency_id="imagenet", concurrency_limit=1)

# API handlers take raw values (preprocess=False: the checks see a value as typed; assets/app.js stops clamping) and
# return plain values, never gr.update or gr.skip for non-State outputs: Gradio 6.31 keeps one component per such
# update in the session's config. Layout updates run in browser-only events.
REFUSALS = Refusals()  # each browser session's last refused request, for its status line
UPLOADS = Path(get_upload_folder()) / "dimr"  # the page's files, in Gradio's cache


def checked(visitor, fn, *args, **kwargs):
    """fn(...); a failure becomes a gr.Error: a refusal's own message, else the server's (dimr.demo.refusals)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - every failure reaches the visitor, as a refusal or as the server's
        title, message = explained(err)
        REFUSALS.record(getattr(visitor, "session_hash", None), err)
        # A visitor's run is refused once, in its tab's status line (`refused`); the error is for API clients.
        raise gr.Error(message, title=title, visible=visitor is None, print_exception=False) from None


def refused(components):
    """A tab's failure handler: the status line says why, naming a control as the page labels it (components: the
    tab's controls by argument name); the last good results stay in place."""
    labels = {name: component.label for name, component in components.items() if getattr(component, "label", None)}
    def status_line(visitor: gr.Request = None):
        return REFUSALS.status_line(visitor.session_hash, labels)
    return status_line


def on(trigger, fn, components, outputs, **options):
    """trigger(fn, inputs, outputs), fn's inputs taken from `components` by its parameters' names (not by position)."""
    parameters = inspect.signature(fn).parameters.items()
    inputs = [components[name] for name, p in parameters if name in components or p.default is p.empty]
    return trigger(fn, inputs, outputs, **options)


def as_files(captioned_images):
    """Captioned PIL images as captioned PNG files in Gradio's cache (dimr.demo.png_files: once per content)."""
    return [(png_file(image, UPLOADS), caption) for image, caption in captioned_images]


def controls(arguments):
    """A handler's own arguments (its locals() on entry) without Gradio's progress and request: the controls."""
    return {name: value for name, value in arguments.items() if name not in ("progress", "visitor")}


def text(name, **values):
    """A text of the page, from assets/text/NAME.md, with its {placeholders} filled in."""
    return (ROOT / "assets" / "text" / f"{name}.md").read_text().format(**values)


def checked_stream(visitor, updates):
    """Each update of a generator, its failures handled as in `checked`."""
    while (update := checked(visitor, next, updates, None)) is not None:
        yield update


def sampling_settings(model, prefix=""):
    """A tab's sampling controls at a model's settings, by the request's parameter names; `prefix`: of element ids."""
    gr.Markdown("### Sampling")
    c = dict(guidance_scale=gr.Slider(0, limits.MAX_GUIDANCE, value=catalogue.default_guidance(model), step=0.1,
                                      label="Guidance scale", elem_id=f"{prefix}guidance", info="1 = no guidance; "
                                      "starts at the paper's 1.4 for ImageNet models, 3 for the shapes models"))
    with gr.Row():
        c["guidance_schedule"] = gr.Radio(list(GUIDANCE_SCHEDULES), value="constant", label="Guidance schedule",
                                          info="power-cosine rises from 1 at pure noise to the scale", min_width=200)
        c["guidance_power"] = gr.Slider(limits.MIN_GUIDANCE_POWER, limits.MAX_GUIDANCE_POWER, value=1.0, step=0.1,
                                        label="Power", info="of power-cosine", interactive=False, min_width=160,
                                        elem_id=f"{prefix}power")
    c["num_inference_steps"] = gr.Slider(1, limits.MAX_STEPS, value=catalogue.default_steps(model), step=1,
                                         label="Steps", info="denoising steps", elem_id=f"{prefix}steps")
    with gr.Row():
        c["sampler"] = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler", min_width=180)
        c["seed"] = gr.Number(0, precision=0, minimum=0, maximum=limits.MAX_SEED, label="Seed", min_width=140,
                              elem_id=f"{prefix}seed")
    gr.Button("Random seed", size="sm").click(lambda: random.randint(0, limits.MAX_SEED), None, c["seed"], **PRIVATE)
    c["guidance_schedule"].change(lambda schedule: gr.update(interactive=schedule == "power-cosine"),
                                  c["guidance_schedule"], c["guidance_power"], **PRIVATE)
    return c


def on_model_change(model, classes, classes_model):
    """A new model: its classes (the chosen ones kept when it has the same classes), note, and default settings."""
    checked(None, catalogue.check_model, model)
    return (gr.update(**catalogue.class_picker(model, catalogue.classes_after_change(model, classes, classes_model))),
            serving.model_note(model), catalogue.default_guidance(model), catalogue.default_steps(model), model)


def pick_random_classes(model, classes):  # as many classes as are chosen, 4 when none is
    return checked(None, catalogue.random_classes, model, len(classes or []) or 4, random.Random())


@on_gpu
def generate(model, classes, images_per_class, guidance_scale, guidance_schedule, guidance_power,
             num_inference_steps, seed, sampler, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """Sample images_per_class images of each class. Returns the samples, the branch panel after the last step (per
    image: each branch's estimate, lowest resolution first, then the final image), its step, and a status line."""
    request = checked(visitor, Request.check, **controls(locals()))
    for update in serving.reported(checked_stream(visitor, serving.stream(request)), request.model, progress):
        if not isinstance(update, Generation):  # loading or sampling: the previous run's panel goes: the panel will be this one's
            line = update.describe() if isinstance(update, serving.Loading) else f"Sampling with {request.model}…"
            yield as_files(getattr(update, "gallery", list)()), [], request.num_inference_steps, line, None
        else:
            yield (as_files(shapes_lab.final_gallery(update)), as_files(update.branch_panel()),
                   request.num_inference_steps, serving.describe(update), kept().keep(update))


def fit_panel(generation, panel_view):
    """After a run: the panel in the chosen view and columns, the step slider (none for a single step), its note,
    the real shapes (shapes models), and no film or files yet (made when asked for)."""
    if (generation := held(generation)) is None:  # let go of since, to keep within the budget (dimr.demo.kept)
        return gr.skip(), gr.skip(), EVICTED, gr.skip(), [], None
    steps = generation.request.num_inference_steps
    references = as_files(shapes_lab.reference_gallery(generation.request))
    # The run's answer holds the panel's estimates already; another view is made here.
    panel = {} if panel_view == ESTIMATES else dict(value=as_files(generation.branch_panel(view=panel_view)))
    return (gr.update(**panel, columns=generation.columns),
            gr.update(maximum=max(steps, 2), value=steps, interactive=steps > 1, visible=steps > 1),
            generation.panel_note(steps, panel_view), gr.update(value=references, visible=bool(references)), [], None)


def show_step(generation, panel_step, panel_view):
    """The branch panel after another step of the last generation (from what it kept; nothing is re-run). A step
    this run does not have is refused in the panel's note."""
    if generation is None:  # nothing generated yet: the panel stays empty
        return gr.skip(), gr.skip()
    if refusal := EVICTED if (generation := held(generation)) is None else generation.step_refusal(panel_step):
        return gr.skip(), refusal
    return as_files(generation.branch_panel(panel_step, panel_view)), generation.panel_note(panel_step, panel_view)


def film(generation, panel_view, film):
    """The panel after each step, one small frame each captioned with its step: sent once per run and view (Play
    asks; a run or another view clears it), then played in the browser (assets/app.js) without the server."""
    if film or (generation := held(generation)) is None:
        return gr.skip()
    return as_files((frame, str(step)) for step, frame in panel_film.frames(generation, panel_view))


def generate_tab(page):
    """The Generate tab and its API endpoint /generate. On a narrow screen the results come right after the Generate
    button, and the sampling settings after them."""
    model = catalogue.default_model()
    with gr.Tab("Generate", id="generate"), gr.Row(elem_classes="tab-layout"):
        with gr.Column(elem_classes="tab-basics"):
            c = dict(model=gr.Dropdown(catalogue.model_menu(), value=model, label="Model", elem_id="model"),
                     classes_model=gr.State(model),  # the model whose classes the class picker holds
                     generation=gr.State(time_to_live=3600))
            c["classes"] = gr.Dropdown(**catalogue.class_picker(model, catalogue.default_classes(model)),
                                       multiselect=True, allow_custom_value=True, elem_id="classes")
            c["images_per_class"] = gr.Slider(1, limits.MAX_IMAGES, value=1, step=1, label="Images per class",
                                              elem_id="images-per-class")
            with gr.Row(equal_height=True):
                button = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=3, min_width=160)
                random_classes = gr.Button("Random classes", size="sm", min_width=130)
        with gr.Column(elem_classes="tab-results"):
            c["status"] = gr.Markdown("Pick classes and press **Generate**.", label="status", elem_id="status")
            c["gallery"] = gr.Gallery(label="Samples", columns=4, elem_id="gallery", **GALLERY)
            c["references"] = gr.Gallery(label="Real shapes: what each sample should look like", columns=4,
                                         elem_id="references", visible=False, **GALLERY)
            gr.Markdown(text("branch_panel"), elem_id="panel-text")
            with gr.Group(elem_id="panel-controls"):
                views = [("each branch's estimate", ESTIMATES), ("what each finer branch changes", CHANGES)]
                c["panel_view"] = gr.Radio(views, value=ESTIMATES, label="Branch panel shows", elem_id="panel-view")
                with gr.Row(equal_height=True):
                    c["panel_step"] = gr.Slider(1, 25, value=25, step=1, interactive=False, elem_id="panel-step",
                                                label=STEP_LABEL)
                    play = gr.Button("▶ Play", elem_id="panel-play", size="sm", scale=0, min_width=90)
                c["panel_note"] = gr.Markdown("", elem_id="panel-note")
            c["panel"] = gr.Gallery(label="What each branch predicts", columns=4, elem_id="branch-panel", **GALLERY)
            c["film"] = gr.Gallery(visible="hidden", elem_id="panel-film", format="png")
            with gr.Accordion("Download for slides", open=False, elem_id="panel-slides"):
                make = gr.Button("Make the panel's animation (GIF) and each sample's strip (PNG)", elem_id="make-files")
                downloads = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Column(elem_classes="tab-sampling"):  # the model's note here: a phone's first screen is for results
            c["model_note"] = gr.Markdown(serving.model_note(model), elem_classes="note")
            c.update(sampling_settings(model))

    generated = on(button.click, generate, c,
                   [c["gallery"], c["panel"], c["panel_step"], c["status"], c["generation"]], api_name="generate",
                   preprocess=False, show_progress_on=[c["status"]], **SAMPLING_EVENTS)
    on(generated.success, fit_panel, c, [c["panel"], c["panel_step"], c["panel_note"], c["references"],
                                         c["film"], downloads], **PANEL_EVENTS)
    on(generated.failure, refused(c), c, c["status"], **PRIVATE)
    for trigger in (c["panel_step"].input, c["panel_view"].change):
        on(trigger, show_step, c, [c["panel"], c["panel_note"]], trigger_mode="always_last", preprocess=False,
           **PANEL_EVENTS)
    c["panel_view"].change(lambda: ([], None), None, [c["film"], downloads], **PANEL_EVENTS)  # of the other view
    on(play.click, film, c, c["film"], **PANEL_EVENTS)  # assets/app.js plays it, and pauses
    on(make.click, lambda generation, panel_view: held(generation) and panel_film.download_files(
        held(generation), panel_view, UPLOADS), c, downloads,
       **PANEL_EVENTS)  # for slides: the panel as a GIF, each sample across its steps as a PNG
    on(c["model"].change, on_model_change, c, [c["classes"], c["model_note"], c["guidance_scale"],
                                                c["num_inference_steps"], c["classes_model"]], **PRIVATE)
    on(random_classes.click, pick_random_classes, c, c["classes"], **PRIVATE)
    page.load(lambda: gr.update(choices=catalogue.model_menu()), None, c["model"], **PRIVATE)  # "(not installed)"


@on_gpu
def compare(classes, images_per_class, guidance_scale, guidance_schedule, guidance_power, num_inference_steps, seed,
            sampler, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """The tiny DiMR and the baseline from the same classes, noise and settings. Returns the pairs, three to a row (the
    real shape, DiMR's sample, the baseline's; verdicts as 'DiMR: ✓ recognised, p 0.97'), and a status line."""
    requests = checked(visitor, shapes_lab.compare_requests, **controls(locals()))
    samples = lambda r: serving.reported(checked_stream(visitor, serving.stream(r)), r.model, progress)
    for pairs, status in shapes_lab.compared(requests, samples):
        yield as_files(pairs), status


def compare_tab():
    """The Compare tab and its API endpoint /compare, with its own classes and sampling settings."""
    labels = catalogue.model_labels(catalogue.TINY_DIMR)
    with gr.Tab("Compare", id="compare", elem_id="compare-tab"), gr.Row(elem_classes="tab-layout"):
        with gr.Column(elem_classes="tab-basics"):
            gr.Markdown(text("compare"))
            c = dict(classes=gr.Dropdown(labels.choices(), value=list(range(len(labels))), multiselect=True,
                                         label="Classes (shapes)", elem_id="compare-classes"))
            c["images_per_class"] = gr.Slider(1, limits.MAX_COMPARE_IMAGES // len(labels), value=3, step=1,
                                              label="Samples per class", elem_id="compare-per-class")
            button = gr.Button("Compare (same noise, classes and settings)", variant="primary",
                               elem_id="compare-button")
        with gr.Column(elem_classes="tab-results"):
            status = gr.Markdown(text("compare_waiting"), label="status", elem_id="compare-status")
            pairs = gr.Gallery(label="Each row: the real shape, tiny DiMR, the baseline (transformer only), same noise",
                               columns=3, elem_id="compare-pairs", **GALLERY)
            gr.Markdown(shapes_lab.rates_table(), elem_id="compare-rates")
        with gr.Column(elem_classes="tab-sampling"):
            c.update(sampling_settings(catalogue.TINY_DIMR, prefix="compare-"))

    compared = on(button.click, compare, c, [pairs, status], api_name="compare", preprocess=False,
                  show_progress_on=[status], **SAMPLING_EVENTS)
    on(compared.failure, refused(c), c, status, **PRIVATE)


@on_gpu
def compare_imagenet(classes, images_per_class, num_inference_steps, seed, dimr_guidance_scale, dit_guidance_scale,
                     patch_grid, progress=gr.Progress(track_tqdm=True), visitor: gr.Request = None):
    """DiMR and DiT-XL/2 from the same initial noise and classes. Returns DiMR's samples, DiT's samples, DiMR's
    branch panel after the last step (per image: each branch's estimate, then the final image) and a status line."""
    request = checked(visitor, imagenet_compare.ComparisonRequest.check, **controls(locals()))
    progress(0, desc="Loading both models (the first use downloads them), then timing them")
    wait = checked(visitor, imagenet_compare.prepare, request)
    yield [], [], [], wait + "Sampling…"
    updates = checked_stream(visitor, imagenet_compare.stream_comparison(request))
    for dimr, dit, panel, status in imagenet_compare.page_updates(updates, wait, progress):
        yield as_files(dimr), as_files(dit), as_files(panel), status


def imagenet_tab():
    """The ImageNet comparison tab and its API endpoint /compare_imagenet, with its own settings. Its galleries
    show up with the first images: a refused comparison leaves only its reason in the status line."""
    dimr_model = imagenet_compare.imagenet_dimr_model()
    with gr.Tab("ImageNet", id="imagenet", elem_id="imagenet-tab"), gr.Row(elem_classes="tab-layout"):
        with gr.Column(elem_classes="tab-basics"):
            gr.Markdown(text("imagenet", dit=DIT_NAME, dimr=dimr_model, dimr_guidance=imagenet_compare.DIMR_GUIDANCE,
                             dit_guidance=DIT_GUIDANCE))
            gr.Markdown(imagenet_compare.setup_note(), elem_classes="note", elem_id="imagenet-note")
            c = dict(classes=gr.Dropdown(catalogue.model_labels(dimr_model).choices(), multiselect=True,
                                         value=catalogue.default_classes(dimr_model)[:2], allow_custom_value=True,
                                         label="Classes (ImageNet)", elem_id="imagenet-classes"))
            with gr.Row():  # two to a row where each label fits on one line beside its box, else one
                c["images_per_class"] = gr.Slider(1, limits.MAX_IMAGES, value=1, step=1, label="Images per class",
                                                  min_width=260)
                c["num_inference_steps"] = gr.Slider(1, limits.MAX_STEPS, value=imagenet_compare.DEFAULT_STEPS,
                                                     step=1, label="Steps", min_width=260, elem_id="imagenet-steps")
            with gr.Row():
                c["dimr_guidance_scale"] = gr.Slider(0, limits.MAX_GUIDANCE, value=imagenet_compare.DIMR_GUIDANCE,
                                                     step=0.1, label="DiMR guidance", min_width=260)
                c["dit_guidance_scale"] = gr.Slider(0, limits.MAX_GUIDANCE, value=DIT_GUIDANCE, step=0.1,
                                                    label="DiT guidance", min_width=260)
            with gr.Row():
                c["seed"] = gr.Number(0, precision=0, minimum=0, maximum=limits.MAX_SEED,
                                      label="Seed (the shared noise)", min_width=160)
                c["patch_grid"] = gr.Checkbox(False, label="Patch grid (DiT's 16x16 tokens)", min_width=160)
            button = gr.Button("Compare (same noise, same classes)", variant="primary", elem_id="imagenet-button")
        with gr.Column(elem_classes="tab-results"):
            status = gr.Markdown(text("imagenet_waiting", dimr=dimr_model, dit=DIT_NAME), label="status",
                                 elem_id="imagenet-status")
            with gr.Row():
                side = dict(columns=2, visible=False, min_width=240, **GALLERY)
                dimr = gr.Gallery(label=dimr_model, elem_id="imagenet-dimr", **side)
                dit = gr.Gallery(label=DIT_NAME, elem_id="imagenet-dit", **side)
            panel = gr.Gallery(label="What each DiMR branch predicts (last step)", columns=3, elem_id="imagenet-panel",
                               visible=False, **GALLERY)

    galleries = [dimr, dit, panel]
    compared = on(button.click, compare_imagenet, c, [*galleries, status], api_name="compare_imagenet",
                  preprocess=False, show_progress_on=[status], **IMAGENET_EVENTS)
    # The galleries appear with the first update of an accepted comparison (the status line says "Sampling…").
    status.change(lambda line: [gr.update(visible=True)] * 3 if line.endswith("Sampling…") else [gr.skip()] * 3,
                  status, galleries, **PRIVATE)
    on(compared.failure, refused(c), c, status, **PRIVATE)


def build():
    """The whole page: the header, then the tabs, each with its own settings."""
    with gr.Blocks(title="DiMR demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(text("intro", tiny_dimr_rate=shapes_lab.rate_text(catalogue.TINY_DIMR),  # the header, above every tab
                         tiny_baseline_rate=shapes_lab.rate_text(catalogue.TINY_BASELINE)), elem_id="intro")
        with gr.Tabs():
            generate_tab(blocks)
            compare_tab()
            imagenet_tab()
    return blocks


demo = build()  # the name Gradio's reload mode and Hugging Face Spaces look for

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if note := imagenet_compare.operator_note():
        log.info("For the operator: %s", note)
    serving.start(catalogue.default_model())
    demo.queue(max_size=64).launch(theme=THEME, css_paths=[ROOT / "assets" / "app.css"],
                                   head=f"<script>{(ROOT / 'assets' / 'app.js').read_text()}</script>", show_error=True)
