"""The demo in a real browser: Debian's chromium, driven by Playwright, against `python app.py`, at 1400, 1024 and
390 px wide (a laptop, a small laptop, a phone).

A user reads what distortion is, picks classes, generates, and sees the samples with real shapes beside them and
the branch panel (with honest branch names); the step slider stays next to the rows it moves and shows an earlier
step without sampling again; the panel also shows what each finer branch changes, readable at every step; the
Compare tab lays both tiny models out in pairs from the same noise, with the real shape and the judge's verdicts.
Every value typed into the page is answered: out of range, it is refused once, in the status line, naming the control
as the page labels it (never clamped, never rounded), and the last good results stay; one step works. The panel
plays over its steps in the browser and downloads as an animation and strips. At every width: the first result is on
screen within one screen of scrolling from the Generate button (on a phone, both within its first screen), every
tab is one tap away, each tab shows only its own settings, every slider shows its range, no image leaves its
gallery, no gallery label lies over an image, no caption, table cell, note or label is cut or broken inside a word,
panel captions take at most two lines, and no toast is wider than the page. Offline, the ImageNet tab tells a
visitor in one sentence what does not work here (no command, no path) and shows no empty galleries. Refusals log
one line each, no warning or traceback.
"""

import io
import os
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from app_server import running_app
from browser import CHROMIUM, PHONE_HEIGHT, SAMPLING_TIMEOUT_MS, chromium_page, generate, open_tab
from dit_models import put_dit_in_hub_cache, tiny_dit
from PIL import Image

from dimr.demo import imagenet_compare, limits

WIDTHS = [1400, 1024, 390]
at_every_width = pytest.mark.parametrize("browser_page", WIDTHS, indirect=True, ids=[f"{w}px" for w in WIDTHS])

# Every image of a gallery inside the gallery's box and clear of the gallery's label; every caption and table cell
# shown whole (not cut with an ellipsis) and wrapped between words only.
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const shown = e => e.offsetParent !== null;
  const overlap = (a, b) =>
    a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  for (const gallery of document.querySelectorAll('.pixelated')) {
    if (!shown(gallery)) continue;
    const box = gallery.getBoundingClientRect();
    const label = gallery.querySelector('[data-testid="block-label"]');
    for (const image of gallery.querySelectorAll('img')) {
      if (!shown(image)) continue;  // the panel's player while it is not playing
      const r = image.getBoundingClientRect();
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        problems.push(`${gallery.id}: image ${image.alt} at x ${r.left}-${r.right} outside ${box.left}-${box.right}`);
      if (label && shown(label) && overlap(label.getBoundingClientRect(), r))
        problems.push(`${gallery.id}: its label '${label.textContent.trim()}' lies over an image`);
    }
  }
  const texts = '.pixelated .caption-label, #compare-rates td, #compare-rates th, .prose, [data-testid="block-info"]';
  for (const text of document.querySelectorAll(texts)) {
    if (!shown(text)) continue;
    if (text.scrollWidth > text.clientWidth + 1 || text.scrollHeight > text.clientHeight + 1)
      problems.push(`'${text.textContent}' is cut`);
    if (text.closest('#branch-panel') && text.getBoundingClientRect().height > 2.5 * parseFloat(getComputedStyle(text).lineHeight))
      problems.push(`panel caption '${text.textContent}' takes more than two lines`);
    const walker = document.createTreeWalker(text, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode())
      for (const word of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const rects = [...range.getClientRects()].filter(r => r.width > 0);
        const lines = new Set(rects.map(r => Math.round(r.top)));
        const width = rects.reduce((sum, r) => sum + r.width, 0);
        if (width > text.clientWidth) continue;  // longer than a line (a server's path): it cannot but break
        // In running text an English compound ('same-size') may wrap at its hyphen; a name ('dpm-solver-3s') never.
        const compound = text.matches('.prose') && /^[a-z]+(-[a-z]+)+[,.;:)]?$/.test(word[0]);
        if (lines.size > 1 && !compound) problems.push(`'${word[0]}' is broken across lines in '${text.textContent}'`);
      }
  }
  for (const label of document.querySelectorAll('.head [data-testid="block-info"]'))  // a slider's label
    if (shown(label) && label.getBoundingClientRect().height > 1.5 * parseFloat(getComputedStyle(label).lineHeight))
      problems.push(`the label '${label.textContent}' wraps`);
  for (const toast of document.querySelectorAll('.toast-body'))
    if (toast.getBoundingClientRect().width > document.documentElement.clientWidth)
      problems.push(`a toast is wider than the page: '${toast.textContent}'`);
  return problems;
}"""


def need_chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app, offline (the released models and DiT are not installed), and its log."""
    need_chromium()
    directory = tmp_path_factory.mktemp("app")
    with running_app(directory) as (url, _):
        yield SimpleNamespace(url=url, log=directory / "app.log")


@pytest.fixture
def browser_page(request, tmp_path):
    with chromium_page(request.param, tmp_path / "profile") as page:
        yield page


def image_sources(page, selector):
    return page.locator(f"{selector} img").evaluate_all("images => images.map(i => i.src)")


def assert_layout(page):
    assert page.evaluate(LAYOUT_PROBLEMS) == []


def pick_classes(page, box, searches):
    for text, option in searches:
        box.get_by_role("combobox").fill(text)
        page.get_by_role("option", name=option).click()
    page.keyboard.press("Escape")  # close the option list


def type_into(page, selector, value):
    """Type a value into a slider's (or number's) box, as a user does, and leave the box."""
    box = page.locator(selector).get_by_role("spinbutton")
    box.fill(str(value))
    box.press("Tab")
    return box


@at_every_width
def test_a_student_sees_distortion_branches_and_the_comparison(app, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    page.goto(app.url)
    intro = page.locator("#intro")
    expect(intro).to_contain_text("distortion")
    expect(intro).to_contain_text("What to look for")
    expect(intro).to_contain_text("29.2%")  # the paper's rate, next to the lab's
    expect(page.locator("#guidance").get_by_role("spinbutton")).to_have_value("3")  # the shapes models' default

    # A refused request: the reason stays in the status line (not only in a toast that disappears).
    classes = page.locator("#classes")
    classes.get_by_title("Clear").click()
    page.keyboard.press("Escape")
    page.locator("#generate-button").click()
    expect(page.locator("#status")).to_contain_text("Could not run: no class chosen")
    page.wait_for_timeout(12_000)  # longer than a toast stays
    expect(page.locator("#status")).to_contain_text("no class chosen")

    pick_classes(page, classes, [("ring", "ring (4)"), ("sta", "star (3)"), ("checker", "checkerboard (8)")])
    expect(classes.locator(".token")).to_have_text(["ring (4)", "star (3)", "checkerboard (8)"])
    generate(page, "tiny-dimr: 3 images, 25 steps")

    # Three samples with a real shape of each class beside them, then one panel row per sample: the transformer
    # (named with its token grid and patch size), the two ConvNeXt branches, and the final output.
    expect(page.locator("#gallery img")).to_have_count(3)
    verdicts = page.locator("#gallery .caption-label").all_text_contents()  # the judge's, under each sample
    assert [v.split(" ")[0] for v in verdicts] == ["ring", "star", "checkerboard"]
    assert all(("✓ recognised, p" in v) != ("✗ misdrawn, p" in v) for v in verdicts), verdicts
    expect(page.locator("#references img")).to_have_count(3)
    expect(page.locator("#references")).to_contain_text("real checkerboard")
    expect(page.locator("#branch-panel img")).to_have_count(3 * 4)
    for caption in ["8x8 transformer (4x4 px patches)", "16x16 ConvNeXt", "32x32 ConvNeXt"]:
        expect(page.locator("#branch-panel").get_by_text(caption, exact=True)).to_have_count(3)
    for caption in ["final: ring", "final: star", "final: checkerboard"]:
        expect(page.locator("#branch-panel").get_by_text(caption, exact=True)).to_have_count(1)
    for image in page.locator("#gallery img, #branch-panel img").all():
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("i => i.naturalWidth") == 256
    assert_layout(page)
    final_panel = image_sources(page, "#branch-panel")

    # The first result is on screen with the Generate button: at most one screen of scrolling from it.
    page.locator("#generate-button").scroll_into_view_if_needed()
    button, first = page.locator("#generate-button").bounding_box(), page.locator("#gallery img").first.bounding_box()
    assert first["y"] + first["height"] - button["y"] <= height, (button, first)

    # The step slider stays in view while the last panel row is looked at.
    page.locator("#branch-panel img").last.scroll_into_view_if_needed()
    slider = page.locator("#panel-step").bounding_box()
    last_row = page.locator("#branch-panel img").last.bounding_box()
    for box in (slider, last_row):
        assert 0 <= box["y"] and box["y"] + box["height"] <= height, (slider, last_row)

    # An early step, from what the run kept: the coarse branch's blocks, no sampling (the status is unchanged).
    type_into(page, "#panel-step", 2)
    expect(page.locator("#panel-note")).to_contain_text("Branch panel after step 2 of 25")
    expect(page.locator("#branch-panel img")).to_have_count(3 * 4)
    early_panel = image_sources(page, "#branch-panel")
    branch_columns = [i for i in range(12) if i % 4 != 3]
    assert all(early_panel[i] != final_panel[i] for i in branch_columns)
    assert all(early_panel[i] == final_panel[i] for i in range(3, 12, 4))  # the final output stays
    expect(page.locator("#status")).to_contain_text("tiny-dimr: 3 images, 25 steps")

    # What each finer branch changes: the coarse estimate stays, the finer columns become change maps.
    page.locator("#panel-view").get_by_text("what each finer branch changes").click()
    expect(page.locator("#branch-panel").get_by_text("change by 16x16 ConvNeXt", exact=False)).to_have_count(3)
    changes_panel = image_sources(page, "#branch-panel")
    assert [changes_panel[i] == early_panel[i] for i in range(4)] == [True, False, False, True]
    assert_layout(page)

    # The same classes carry over to the baseline, whose one branch is named for what it is.
    page.locator("#model").get_by_role("combobox").click()
    page.get_by_role("option", name="tiny-baseline").click()
    expect(page.locator("#model")).to_contain_text("tiny-baseline")
    page.wait_for_timeout(1000)
    expect(classes.locator(".token")).to_have_text(["ring (4)", "star (3)", "checkerboard (8)"])

    # Compare: pairs from the same noise, one row each: the real shape, DiMR's sample and the baseline's side by
    # side, each with the judge's verdict; all classes (none picked to flatter).
    open_tab(page, "Compare")
    expect(page.locator("#compare-status")).to_contain_text("each row will show a real shape")
    if width != 1400:  # one sample per class is enough to check the layout at the other widths
        type_into(page, "#compare-per-class", 1)
    page.locator("#compare-button").click()
    count = 30 if width == 1400 else 10
    expect(page.locator("#compare-status")).to_contain_text(f"tiny-baseline: {count} images",
                                                            timeout=SAMPLING_TIMEOUT_MS)
    expect(page.locator("#compare-status")).to_contain_text("misdrawn")
    expect(page.locator("#compare-pairs img")).to_have_count(3 * count)
    captions = page.locator("#compare-pairs .caption-label").all_text_contents()
    assert all(c.startswith("real ") for c in captions[0::3]), captions
    for name, side in (("DiMR", captions[1::3]), ("baseline", captions[2::3])):
        assert all(re.fullmatch(rf"{name}: (✓ recognised|✗ misdrawn), p\u00a0[01]\.\d\d", c) for c in side), side
    boxes = [image.bounding_box() for image in page.locator("#compare-pairs img").all()]
    for real, dimr, baseline in zip(boxes[0::3], boxes[1::3], boxes[2::3]):  # one row: same height, left to right
        assert abs(real["y"] - dimr["y"]) < 1 and abs(dimr["y"] - baseline["y"]) < 1, (real, dimr, baseline)
        assert real["x"] < dimr["x"] < baseline["x"], (real, dimr, baseline)
    expect(page.locator("#compare-rates")).to_contain_text("Measured distortion per class")
    assert_layout(page)

    # ImageNet models: the class picker holds the 1000 classes, found by any synonym.
    open_tab(page, "Generate")
    page.locator("#model").get_by_role("combobox").click()
    page.get_by_role("option", name="DiMR-XL/2R").click()
    expect(page.locator("#classes")).to_contain_text("Classes (1000")
    expect(page.locator("#guidance").get_by_role("spinbutton")).to_have_value("1.4")
    classes.get_by_role("combobox").fill("Carcharodon")
    expect(page.get_by_role("option")).to_have_count(1)
    expect(page.get_by_role("option")).to_contain_text(
        "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias (2)")


@at_every_width
def test_every_value_typed_is_answered_once_in_the_pages_words_and_one_step_works(app, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    logged_before = len(app.log.read_text())
    page.goto(app.url)
    status = page.locator("#status")
    # The page offers what the API takes: the same limits (dimr.demo.limits), and shows them at every width.
    for selector, maximum in [("#steps", limits.MAX_STEPS), ("#guidance", limits.MAX_GUIDANCE),
                              ("#images-per-class", limits.MAX_IMAGES)]:
        assert float(page.locator(f"{selector} input[type=range]").get_attribute("max")) == maximum
        expect(page.locator(f"{selector} [data-testid=max-value]")).to_have_text(f"{maximum:g}")
        expect(page.locator(f"{selector} [data-testid=max-value]")).to_be_visible()
    generate(page, "tiny-dimr: 4 images, 25 steps")
    good = image_sources(page, "#gallery") + image_sources(page, "#branch-panel")

    # Out of range: kept as typed, refused once, in the status line, naming the control as the page labels it; the
    # last good results stay, no toast, no error badge; nothing is sampled. The API names its argument (the log).
    for selector, typed, refusal, logged in [
            ("#guidance", -5, "Guidance scale must be 0 to 10; you typed -5.", "guidance_scale=-5 is out of range"),
            ("#steps", 0, "Steps must be 1 to 250; you typed 0.", "num_inference_steps=0 is out of range"),
            ("#steps", 300, "Steps must be 1 to 250; you typed 300.", "num_inference_steps=300 is out of range"),
            ("#images-per-class", 17, "Images per class must be 1 to 16; you typed 17.",
             "images_per_class=17 is out of range")]:
        box = type_into(page, selector, typed)
        page.locator("#generate-button").click()
        expect(status).to_have_text(f"Could not run: {refusal}")
        page.wait_for_timeout(500)
        assert page.get_by_text(refusal).count() == 1  # said once
        expect(page.locator(".toast-body")).to_have_count(0)
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)
        assert image_sources(page, "#gallery") + image_sources(page, "#branch-panel") == good
        expect(box).to_have_value(str(typed))
        assert f"refused: {logged}" in app.log.read_text()[logged_before:]
        type_into(page, selector, {"#guidance": 3, "#steps": 25, "#images-per-class": 1}[selector])
    assert_layout(page)

    # A panel step is refused unless the run has it: a typed 2.5 is not rounded.
    type_into(page, "#panel-step", 2.5)
    expect(page.locator("#panel-note")).to_have_text("Panel step must be a whole number from 1 to 25; you typed 2.5.")
    assert image_sources(page, "#branch-panel") == good[4:]

    # One step: the samples and a panel of that one step, no step slider to move.
    type_into(page, "#steps", 1)
    generate(page, "tiny-dimr: 4 images, 1 step of")
    expect(page.locator("#branch-panel img")).to_have_count(4 * 4)
    expect(page.locator("#panel-note")).to_have_text("Branch panel after step 1 of 1.")
    expect(page.locator("#panel-step")).to_be_hidden()
    page.wait_for_timeout(1000)
    assert "Error" not in page.locator("#panel-controls").first.inner_text()
    expect(page.locator(".toast-body")).to_have_count(0)

    # A visitor's mistakes are one line each in the server's log: no warning, no traceback.
    log = app.log.read_text()[logged_before:]
    assert "Traceback" not in log and "WARNING" not in log and "Warning" not in log


@at_every_width
def test_every_tab_fits_the_screen_with_only_its_own_settings(app, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    page.goto(app.url)
    # Every tab one tap away: all in the tab row, none in an overflow menu.
    for name in ("Generate", "Compare", "ImageNet"):
        expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()
    expect(page.get_by_label("More tabs")).to_be_hidden()

    # The change view at the first step, where the finer branches add mostly noise: grey maps stretched to their
    # own range (black to white), the extent in each caption, and a note that says how to read them.
    generate(page, "tiny-dimr: 4 images, 25 steps")
    type_into(page, "#panel-step", 40)  # a step the run does not have: refused in the panel's note
    expect(page.locator("#panel-note")).to_have_text("Panel step must be 1 to 25; you typed 40.")
    type_into(page, "#panel-step", 1)
    page.locator("#panel-view").get_by_text("what each finer branch changes").click()
    expect(page.locator("#panel-note")).to_contain_text("each map stretched to its own range")
    change = page.locator("#branch-panel .thumbnail-item", has_text="change by 32x32 ConvNeXt").first
    expect(change).to_contain_text("%")
    with Image.open(io.BytesIO(httpx.get(change.locator("img").get_attribute("src")).content)) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.max() - pixels.min() > 200
    assert_layout(page)

    # The model menu says which released models are not installed here.
    page.locator("#model").get_by_role("combobox").click()
    expect(page.get_by_role("option", name="DiMR-XL/2R")).to_contain_text("DiMR-XL/2R (not installed)")
    expect(page.get_by_role("option", name="tiny-baseline")).not_to_contain_text("not installed")
    page.keyboard.press("Escape")

    generate_settings = ["#model", "#classes", "#guidance", "#steps"]
    open_tab(page, "Compare")
    for selector in ["#compare-classes", "#compare-per-class", "#compare-guidance", "#compare-steps"]:
        expect(page.locator(selector)).to_be_visible()
    for selector in generate_settings:
        expect(page.locator(selector)).to_be_hidden()

    # ImageNet offline: one sentence for a visitor (what does not work here, what does), before and after pressing
    # Compare; the results' side says what it will show; no gallery shows up empty or with an error; no operator's
    # command and no path of the server anywhere on the page (the server's log has them).
    open_tab(page, "ImageNet")
    expect(page.locator("#imagenet-classes")).to_be_visible()
    for selector in [*generate_settings, "#compare-classes", "#compare-guidance"]:
        expect(page.locator(selector)).to_be_hidden()
    expect(page.locator("#imagenet-note")).to_have_text(imagenet_compare.NOT_INSTALLED)
    expect(page.locator("#imagenet-status")).to_contain_text("side by side, then what each DiMR branch predicts")
    page.locator("#imagenet-button").click()
    expect(page.locator("#imagenet-status")).to_have_text(f"Could not run: {imagenet_compare.NOT_INSTALLED}")
    page.wait_for_timeout(1000)
    for gallery in ("#imagenet-dimr", "#imagenet-dit", "#imagenet-panel"):
        expect(page.locator(gallery)).to_be_hidden()
    expect(page.locator(".toast-body")).to_have_count(0)
    shown = page.evaluate("document.body.innerText")
    for operators_word in ("python -m", "huggingface-cli", str(Path.home()), app.log.parent.name, "HF_HOME"):
        assert operators_word not in shown
    # Small things: the class picker's caret at its size, the panel note on the panel's own background.
    caret = page.locator("#imagenet-classes .icon-wrap").bounding_box()
    assert caret["width"] >= 14, caret
    assert_layout(page)
    open_tab(page, "Generate")
    background = page.locator("#panel-note").evaluate("e => getComputedStyle(e).backgroundColor")
    assert background == page.locator("#panel-view").evaluate("e => getComputedStyle(e).backgroundColor")


@at_every_width
def test_the_panel_plays_over_its_steps_in_the_browser_and_downloads_for_slides(app, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    page.goto(app.url)
    type_into(page, "#steps", 8)
    generate(page, "tiny-dimr: 4 images, 8 steps")
    type_into(page, "#panel-step", 3)
    expect(page.locator("#panel-note")).to_have_text("Branch panel after step 3 of 8.")
    step = page.locator("#panel-step").get_by_role("spinbutton")

    # Play: the step advances from where it is, one frame per step; it stops at the last step, where the panel and
    # its note then are, as if the slider had been moved there by hand.
    play = page.locator("#panel-play")
    play.click()
    expect(play).to_have_text("Pause")
    seen = []
    for _ in range(60):
        seen.append(int(step.input_value()))
        if play.inner_text() == "▶ Play":
            break
        page.wait_for_timeout(100)
    assert seen[-1] == 8 and seen == sorted(seen) and len(set(seen)) >= 4, seen
    expect(play).to_have_text("▶ Play")
    expect(page.locator("#panel-note")).to_have_text("Branch panel after step 8 of 8.")
    expect(page.locator("#branch-panel img:visible")).to_have_count(4 * 4)
    # Played from what the browser holds: one small frame per step, fetched once; the server sampled nothing more.
    expect(page.locator("#panel-film img")).to_have_count(8)
    expect(page.locator("#status")).to_contain_text("tiny-dimr: 4 images, 8 steps")

    # Pause stops it where it is; Play from the last step starts again at the first.
    play.click()
    page.wait_for_timeout(700)
    play.click()
    expect(play).to_have_text("▶ Play")
    paused = int(step.input_value())
    assert 1 <= paused < 8, paused
    expect(page.locator("#panel-note")).to_have_text(f"Branch panel after step {paused} of 8.")
    assert_layout(page)

    # For slides: the panel as an animation with a frame per step, and each sample across its steps as a PNG strip.
    page.locator("#panel-slides").get_by_text("Download for slides").click()
    page.locator("#make-files").click()
    links = page.locator("#downloads a[href]")
    expect(links).to_have_count(1 + 4)
    files = {href.rsplit("/", 1)[1]: httpx.get(href).content for href in links.evaluate_all("l => l.map(a => a.href)")}
    with Image.open(io.BytesIO(files["tiny-dimr-seed0-steps8-panel.gif"])) as animation:
        assert animation.format == "GIF" and animation.n_frames == 8
    with Image.open(io.BytesIO(files["tiny-dimr-seed0-steps8-sample1-star-strip.png"])) as strip:
        assert strip.format == "PNG" and strip.width > 2.5 * strip.height  # 8 steps wide, 3 branches high


def test_on_a_phone_the_first_screen_holds_the_button_and_the_first_samples(app, tmp_path):
    """390 px wide, 844 px high: the introduction's first sentence (the rest one tap away), the Generate button, and
    after pressing it the first sample, without scrolling."""
    from playwright.sync_api import expect

    need_chromium()
    with chromium_page(390, tmp_path / "profile") as page:
        page.goto(app.url)
        more = page.locator("#intro").get_by_text("What to look for")
        expect(page.locator("#intro")).to_contain_text("diffusion model against distortion")
        expect(more).to_be_hidden()
        page.locator("#intro .more").click()
        expect(more).to_be_visible()
        page.locator("#intro summary").click()
        expect(more).to_be_hidden()

        generate(page, "tiny-dimr: 4 images")
        bottom = "e => e.getBoundingClientRect().bottom + window.scrollY"
        assert page.locator("#generate-button").evaluate(bottom) <= PHONE_HEIGHT
        assert page.locator("#gallery img").first.evaluate(bottom) <= PHONE_HEIGHT
        assert_layout(page)


def test_on_a_phone_the_imagenet_galleries_appear_with_a_comparison_and_keep_clear_of_a_refusal(tmp_path, two_branch,
                                                                                                tiny_vae):
    """The tab with both models at hand (a small random DiMR with ImageNet classes as DIMR_MODEL, a small random DiT
    laid out as facebook/DiT-XL-2-256 in the Hugging Face cache; tests/test_dit.py)."""
    from playwright.sync_api import expect

    need_chromium()
    two_branch.model().save_pretrained(tmp_path / "dimr")
    tiny_vae.save_pretrained(tmp_path / "dimr" / "vae")
    put_dit_in_hub_cache(tmp_path / "hf-home" / "hub", tiny_dit(), tiny_vae)
    env = {"DIMR_MODEL": str(tmp_path / "dimr"), "DIMR_DEVICE": "cpu",
           "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub")}
    galleries = ("#imagenet-dimr", "#imagenet-dit", "#imagenet-panel")
    with running_app(tmp_path, env) as (url, _), chromium_page(390, tmp_path / "profile") as page:
        page.goto(url)
        open_tab(page, "ImageNet")
        expect(page.locator("#imagenet-note")).to_contain_text("Weights: at hand.")
        for gallery in galleries:
            expect(page.locator(gallery)).to_be_hidden()
        type_into(page, "#imagenet-steps", 2)
        page.locator("#imagenet-button").click()
        status = page.locator("#imagenet-status")
        expect(status).to_contain_text("Same noise (seed 0)", timeout=SAMPLING_TIMEOUT_MS)
        for gallery, images in zip(galleries, (2, 2, 2 * 3)):
            expect(page.locator(f"{gallery} img")).to_have_count(images)
        assert_layout(page)

        # A refused comparison: its reason in the status line; the galleries keep the last images, no error badge.
        page.locator("#imagenet-classes").get_by_title("Clear").click()
        page.keyboard.press("Escape")
        page.locator("#imagenet-button").click()
        expect(status).to_contain_text("Could not run: no class chosen")
        for gallery, images in zip(galleries, (2, 2, 2 * 3)):
            expect(page.locator(f"{gallery} img")).to_have_count(images)
            expect(page.locator(gallery)).not_to_contain_text("Error")
