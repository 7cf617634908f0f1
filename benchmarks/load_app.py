"""Load on the demo: concurrent `/generate` requests against the real app, by default the request a visitor
sends by pressing Generate without changing anything (the model picker's defaults for the bundled tiny DiMR:
its four showcase classes, one image each, its default guidance, 25 steps of the default sampler).

    python benchmarks/load_app.py                  # starts app.py on a free loopback port, stops it at the end
    python benchmarks/load_app.py --url http://127.0.0.1:7860/ --pid PID    # an app you started (loopback only)
    python benchmarks/load_app.py --classes ring star --steps 10 --sampler dpm++2m --guidance 1.4  # another request
    DIMR_MODEL=DIR python benchmarks/load_app.py --model DIR --vary-seed --concurrency 16   # a saved model directory

Prints the request it sends (as JSON), then, in one run (when it starts the app: also how long `python app.py`
took to answer HTTP):
1. baseline: the latency of single requests sent one after another (an idle queue);
2. a burst of --concurrency simultaneous requests: all must succeed; p50 / p95 / max latency from submit to result
   (queueing included) and images/s over the burst (images the clients received; the app samples requests that
   wait together in shared runs, equal ones once: --vary-seed makes them all different);
3. the server's resident memory (VmRSS of its process) before and after --requests more requests, sent
   --concurrency at a time (and after each of those batches), after the burst has warmed everything up
   (--requests 0 skips this).
Exits with status 1 if any request fails.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx

from dimr.config import REPO_ROOT

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_CONCURRENCY = 64  # the app's queue holds 64 requests
FILES = httpx.Client(timeout=60)  # one connection pool for every image fetched


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def timed_request(client, request):
    """Seconds from submit until the samples and the branch panel are received, fetched as a browser fetches them
    (one GET per image; gradio_client's own download machinery, on this same machine, costs several times the
    server's work)."""
    start = time.perf_counter()
    samples, panel = client.predict(**request, api_name="/generate")[:2]
    images = len(request["classes"]) * request["images_per_class"]
    if len(samples) != images:
        raise RuntimeError(f"expected {images} images, got {len(samples)}")
    for item in samples + panel:
        FILES.get(item["image"]["url"]).raise_for_status()
    return time.perf_counter() - start


def run_batch(client, request, count, concurrency, vary_seed=False):
    """`count` requests, `concurrency` in flight at a time (with vary_seed, request k has seed k, so that no two are
    equal); returns the latencies (raises on the first failure)."""
    requests = [{**request, "seed": k} if vary_seed else request for k in range(count)]
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda r: timed_request(client, r), requests))


def default_request(model="tiny-dimr"):
    """The /generate arguments of a visitor who presses Generate without changing anything."""
    from dimr import catalogue
    from dimr.pipeline import DEFAULT_SAMPLER

    labels = catalogue.model_labels(model)
    return dict(model=model, classes=[labels.name(c) for c in catalogue.default_classes(model)], images_per_class=1,
                guidance_scale=catalogue.default_guidance(model), guidance_schedule="constant", guidance_power=1.0,
                num_inference_steps=catalogue.default_steps(model), seed=0, sampler=DEFAULT_SAMPLER)


def chosen_request(args):
    request = default_request(args.model)
    chosen = dict(classes=args.classes, num_inference_steps=args.steps, sampler=args.sampler,
                  guidance_scale=args.guidance, images_per_class=args.images_per_class)
    return {**request, **{k: v for k, v in chosen.items() if v is not None}}


def load_test(url, pid, args):
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    request = chosen_request(args)
    images = len(request["classes"]) * request["images_per_class"]
    print(f"app {url} (pid {pid}); each request: {json.dumps(request)}")
    single = run_batch(client, request, 3, 1)
    print(f"baseline, one request at a time: median {statistics.median(single):.2f} s ({len(single)} requests)")

    start = time.perf_counter()
    burst = run_batch(client, request, args.concurrency, args.concurrency, args.vary_seed)
    wall = time.perf_counter() - start
    seeds = "seeds 0.." + str(args.concurrency - 1) if args.vary_seed else "all equal"
    print(f"burst of {args.concurrency} concurrent requests ({seeds}): all succeeded in {wall:.1f} s; latency "
          f"p50 {percentile(burst, 50):.2f} s, p95 {percentile(burst, 95):.2f} s, max {max(burst):.2f} s; "
          f"{args.concurrency * images / wall:.2f} images/s")
    if not args.requests:
        return
    before, trail = rss_mib(pid), []
    start = time.perf_counter()
    for sent in range(0, args.requests, args.concurrency):
        run_batch(client, request, min(args.concurrency, args.requests - sent), args.concurrency)
        trail.append(rss_mib(pid))
    print(f"{args.requests} more requests ({args.concurrency} at a time) in {time.perf_counter() - start:.1f} s: "
          f"server RSS {before:.0f} MiB before, {trail[-1]:.0f} MiB after ({trail[-1] - before:+.0f} MiB); "
          f"after each {args.concurrency}: {', '.join(f'{m:.0f}' for m in trail)} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app (loopback only); default: start app.py here")
    parser.add_argument("--pid", type=int, help="the running app's process id (for its memory); needed with --url")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight at once (default 20)")
    parser.add_argument("--requests", type=int, default=100, help="requests for the memory check (default 100)")
    parser.add_argument("--model", default="tiny-dimr",
                        help="a model the app offers (a directory must also be the app's DIMR_MODEL)")
    parser.add_argument("--steps", type=int, help="sampling steps per request (default: the demo's)")
    parser.add_argument("--classes", nargs="+", help="classes per request (default: the model's showcase classes)")
    parser.add_argument("--images-per-class", type=int, help="images per class (default 1)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the demo's for the model)")
    parser.add_argument("--sampler", help="sampler name (default: the demo's)")
    parser.add_argument("--vary-seed", action="store_true",
                        help="give the burst's requests seeds 0, 1, ... (equal requests are sampled only once)")
    args = parser.parse_args()
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 0 <= args.requests <= 1000:
        parser.error("--requests must be 0..1000")
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            parser.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}); this sends real load")
        if args.pid is None:
            parser.error("--pid is needed with --url (the server's process, for its memory)")
        load_test(args.url, args.pid, args)
        return 0
    # The tests' server helper, loaded from its file (tests/ is no package).
    spec = importlib.util.spec_from_file_location("app_server", REPO_ROOT / "tests" / "app_server.py")
    app_server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_server)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, app_server.running_app(tmp) as (url, process):
        print(f"`python app.py` answered HTTP after {time.perf_counter() - start:.1f} s")
        load_test(url, process.pid, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
