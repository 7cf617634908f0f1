"""The DiMR demo: pick a model, classes, guidance and steps; see the samples and what every resolution branch predicts.

UI only: requests are checked and sampled by `dimr.demo`. `python app.py` serves on 127.0.0.1:7860
(GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change that); DIMR_MODEL and DIMR_DEVICE choose the default model and
the device. The main action is also the API endpoint `/generate` (gradio_client), with the same checks.
"""

import hashlib
import inspect
import io
import os
import random
import tempfile
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from dimr import demo, imagenet_compare
from dimr.batching import GPU_SECONDS_MAX, gpu_seconds
from dimr.loading import MODELS
from dimr.pipeline import DEFAULT_SCHEDULER, GUIDANCE_SCHEDULES, SCHEDULERS

try:
    import spaces  # Hugging Face ZeroGPU attaches a GPU only while a function wrapped in spaces.GPU runs
except ImportError:
    spaces = None


def on_gpu(fn):
    """Under ZeroGPU, ask for as much GPU time as the request's size needs (dimr.batching.gpu_seconds)."""
    if spaces is None:
        return fn
    signature = inspect.signature(fn)

    def duration(*args, **kwargs):
        call = signature.bind(*args, **kwargs).arguments  # compare() samples two tiny models in turn
        runs = 1 if "model" in call else 2
        return min(GPU_SECONDS_MAX, runs * gpu_seconds(call.get("model", demo.TINY_DIMR), call["classes"],
                                                       call["images_per_class"], call["num_inference_steps"]))

    return spaces.GPU(duration=duration)(fn)


INTRO = """
# DiMR: every resolution branch, step by step
[DiMR](https://arxiv.org/abs/2406.09416) (NeurIPS 2024) denoises with a cascade of branches: a transformer on a
coarse grid lays out the structure, convolutional branches at higher resolutions add detail. Pick a model and
classes, generate, and watch what each branch predicts at every step. The bundled tiny models were trained on a
shapes dataset and run on a CPU; the released ImageNet models download on first use.
"""
PANEL_HELP = """
**Branch panel.** For each image, one row: the clean image each branch predicts after the chosen step (lowest
resolution first, enlarged without smoothing so you see its grid), then the final output. Early on, only the coarse
branch has a sensible layout; the higher branches refine its edges and texture. Move the slider to go back in time;
the model does not run again.
"""
COMPARE_HELP = """
The bundled tiny DiMR and a single-resolution baseline of the same size (one transformer on 4x4 patches with an
un-patchify head), trained the same way, sampled from the **same noise** (seed), classes and settings. Look at edges,
thin rings and stripes: the baseline tends to break them at patch borders.
"""
CSS = """
.pixelated img { image-rendering: pixelated; }
.note { font-size: 0.9em; color: var(--body-text-color-subdued); }
#generate-button, #compare-button { min-height: 3em; }
"""
THEME = gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"])
APP_LIMITS = f"at most {demo.MAX_IMAGES} images and {demo.MAX_STEPS} steps per request"
# Requests handed to dimr.demo at once; it samples those that wait together in shared runs (dimr.batching).
CONCURRENT_REQUESTS = 32


# The API's handlers (generate, compare) return plain values only, never gr.update / gr.skip / components for
# non-State outputs: for each of those Gradio 6.31 builds a component that it keeps in the session's config, so a
# long-lived client session grew by about 80 KB per request. Layout updates run in browser-only events instead.


def checked(fn, *args, **kwargs):
    """Call fn; a bad request or an unavailable model becomes a gr.Error with the clear message it carries."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError; OSError: files, downloads
        raise gr.Error(str(err), title="Cannot generate") from None


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


def sample(request, progress):
    """Yield ('preview', captioned images) while sampling, then ('done', Generation)."""
    progress(0, desc=f"Loading {request.model} (the first use of a released model downloads it)")
    updates = checked(demo.stream, request)
    while True:
        update = checked(next, updates, None)
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
             num_inference_steps, seed, sampler, progress=gr.Progress(track_tqdm=True)):
    """Sample images_per_class images of each class. Returns the samples, the branch panel after the last step
    (per image: each branch's clean-image estimate, lowest resolution first, then the final image), the step
    shown in the panel, and a status line."""
    request = checked(demo.Request.check, model, classes, images_per_class, guidance_scale, guidance_schedule,
                      guidance_power, num_inference_steps, seed, sampler)
    steps = request.num_inference_steps
    for kind, value in sample(request, progress):
        if kind == "preview":  # the panel of the previous run is cleared: it will belong to this one
            yield value, [], steps, f"Sampling with {request.model}…", gr.skip()
        else:
            yield as_files(value.gallery()), as_files(value.branch_panel()), steps, demo.describe(value), value


def fit_panel(generation):
    """The panel's columns and step slider for the run just shown (browser only: not part of the API)."""
    steps = generation.request.num_inference_steps
    return (gr.update(columns=generation.columns), gr.update(maximum=steps, value=steps, interactive=steps > 1),
            f"Branch panel after step {steps} of {steps}.")


def show_step(generation, step):
    """The branch panel after another step of the last generation (from what it kept; nothing is re-run)."""
    if generation is None:
        raise gr.Error("Generate images first; the panel then shows any step of that run.")
    shown = generation.panel_step(step)
    note = "" if shown == step else f" (nearest step with branch images: {shown})"
    return (as_files(generation.branch_panel(shown)),
            f"Branch panel after step {shown} of {generation.request.num_inference_steps}{note}.")


@on_gpu
def compare(classes, images_per_class, guidance_scale, guidance_schedule, guidance_power, num_inference_steps, seed,
            sampler, progress=gr.Progress(track_tqdm=True)):
    """Sample the tiny DiMR and the single-resolution baseline with the same classes, noise and settings."""
    requests = [checked(demo.Request.check, name, classes, images_per_class, guidance_scale, guidance_schedule,
                        guidance_power, num_inference_steps, seed, sampler)
                for name in (demo.TINY_DIMR, demo.TINY_BASELINE)]
    galleries, lines = [[], []], []
    for k, request in enumerate(requests):
        for kind, value in sample(request, progress):
            if kind == "preview":
                galleries[k] = value
            else:
                galleries[k] = as_files(value.gallery())
                lines.append(demo.describe(value))
            yield *galleries, "  \n".join(lines) or f"Sampling with {request.model}…"


def on_model_change(model):
    labels = checked(demo.model_labels, model)
    return (gr.update(choices=demo.class_choices(model), value=demo.default_classes(model),
                      label=f"Classes ({len(labels)}; type to search names and synonyms)"),
            model_note(model), demo.default_guidance(model))


def model_note(model):
    return f"{MODELS.get(model, 'a converted model directory')}. Device: {demo.device()}; {APP_LIMITS}."


def pick_random_classes(model, classes):
    count = len(classes) if isinstance(classes, list) and classes else 4
    return checked(demo.random_classes, model, count, random.Random())


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
                     patch_grid, progress=gr.Progress(track_tqdm=True)):
    """DiMR and DiT-XL/2 from the same initial noise and classes. Returns DiMR's samples, DiT's samples, DiMR's
    branch panel after the last step (per image: each branch's estimate, then the final image) and a status line."""
    request = checked(imagenet_compare.Request.check, classes, images_per_class, num_inference_steps, seed,
                      dimr_guidance_scale, dit_guidance_scale, patch_grid)
    progress(0, desc="Loading both models (the first use downloads them)")
    pipes = checked(imagenet_compare.load, request)
    wait = ""
    if demo.device().type == "cpu":
        wait = (f"On this CPU this comparison takes "
                f"{imagenet_compare.wait_note(imagenet_compare.estimate_seconds(request, *pipes))}. ")
    yield [], [], [], wait + "Sampling…"
    updates, dimr_preview = imagenet_compare.stream(request), []
    while (update := checked(next, updates, None)) is not None:
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
    button.click(compare_imagenet, [classes, per_class, steps, seed, dimr_guidance, dit_guidance, patch_grid],
                 [dimr_gallery, dit_gallery, panel, status], api_name="compare_imagenet", preprocess=False,
                 concurrency_id="device", concurrency_limit=1)


def build():
    model = demo.default_model()
    shapes_model = demo.TINY_DIMR
    with gr.Blocks(title="DiMR demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(INTRO)
        generation = gr.State(time_to_live=3600)
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
                                           info="1 = no guidance; the paper's default is 1.4 (ImageNet), "
                                                "3 for the shapes models")
                with gr.Row():
                    schedule = gr.Radio(list(GUIDANCE_SCHEDULES), value="constant", label="Guidance schedule",
                                        info="power-cosine rises from 1 at pure noise to the scale", scale=3)
                    power = gr.Slider(0.1, 4, value=1.0, step=0.1, label="Power", info="of power-cosine", scale=2,
                                      interactive=False)
                steps = gr.Slider(1, demo.MAX_STEPS, value=25, step=1, label="Steps", info="model evaluations")
                with gr.Row():
                    sampler = gr.Dropdown(list(SCHEDULERS), value=DEFAULT_SCHEDULER, label="Sampler", scale=2)
                    seed = gr.Number(0, precision=0, minimum=0, maximum=demo.MAX_SEED, label="Seed", scale=2)
                    dice = gr.Button("Random seed", size="sm", scale=1, min_width=90)
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Generate"):
                        status = gr.Markdown("Pick classes and press **Generate**.", label="status", elem_id="status")
                        gallery = gr.Gallery(label="Samples", columns=4, height="fit-content", format="png",
                                             object_fit="contain", elem_id="gallery", elem_classes="pixelated",
                                             buttons=["download", "fullscreen"])
                        gr.Markdown(PANEL_HELP)
                        step_slider = gr.Slider(1, 25, value=25, step=1, interactive=False, elem_id="panel-step",
                                                label="Branch panel: after step")
                        panel_note = gr.Markdown("", elem_id="panel-note")
                        panel = gr.Gallery(label="What each branch predicts", columns=4, height="fit-content",
                                           format="png", object_fit="contain", elem_id="branch-panel",
                                           elem_classes="pixelated", buttons=["download", "fullscreen"])
                    with gr.Tab("Compare with the baseline", elem_id="compare-tab"):
                        gr.Markdown(COMPARE_HELP)
                        compare_classes = gr.Dropdown(demo.class_choices(shapes_model),
                                                      value=demo.default_classes(shapes_model), multiselect=True,
                                                      label="Classes (shapes)")
                        compare_button = gr.Button("Compare (same seed, classes and settings)", variant="primary",
                                                   elem_id="compare-button")
                        compare_status = gr.Markdown("", label="status", elem_id="compare-status")
                        with gr.Row():
                            dimr_gallery = gr.Gallery(label="tiny DiMR (3 branches)", columns=2, height="fit-content",
                                                      format="png", elem_classes="pixelated", elem_id="compare-dimr")
                            baseline_gallery = gr.Gallery(label="single-resolution baseline", columns=2,
                                                          height="fit-content", format="png", elem_classes="pixelated",
                                                          elem_id="compare-baseline")
                    imagenet_tab()

        settings = [per_class, guidance_scale, schedule, power, steps, seed, sampler]
        # preprocess=False: the handlers get the raw values, so API callers see the pipeline's own messages
        # (which value, what is allowed) instead of a generic component error.
        generated = generate_button.click(generate, [model_box, class_box, *settings],
                                          [gallery, panel, step_slider, status, generation], api_name="generate",
                                          preprocess=False, concurrency_id="device",
                                          concurrency_limit=CONCURRENT_REQUESTS)
        generated.success(fit_panel, generation, [panel, step_slider, panel_note], api_visibility="private")
        compare_button.click(compare, [compare_classes, *settings], [dimr_gallery, baseline_gallery, compare_status],
                             api_name="compare", preprocess=False, concurrency_id="device",
                             concurrency_limit=CONCURRENT_REQUESTS)
        step_slider.input(show_step, [generation, step_slider], [panel, panel_note], api_visibility="private",
                          trigger_mode="always_last", concurrency_limit=4)
        model_box.change(on_model_change, model_box, [class_box, model_info, guidance_scale],
                         api_visibility="private")
        random_button.click(pick_random_classes, [model_box, class_box], class_box, api_visibility="private")
        dice.click(lambda: random.randint(0, demo.MAX_SEED), None, seed, api_visibility="private")
        schedule.change(lambda name: gr.update(interactive=name == "power-cosine"), schedule, power,
                        api_visibility="private")
    return blocks


app = build()

if __name__ == "__main__":
    if spaces is not None:
        demo.load(demo.default_model())  # ZeroGPU: weights are placed on the GPU at start-up, outside requests
    else:
        demo.warm_up(demo.default_model())  # in the background: the app answers meanwhile
    app.queue(max_size=64).launch(theme=THEME, css=CSS, show_error=True)
