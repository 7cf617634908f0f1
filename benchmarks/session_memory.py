"""The memory all sessions' kept Generations hold (dimr.demo.kept), against its budget, on the real app: a small budget,
then enough sessions with large requests to exceed it several times over, each session keeping its last Generation for
its branch panel, as a browser's does.

    python benchmarks/session_memory.py                   # budget 32 MB, 10 sessions of 16 images x 150 steps
    python benchmarks/session_memory.py --budget-mb 32 --sessions 12 --steps 100

Starts app.py on a free loopback port with DIMR_KEPT_MB and sends a first request of the same size (the server's own
size: its resident memory after that request, which loads the model), then one request per new session (tiny-dimr,
4 classes x 4 images, seeds 1, 2, ...), one after another. Prints what the sessions' Generations would hold without
the budget, the server's resident memory (VmRSS) after each session, the most of those above the server's own size
against the budget, and the peak while sampling (sampled every 0.1 s: a run's work in flight comes on top); exits with
status 1 when the memory after a session is more than the budget plus --slack-mb above the server's own size
(allocator slack: freed memory the process keeps for reuse).
"""

import argparse
import importlib.util
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not
CLASSES = ["ring", "star", "stripes", "checkerboard"]
BRANCHES = 3  # tiny-dimr's
IMAGE_BYTES = 32 * 32 * 3


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Peak:
    """The largest resident memory of a process, sampled on a thread until stopped."""

    def __init__(self, pid):
        self.pid, self.mib, self._stop = pid, rss_mib(pid), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.wait(0.1):
            self.mib = max(self.mib, rss_mib(self.pid))

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.mib


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mb", type=float, default=32, help="DIMR_KEPT_MB of the server (default 32)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions, one large request each (default 10)")
    parser.add_argument("--steps", type=int, default=150, help="steps per request (default 150)")
    parser.add_argument("--slack-mb", type=float, default=24,
                        help="allowed above the budget for the allocator's slack (default 24)")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 64 or not 1 <= args.steps <= 250 or args.budget_mb <= 0:
        parser.error("--sessions must be 1..64, --steps 1..250, --budget-mb positive")
    from gradio_client import Client

    spec = importlib.util.spec_from_file_location("app_server", ROOT / "tests" / "app_server.py")
    app_server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_server)
    request = dict(model="tiny-dimr", classes=CLASSES, images_per_class=4, guidance_scale=3.0,
                   guidance_schedule="constant", guidance_power=1.0, num_inference_steps=args.steps,
                   sampler="dpm++2m")
    images = len(CLASSES) * request["images_per_class"]
    generation_mb = images * IMAGE_BYTES * (args.steps * BRANCHES + 1) / 2**20
    print(f"each session: {images} images x {args.steps} steps of tiny-dimr, a Generation of {generation_mb:.1f} MB; "
          f"{args.sessions} sessions would keep {args.sessions * generation_mb:.0f} MB without the budget "
          f"({args.sessions * generation_mb / args.budget_mb:.1f} x the budget of {args.budget_mb:g} MB)")
    # glibc raises its mmap threshold as large arrays are freed, then keeps later ones in a heap it never returns:
    # the resident memory would show the allocator's cache, not what is kept. A fixed threshold returns freed arrays.
    env = {"DIMR_KEPT_MB": str(args.budget_mb), "DIMR_MAX_REQUEST_SECONDS": "3600", "MALLOC_MMAP_THRESHOLD_": "131072"}
    with tempfile.TemporaryDirectory() as tmp, app_server.running_app(tmp, env) as (url, process):
        Client(url, verbose=False, download_files=False).predict(**request, seed=0, api_name="/generate")
        own = rss_mib(process.pid)
        print(f"the server's own size (after a first request of this size, which loads the model): {own:.0f} MiB")
        peak, start, trail = Peak(process.pid), time.perf_counter(), []
        for seed in range(1, args.sessions + 1):
            Client(url, verbose=False, download_files=False).predict(**request, seed=seed, api_name="/generate")
            trail.append(rss_mib(process.pid))
        highest = peak.stop()
    above = max(trail) - own
    print(f"{args.sessions} sessions in {time.perf_counter() - start:.0f} s; resident memory after each: "
          f"{', '.join(f'{m:.0f}' for m in trail)} MiB")
    print()
    print("| budget | sessions x Generation | without the budget | server's own size | most after a session, above "
          "own size | peak while sampling |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.budget_mb:g} MB | {args.sessions} x {generation_mb:.1f} MB | "
          f"{args.sessions * generation_mb:.0f} MB | {own:.0f} MiB | **{above:+.0f} MiB** (budget + slack: "
          f"{args.budget_mb + args.slack_mb:g}) | {highest:.0f} MiB |")
    return 0 if above <= args.budget_mb + args.slack_mb else 1


if __name__ == "__main__":
    sys.exit(main())
