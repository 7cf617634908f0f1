"""A class on one laptop: concurrent `/generate` requests against the real app, each the request a visitor sends by
pressing Generate (by default without changing anything: the bundled tiny DiMR's four showcase classes, one image
each, its default guidance, 25 steps of the default sampler), compared with the sampling alone.

    python benchmarks/load_app.py                  # starts app.py on a free loopback port, stops it at the end
    python benchmarks/load_app.py --url http://127.0.0.1:7860/ --pid PID    # an app you started (loopback only)
    python benchmarks/load_app.py --classes ring star --steps 10 --sampler dpm++2m --guidance 1.4  # another request
    python benchmarks/load_app.py --class-mix      # each visitor its own classes (as many as the request has)
    DIMR_MODEL=DIR python benchmarks/load_app.py --model DIR --concurrency 16   # a saved model directory

Prints the request it sends (as JSON), then, in one run on this machine:
1. the floor: the --concurrency requests of the burst below (seeds 0, 1, ...) sampled back to back in this process
   by the pipeline itself, as the app samples a request (branch trace for its panel; the server's CPU threads);
2. one request alone through the app (median of 3, one after another): submit to samples and panel received;
3. a burst of --concurrency simultaneous requests with seeds 0, 1, ...: p50 / p95 / max latency from submit to
   every image received (queueing included), and p95 / floor;
4. a burst of --concurrency simultaneous equal requests: p95, and p95 / one request alone;
5. the server's resident memory (VmRSS of its process) before and after --requests more requests with new seeds,
   sent --concurrency at a time, and after each of those batches;
then the table of docs/serving.md. With --class-mix every request of the bursts and the floor has its own classes (as
many as the request has, drawn from the model's classes with the request's seed), as a class of visitors picking
their own; the equal burst repeats the first of them. A request counts as answered when it returns every sample and the whole branch
panel and every image file can be fetched, as a browser fetches them; exits with status 1 if any is not.
"""

import argparse
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_CONCURRENCY = 64  # the app's queue holds 64 requests
FILES = httpx.Client(timeout=60)  # one connection pool for every image fetched
# The targets of docs/serving.md.
VARIED_TARGET = 1.3  # p95 of the burst of different requests / the floor
EQUAL_TARGET = 3.0  # p95 of the burst of equal requests / one request alone
MIX = ", each its own classes"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def default_request(model="tiny-dimr"):
    """The /generate arguments of a visitor who presses Generate without changing anything."""
    from dimr.demo import catalogue
    from dimr.sampling.pipeline import DEFAULT_SAMPLER

    labels = catalogue.model_labels(model)
    return dict(model=model, classes=[labels.name(c) for c in catalogue.default_classes(model)], images_per_class=1,
                guidance_scale=catalogue.default_guidance(model), guidance_schedule="constant", guidance_power=1.0,
                num_inference_steps=catalogue.default_steps(model), seed=0, sampler=DEFAULT_SAMPLER)


def chosen_request(args):
    request = default_request(args.model)
    chosen = dict(classes=args.classes, num_inference_steps=args.steps, sampler=args.sampler,
                  guidance_scale=args.guidance, images_per_class=args.images_per_class)
    return {**request, **{k: v for k, v in chosen.items() if v is not None}}


def seeded(request, seeds, class_mix=False):
    """The request with each seed; with class_mix, each also with its own classes, drawn with its seed."""
    if not class_mix:
        return [{**request, "seed": seed} for seed in seeds]
    from dimr.demo import catalogue

    labels = catalogue.model_labels(request["model"])
    names = [labels.name(c) for c in range(len(labels))]
    return [{**request, "seed": seed, "classes": random.Random(seed).sample(names, len(request["classes"]))}
            for seed in seeds]


def sampling_floor(request, count, class_mix=False):
    """Seconds to sample `count` requests (seeds 0..count-1) back to back with the pipeline, as the app samples one
    (its settings, the branch trace of the panel's steps, the server's CPU threads); after one untimed run."""
    import torch

    from dimr.demo import panel, serving
    from dimr.demo.request import Request

    torch.set_num_threads(serving.cpu_threads(request["model"]))
    checked = [Request.check(**r) for r in seeded(request, range(count), class_mix)]
    pipe = serving.load(request["model"], request["sampler"])
    pipe.set_progress_bar_config(disable=True)

    def sample(r):
        steps = r.num_inference_steps
        pipe(r.labels, guidance_scale=r.guidance_scale, guidance_schedule=r.guidance_schedule,
             guidance_power=r.guidance_power, num_inference_steps=steps,
             generator=torch.Generator(pipe.device).manual_seed(r.seed), output_type="np", return_branches=True,
             branch_steps=panel.panel_steps(pipe, steps))

    sample(checked[0])
    start = time.perf_counter()
    for r in checked:
        sample(r)
    return time.perf_counter() - start


def timed_request(client, request, panel_columns):
    """Seconds from submit until the samples and the branch panel are received, each image fetched as a browser
    fetches it (one GET per image; gradio_client's own download machinery, on this same machine, costs several
    times the server's work). Raises unless every sample and panel image came back."""
    start = time.perf_counter()
    samples, panel = client.predict(**request, api_name="/generate")[:2]
    images = len(request["classes"]) * request["images_per_class"]
    if len(samples) != images or len(panel) != images * panel_columns:
        raise RuntimeError(f"expected {images} samples and {images * panel_columns} panel images, got {len(samples)} "
                           f"and {len(panel)}")
    for item in samples + panel:
        FILES.get(item["image"]["url"]).raise_for_status()
    return time.perf_counter() - start


def burst(client, requests, panel_columns):
    """All `requests` at once; their latencies (raises on the first request not answered)."""
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: timed_request(client, r, panel_columns), requests))


def spread(latencies):
    return (f"p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s, "
            f"max {max(latencies):.2f} s")


def load_test(url, pid, request, floor, args):
    from gradio_client import Client

    from dimr.demo import catalogue

    client = Client(url, verbose=False, download_files=False)
    columns = len(catalogue.model_branches(request["model"])) + 1
    n = args.concurrency
    timed_request(client, request, columns)  # the first request of a fresh server loads its model
    single = statistics.median(timed_request(client, request, columns) for _ in range(3))
    print(f"one request alone through the app: {single:.2f} s (median of 3)")

    varied = burst(client, seeded(request, range(n), args.class_mix), columns)
    mix = MIX if args.class_mix else ""
    print(f"burst of {n} requests with seeds 0..{n - 1}{mix}: all answered; {spread(varied)}; "
          f"p95 / floor {percentile(varied, 95) / floor:.2f} (target <= {VARIED_TARGET})")
    equal = burst(client, seeded(request, [0], args.class_mix) * n, columns)
    print(f"burst of {n} equal requests: all answered; {spread(equal)}; "
          f"p95 / one alone {percentile(equal, 95) / single:.2f} (target <= {EQUAL_TARGET})")

    memory = ""
    if args.requests:
        before, trail = rss_mib(pid), []
        start = time.perf_counter()
        for sent in range(0, args.requests, n):
            first_seed = n + sent  # new seeds: every request is sampled
            burst(client, seeded(request, range(first_seed, first_seed + min(n, args.requests - sent)), args.class_mix),
                  columns)
            trail.append(rss_mib(pid))
        print(f"{args.requests} more requests ({n} at a time, new seeds) in {time.perf_counter() - start:.1f} s: "
              f"server RSS {before:.0f} MiB before, {trail[-1]:.0f} MiB after ({trail[-1] - before:+.0f} MiB); "
              f"after each {n}: {', '.join(f'{m:.0f}' for m in trail)} MiB")
        memory = (f"| server memory over {args.requests} more requests | {before:.0f} → {trail[-1]:.0f} MiB "
                  f"({trail[-1] - before:+.0f}); after each {n}: {', '.join(f'{m:.0f}' for m in trail)} | flat |")

    print()
    print("| measured | result | target |")
    print("|---|---|---|")
    print(f"| floor: {n} requests sampled back to back in-process | {floor:.1f} s | |")
    print(f"| one request alone through the app | {single:.2f} s | |")
    print(f"| {n} concurrent requests, seeds 0..{n - 1}{mix} | {spread(varied)}; "
          f"**p95 = {percentile(varied, 95) / floor:.2f} x floor** | <= {VARIED_TARGET} x floor |")
    print(f"| {n} concurrent equal requests | {spread(equal)}; **p95 = {percentile(equal, 95) / single:.2f} x one "
          f"alone** | <= {EQUAL_TARGET} x one alone |")
    if memory:
        print(memory)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app (loopback only); default: start app.py here")
    parser.add_argument("--pid", type=int, help="the running app's process id (for its memory); needed with --url")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight at once (default 20)")
    parser.add_argument("--requests", type=int, default=200, help="requests for the memory check (default 200)")
    parser.add_argument("--model", default="tiny-dimr",
                        help="a model the app offers (a directory must also be the app's DIMR_MODEL)")
    parser.add_argument("--steps", type=int, help="sampling steps per request (default: the demo's)")
    parser.add_argument("--classes", nargs="+", help="classes per request (default: the model's showcase classes)")
    parser.add_argument("--images-per-class", type=int, help="images per class (default 1)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the demo's for the model)")
    parser.add_argument("--sampler", help="sampler name (default: the demo's)")
    parser.add_argument("--class-mix", action="store_true",
                        help="each request its own classes, drawn with its seed (default: all the same classes)")
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
    request = chosen_request(args)
    print(f"each request: {json.dumps(request)}")
    floor = sampling_floor(request, args.concurrency, args.class_mix)
    print(f"floor: {args.concurrency} requests (seeds 0..{args.concurrency - 1}) sampled back to back in this "
          f"process: {floor:.1f} s ({floor / args.concurrency:.2f} s each)")
    if args.url:
        load_test(args.url, args.pid, request, floor, args)
        return 0
    # The tests' server helper, loaded from its file (tests/ is no package).
    spec = importlib.util.spec_from_file_location("app_server", ROOT / "tests" / "app_server.py")
    app_server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app_server)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, app_server.running_app(tmp) as (url, process):
        print(f"app {url} (pid {process.pid}): `python app.py` answered HTTP after {time.perf_counter() - start:.1f} s")
        load_test(url, process.pid, request, floor, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
