"""Debian's chromium driven by Playwright (never `playwright install`, which downloads a browser of its own), for the
browser tests and scripts/screenshots.py, and the page checks they share."""

import contextlib
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000
SAMPLING_TIMEOUT_MS = 240_000  # a shared CI machine may be slow
PHONE_HEIGHT = 844  # a 390 px wide phone's screen
SCREEN_HEIGHT = 900


def screen_height(width):
    return PHONE_HEIGHT if width < 500 else SCREEN_HEIGHT


@contextlib.contextmanager
def chromium_page(width, profile_dir):
    """A new page of a headless chromium with a fresh profile, `width` px wide and a screen's height."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: `apt-get install -y chromium`")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile_dir, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": screen_height(width)})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        context.close()


def open_tab(page, name):
    """Click a tab: every tab is in the tab row, at every width (no "More tabs" menu)."""
    page.get_by_role("tab", name=name, exact=True).click()


def generate(page, expected_status):
    """Press Generate and wait until the status line says `expected_status` (e.g. "tiny-dimr: 4 images")."""
    from playwright.sync_api import expect

    page.locator("#generate-button").click()
    expect(page.locator("#status")).to_contain_text(expected_status, timeout=SAMPLING_TIMEOUT_MS)


def load_images(page):
    """Galleries load their images lazily: scroll each into view and wait until it is decoded."""
    for image in page.locator(".pixelated img:visible").all():
        image.scroll_into_view_if_needed()
        image.evaluate("i => i.decode()")
    page.evaluate("window.scrollTo(0, 0)")
