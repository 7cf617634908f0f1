"""What the page says and shows, without its UI: refusals in the page's words (dimr.demo.refusals), the panel's
frames and files for slides (dimr.demo.panel_film), Compare's pairs and Generate's verdicts (dimr.demo.shapes_lab),
and progress that says "Loading" only while a model loads (dimr.demo.serving.reported)."""


import pytest
from PIL import Image

from dimr.checks import OutOfRange, check_int, check_number
from dimr.demo import panel_film, serving, shapes_lab
from dimr.demo.panel import CHANGES, ESTIMATES
from dimr.demo.refusals import SERVER_FAILED, Refusals, page_message
from dimr.demo.request import Request

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny

LABELS = {"num_inference_steps": "Steps", "guidance_scale": "Guidance scale"}


def refusal(**controls):
    with pytest.raises(ValueError) as error:
        Request.check(**{"model": "tiny-dimr", "classes": ["ring"], **controls})
    return error.value


@pytest.mark.parametrize("controls, api, page", [
    (dict(num_inference_steps=0), "num_inference_steps=0 is out of range: use 1..250",
     "Steps must be 1 to 250; you typed 0."),
    (dict(num_inference_steps=2.5), "num_inference_steps must be an integer, got 2.5",
     "Steps must be a whole number from 1 to 250; you typed 2.5."),
    (dict(guidance_scale=-5), "guidance_scale=-5 is out of range: use 0..10",
     "Guidance scale must be 0 to 10; you typed -5."),
])
def test_the_api_names_the_argument_and_the_page_names_the_control(controls, api, page):
    error = refusal(**controls)
    assert str(error) == api
    assert page_message(error, LABELS) == page


def test_a_refusal_without_a_control_on_the_page_keeps_its_own_words():
    error = refusal(classes=[])
    assert page_message(error, LABELS) == str(error) == "no class chosen: pick at least one class (a name, synonym or id)"
    assert page_message(OutOfRange("seed=-1 is out of range", "seed", -1, 0, 9, True), LABELS) == \
        "seed=-1 is out of range"  # a control this page does not label


def test_the_checks_say_what_is_allowed_for_the_page_to_repeat():
    with pytest.raises(OutOfRange) as error:
        check_number("power", 5.0, 0.1, 4)
    assert (error.value.name, error.value.value, error.value.low, error.value.high, error.value.whole) == \
        ("power", 5.0, 0.1, 4, False)
    with pytest.raises(OutOfRange) as error:
        check_int("steps", "many", 1, 250)
    assert error.value.whole and page_message(error.value, {"steps": "Steps"}) == \
        "Steps must be 1 to 250; you typed 'many'."


def test_a_status_line_says_the_refusal_once_then_forgets_it():
    refusals = Refusals()
    refusals.record("session", refusal(num_inference_steps=300))
    assert refusals.status_line("session", LABELS) == "**Could not run:** Steps must be 1 to 250; you typed 300."
    assert refusals.status_line("session", LABELS) == f"**Could not run:** {SERVER_FAILED}"  # no refusal: the server's


@pytest.fixture(scope="module")
def generation():
    """A finished run of the bundled tiny DiMR: two samples, five steps."""
    request = Request.check(model="tiny-dimr", classes=["ring", "star"], num_inference_steps=5)
    return list(serving.stream(request))[-1]


@pytest.mark.parametrize("typed, refused", [
    (2.5, "**Panel step must be a whole number from 1 to 5; you typed 2.5.**"),
    (0, "**Panel step must be 1 to 5; you typed 0.**"),
    (6, "**Panel step must be 1 to 5; you typed 6.**"),
    ("2", "**Panel step must be 1 to 5; you typed '2'.**"),
    (3, None),
])
def test_a_panel_step_is_refused_unless_the_run_has_it_never_rounded(generation, typed, refused):
    assert generation.step_refusal(typed) == refused


@pytest.mark.parametrize("view", [ESTIMATES, CHANGES])
def test_the_film_has_one_frame_of_the_whole_panel_per_step(generation, view):
    frames = panel_film.frames(generation, view)
    assert [step for step, _ in frames] == [1, 2, 3, 4, 5]
    # two rows (samples) of four 32 px cells (three branches, the final image), 2 px apart
    assert {frame.size for _, frame in frames} == {(4 * 32 + 3 * panel_film.GAP, 2 * 32 + panel_film.GAP)}
    assert len({frame.tobytes() for _, frame in frames}) == 5  # the steps differ
    last = frames[-1][1].crop((3 * (32 + panel_film.GAP), 0, 3 * (32 + panel_film.GAP) + 32, 32))
    assert last.tobytes() == Image.fromarray(generation.images[0]).tobytes()  # the final image, unscaled


def test_the_animation_and_the_strips_open_as_images_with_a_frame_per_step(generation, tmp_path):
    paths = panel_film.download_files(generation, ESTIMATES, tmp_path)
    assert [p.split("/")[-1] for p in paths] == ["tiny-dimr-seed0-steps5-panel.gif",
                                                 "tiny-dimr-seed0-steps5-sample1-ring-strip.png",
                                                 "tiny-dimr-seed0-steps5-sample2-star-strip.png"]
    with Image.open(paths[0]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.width >= panel_film.SLIDE_WIDTH * 0.7
    with Image.open(paths[1]) as strip:  # five steps left to right, one row per branch, enlarged for a slide
        factor = strip.width // (5 * 32 + 4 * panel_film.GAP)
        assert factor > 1 and strip.size == (factor * (5 * 32 + 4 * panel_film.GAP), factor * (3 * 32 + 2 * panel_film.GAP))
    assert panel_film.download_files(generation, ESTIMATES, tmp_path) == paths  # written once per content


def test_compare_pairs_each_noise_with_its_real_shape_in_one_row_of_three(generation):
    side = shapes_lab.compare_side(generation)
    assert [caption for _, caption in side] == [shapes_lab.verdict(*v) for v in shapes_lab.sample_verdicts(generation)]
    pairs = shapes_lab.compare_pairs(generation.request.labels, side, [])
    assert [caption for _, caption in pairs][:3] == ["real ring", f"DiMR: {side[0][1]}", "baseline: to come"]
    assert len(pairs) == 3 * 2 and pairs[2][0] is shapes_lab.WAITING


def test_compare_fills_dimr_then_the_baseline_with_verdicts_in_the_status_line():
    requests = shapes_lab.compare_requests(classes=["ring"], num_inference_steps=2, images_per_class=1)
    shown = list(shapes_lab.compared(requests, serving.stream))
    pairs, status = shown[-1]
    assert [caption.split(":")[0] for _, caption in pairs] == ["real ring", "DiMR", "baseline"]
    assert "to come" not in " ".join(caption for _, caption in pairs)
    assert status.count("the judge finds") == 2 and "tiny-baseline: 1 images, 2 steps" in status


def test_generate_shows_the_judges_verdict_under_each_sample_of_a_shapes_model(generation):
    captions = [caption for _, caption in shapes_lab.final_gallery(generation)]
    assert [c.split(" ")[0] for c in captions] == ["ring", "star"]
    assert all(("✓ recognised, p\u00a0" in c) != ("✗ misdrawn, p\u00a0" in c) for c in captions)


def test_progress_says_loading_only_while_the_model_loads():
    said = []
    report = lambda *args, **kwargs: said.append(kwargs["desc"])  # noqa: E731
    list(serving.reported(iter([serving.Loading("DiMR-XL/2R", 12.0)]), "DiMR-XL/2R", report))
    assert said == ["Loading DiMR-XL/2R (the first use of a released model downloads it): 12 s"]
    request = Request.check(model="tiny-dimr", classes=["ring"], num_inference_steps=2)
    list(serving.stream(request))  # loaded now: its next request says nothing of loading
    assert not any(isinstance(update, serving.Loading) for update in serving.stream(request))


def test_one_step_is_one_step():
    assert serving.counted(1, "step") == "1 step" and serving.counted(25, "step") == "25 steps"
