"""The demo in a real browser: Debian's chromium, driven by Playwright, against `python app.py`, at 1400, 1024 and
390 px wide.

A user reads what distortion is, picks classes, generates, and sees the samples with real shapes beside them and
the branch panel (with honest branch names); the step slider stays next to the rows it moves and shows an earlier
step without sampling again; the panel also shows what each finer branch changes; the Compare tab shows both tiny
models from the same noise with the judge's verdicts. At every width no image leaves its container and no caption
is cut. A refused request keeps its reason in the status line; the class choice survives a switch to a model with
the same classes. The 1400 px run saves screenshots (to $DIMR_SCREENSHOT when set, e.g. assets/screenshot.png for
the README, and the compare tab beside it as screenshot-compare.png).
"""

import os
import shutil
from pathlib import Path

import pytest

from app_server import running_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000
SAMPLING_TIMEOUT_MS = 240_000  # a shared CI machine may be slow
WIDTHS = [1400, 1024, 390]

# Every image of a gallery inside the gallery's box, and every caption shown whole (not cut with an ellipsis).
LAYOUT_PROBLEMS = """selector => {
  const problems = [];
  for (const gallery of document.querySelectorAll(selector)) {
    const box = gallery.getBoundingClientRect();
    for (const image of gallery.querySelectorAll('img')) {
      const r = image.getBoundingClientRect();
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        problems.push(`${gallery.id}: image ${image.alt} at x ${r.left}-${r.right} outside ${box.left}-${box.right}`);
    }
    for (const caption of gallery.querySelectorAll('.caption-label'))
      if (caption.scrollWidth > caption.clientWidth + 1 || caption.scrollHeight > caption.clientHeight + 1)
        problems.push(`${gallery.id}: caption '${caption.textContent}' is cut`);
  }
  return problems;
}"""


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    with running_app(tmp_path_factory.mktemp("app")) as (url, _):
        yield url


@pytest.fixture
def browser_page(request, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": request.param, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        context.close()


def save_screenshot(page, suffix, tmp_path):
    """The whole page, to $DIMR_SCREENSHOT (with `suffix` before .png) or the test's temporary directory."""
    for image in page.locator(".pixelated img:visible").all():  # galleries load images lazily: load them first
        image.scroll_into_view_if_needed()
        image.evaluate("i => i.decode()")
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(0, 0)  # no hover highlight in the screenshot
    target = Path(os.environ.get("DIMR_SCREENSHOT") or tmp_path / "screenshot.png")
    target = target.with_name(target.stem + suffix + target.suffix)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    shutil.copyfile(tmp_path / "page.png", target)


def image_sources(page, selector):
    return page.locator(f"{selector} img").evaluate_all("images => images.map(i => i.src)")


def assert_layout(page):
    assert page.evaluate(LAYOUT_PROBLEMS, ".pixelated") == []


def open_tab(page, name):
    """Click a tab; on a narrow screen Gradio moves the tabs that do not fit into a "More tabs" menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() == 0:
        page.get_by_label("More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=name)
    tab.click()


def pick_classes(page, box, searches):
    for text, option in searches:
        box.get_by_role("combobox").fill(text)
        page.get_by_role("option", name=option).click()
    page.keyboard.press("Escape")  # close the option list


@pytest.mark.parametrize("browser_page", WIDTHS, indirect=True, ids=[f"{w}px" for w in WIDTHS])
def test_a_student_sees_distortion_branches_and_the_comparison(app_url, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    width = page.viewport_size["width"]
    page.goto(app_url)
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
    page.locator("#generate-button").click()

    # Three samples with a real shape of each class beside them, then one panel row per sample: the transformer
    # (named with its token grid and patch size), the two ConvNeXt branches, and the final output.
    expect(page.locator("#status")).to_contain_text("tiny-dimr: 3 images, 25 steps", timeout=SAMPLING_TIMEOUT_MS)
    expect(page.locator("#gallery img")).to_have_count(3)
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

    # The step slider stays in view while the last panel row is looked at.
    page.locator("#branch-panel img").last.scroll_into_view_if_needed()
    slider = page.locator("#panel-step").bounding_box()
    last_row = page.locator("#branch-panel img").last.bounding_box()
    for box in (slider, last_row):
        assert 0 <= box["y"] and box["y"] + box["height"] <= 900, (slider, last_row)

    if width == 1400:
        save_screenshot(page, "", tmp_path)

    # An early step, from what the run kept: the coarse branch's blocks, no sampling (the status is unchanged).
    slider_box = page.locator("#panel-step").get_by_role("spinbutton")
    slider_box.fill("2")
    slider_box.press("Enter")
    expect(page.locator("#panel-note")).to_contain_text("Branch panel after step 2 of 25")
    expect(page.locator("#branch-panel img")).to_have_count(3 * 4)
    early_panel = image_sources(page, "#branch-panel")
    branch_columns = [i for i in range(12) if i % 4 != 3]
    assert all(early_panel[i] != final_panel[i] for i in branch_columns)
    assert all(early_panel[i] == final_panel[i] for i in range(3, 12, 4))  # the final output stays
    expect(page.locator("#status")).to_contain_text("tiny-dimr: 3 images, 25 steps")

    # What each finer branch changes: the coarse estimate stays, the finer columns become change maps.
    page.locator("#panel-view").get_by_text("what each finer branch changes").click()
    expect(page.locator("#branch-panel").get_by_text("change by 16x16 ConvNeXt", exact=True)).to_have_count(3)
    changes_panel = image_sources(page, "#branch-panel")
    assert [changes_panel[i] == early_panel[i] for i in range(4)] == [True, False, False, True]
    assert_layout(page)

    # The same classes carry over to the baseline, whose one branch is named for what it is.
    page.locator("#model").get_by_role("combobox").click()
    page.get_by_role("option", name="tiny-baseline").click()
    expect(page.locator("#model")).to_contain_text("tiny-baseline")
    page.wait_for_timeout(1000)
    expect(classes.locator(".token")).to_have_text(["ring (4)", "star (3)", "checkerboard (8)"])

    # Compare: both tiny models from the same noise, every sample with the judge's verdict, one row per class.
    open_tab(page, "Compare")
    expect(page.locator("#compare-references img")).to_have_count(10)  # all classes: none picked to flatter
    if width != 1400:  # one sample per class is enough to check the layout at the other widths
        per_class = page.locator("#compare-per-class").get_by_role("spinbutton")
        per_class.fill("1")
        per_class.press("Enter")
    page.locator("#compare-button").click()
    count = 30 if width == 1400 else 10
    expect(page.locator("#compare-status")).to_contain_text(f"tiny-baseline: {count} images",
                                                            timeout=SAMPLING_TIMEOUT_MS)
    expect(page.locator("#compare-status")).to_contain_text("misdrawn")
    for side in ("#compare-dimr", "#compare-baseline"):
        expect(page.locator(f"{side} img")).to_have_count(count)
        verdicts = page.locator(f"{side} .caption-label").all_text_contents()
        assert len(verdicts) == count and all(("✓ recognised, p" in v) != ("✗ misdrawn, p" in v) for v in verdicts)
    expect(page.locator("#compare-rates")).to_contain_text("Measured distortion per class")
    assert_layout(page)
    if width == 1400:
        save_screenshot(page, "-compare", tmp_path)

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
