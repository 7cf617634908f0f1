"""The demo in a real browser: Debian's chromium, driven by Playwright, against `python app.py`.

A user picks a class, generates, and sees the samples and the branch panel; moving the step slider shows an earlier
step without sampling again; the compare tab shows the tiny DiMR and the baseline side by side; the ImageNet class
picker finds classes by synonym. The test saves screenshots (to $DIMR_SCREENSHOT when set, e.g.
assets/screenshot.png for the README, and the compare tab beside it as screenshot-compare.png).
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
SAMPLING_TIMEOUT_MS = 180_000  # a shared CI machine may be slow


@pytest.fixture
def browser_page(tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        context.close()


def save_screenshot(page, suffix, tmp_path):
    """The whole page, to $DIMR_SCREENSHOT (with `suffix` before .png) or the test's temporary directory."""
    target = Path(os.environ.get("DIMR_SCREENSHOT") or tmp_path / "screenshot.png")
    target = target.with_name(target.stem + suffix + target.suffix)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    shutil.copyfile(tmp_path / "page.png", target)


def image_sources(page, selector):
    return page.locator(f"{selector} img").evaluate_all("images => images.map(i => i.src)")


def test_pick_a_class_generate_and_see_every_branch(browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    with running_app(tmp_path) as (url, _):
        page.goto(url)
        expect(page.locator("#guidance").get_by_role("spinbutton")).to_have_value("3")  # the shapes models' default
        classes = page.locator("#classes")
        classes.get_by_title("Clear").click()  # drop the default classes, then search for others
        for name, option in [("ring", "ring (4)"), ("sta", "star (3)"), ("checker", "checkerboard (8)")]:
            classes.get_by_role("combobox").fill(name)
            page.get_by_role("option", name=option).click()
        expect(classes.locator(".token")).to_have_text(["ring (4)", "star (3)", "checkerboard (8)"])
        page.keyboard.press("Escape")  # close the option list
        page.locator("#generate-button").click()

        # Three samples, then one panel row per sample: the 8x8, 16x16 and 32x32 branches and the final output.
        expect(page.locator("#status")).to_contain_text("tiny-dimr: 3 images, 25 steps", timeout=SAMPLING_TIMEOUT_MS)
        expect(page.locator("#gallery img")).to_have_count(3)
        expect(page.locator("#gallery")).to_contain_text("ring")
        expect(page.locator("#branch-panel img")).to_have_count(3 * 4)
        for caption in ["8x8 branch", "16x16 branch", "32x32 branch"]:
            expect(page.locator("#branch-panel").get_by_text(caption, exact=True)).to_have_count(3)
        for caption in ["final: ring", "final: star", "final: checkerboard"]:
            expect(page.locator("#branch-panel").get_by_text(caption, exact=True)).to_have_count(1)
        for image in page.locator("#gallery img, #branch-panel img").all():
            expect(image).to_have_js_property("complete", True)
            assert image.evaluate("i => i.naturalWidth") == 256
        final_panel = image_sources(page, "#branch-panel")

        page.mouse.move(0, 0)  # no hover highlight in the screenshot
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

        # Compare: the tiny DiMR and the baseline, same classes (the four default shapes) and seed, side by side.
        page.get_by_role("tab", name="Compare with the baseline").click()
        page.locator("#compare-button").click()
        expect(page.locator("#compare-status")).to_contain_text("tiny-baseline: 4 images", timeout=SAMPLING_TIMEOUT_MS)
        for side in ("#compare-dimr", "#compare-baseline"):
            expect(page.locator(f"{side} img")).to_have_count(4)
            expect(page.locator(side)).to_contain_text("checkerboard")
        page.mouse.move(0, 0)
        save_screenshot(page, "-compare", tmp_path)
        page.get_by_role("tab", name="Generate").click()

        # ImageNet models: the class picker holds the 1000 classes, found by any synonym.
        page.locator("#model").get_by_role("combobox").click()
        page.get_by_role("option", name="DiMR-XL/2R").click()
        expect(page.locator("#classes")).to_contain_text("Classes (1000")
        classes.get_by_role("combobox").fill("Carcharodon")
        expect(page.get_by_role("option")).to_have_count(1)
        expect(page.get_by_role("option")).to_contain_text(
            "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias (2)")
