"""Redraw the README's screenshots from the real app:

    python scripts/screenshots.py

starts `python app.py` (offline, on a free loopback port, with caches of its own), presses Generate and Compare
without changing anything, and writes
    assets/screenshot.png           the Generate tab at 1400 px: the whole page
    assets/screenshot-compare.png   the Compare tab at 1400 px: the whole page
    assets/screenshot-phone.png     the Generate tab at 390 px: the first screen, the button and the first samples
Run it again whenever the bundled models change. Needs Debian's chromium (`apt-get install -y chromium`).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' helpers: the app as a server, chromium

from app_server import running_app  # noqa: E402
from browser import chromium_page, generate, load_images, open_tab  # noqa: E402

DESKTOP, PHONE = 1400, 390


def desktop(url, out, tmp):
    with chromium_page(DESKTOP, Path(tmp) / "desktop") as page:
        page.goto(url)
        generate(page, "tiny-dimr: 4 images")
        page.wait_for_timeout(1000)  # the panel's follow-up update: the real shapes
        save(page, out / "screenshot.png", full_page=True)
        open_tab(page, "Compare")
        page.locator("#compare-button").click()
        page.locator("#compare-status").get_by_text("tiny-baseline: ").wait_for(timeout=240_000)
        save(page, out / "screenshot-compare.png", full_page=True)


def phone(url, out, tmp):
    with chromium_page(PHONE, Path(tmp) / "phone") as page:
        page.goto(url)
        generate(page, "tiny-dimr: 4 images")
        page.wait_for_timeout(1000)
        load_images(page)  # and back to the top
        page.mouse.move(0, 0)
        page.screenshot(path=str(out / "screenshot-phone.png"))  # one screen: what a phone shows after pressing
        print(f"wrote {out / 'screenshot-phone.png'}")


def save(page, path, full_page):
    load_images(page)
    page.mouse.move(0, 0)  # no hover highlight
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="where to write them (default: assets/)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, running_app(tmp) as (url, _):
        desktop(url, args.out, tmp)
        phone(url, args.out, tmp)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
