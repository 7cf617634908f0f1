"""Load on the demo: concurrent `/generate` requests with the bundled tiny DiMR against the real app.

    python benchmarks/load_app.py                  # starts app.py on a free loopback port, stops it at the end
    python benchmarks/load_app.py --url http://127.0.0.1:7860/ --pid PID    # an app you started (loopback only)

Prints, in one run (when it starts the app: also how long `python app.py` took to answer HTTP):
1. baseline: the latency of single requests sent one after another (an idle queue);
2. a burst of --concurrency simultaneous requests: all must succeed; p50 / p95 / max latency from submit to result
   (queueing included: the app samples one request at a time, so the burst drains serially);
3. the server's resident memory (VmRSS of its process) before and after --requests more requests, sent
   --concurrency at a time (and after each of those batches), after the burst has warmed everything up.
Exits with status 1 if any request fails.
"""

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from dimr.config import REPO_ROOT

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_CONCURRENCY = 64  # the app's queue holds 64 requests


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def timed_request(client, request):
    start = time.perf_counter()
    samples = client.predict(**request, api_name="/generate")[0]
    if len(samples) != len(request["classes"]) * request["images_per_class"]:
        raise RuntimeError(f"expected {len(request['classes'])} images, got {len(samples)}")
    return time.perf_counter() - start


def run_batch(client, request, count, concurrency):
    """`count` requests, `concurrency` in flight at a time; returns the latencies (raises on the first failure)."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: timed_request(client, request), range(count)))


def load_test(url, pid, args):
    from gradio_client import Client

    client = Client(url, verbose=False)
    request = dict(model="tiny-dimr", classes=args.classes, images_per_class=1, guidance_scale=1.4,
                   guidance_schedule="constant", guidance_power=1.0, num_inference_steps=args.steps, seed=0,
                   sampler="dpm++2m")
    print(f"app {url} (pid {pid}); each request: tiny-dimr, classes {args.classes}, {args.steps} steps")
    single = run_batch(client, request, 3, 1)
    print(f"baseline, one request at a time: median {statistics.median(single):.2f} s ({len(single)} requests)")

    burst = run_batch(client, request, args.concurrency, args.concurrency)
    print(f"burst of {args.concurrency} concurrent requests: all succeeded; latency p50 {percentile(burst, 50):.2f} s, "
          f"p95 {percentile(burst, 95):.2f} s, max {max(burst):.2f} s")

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
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per request (default 10)")
    parser.add_argument("--classes", nargs="+", default=["ring", "star"], help="shape classes per request")
    args = parser.parse_args()
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 1 <= args.requests <= 1000:
        parser.error("--requests must be 1..1000")
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
