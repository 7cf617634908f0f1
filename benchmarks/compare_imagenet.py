"""Time and peak GPU memory of ImageNet comparison requests (DiT-XL/2 and DiMR-XL/2R from the same noise).

    python benchmarks/compare_imagenet.py                          # XL sizes, random weights, the GPU
    python benchmarks/compare_imagenet.py --tiny --device cpu      # small models, 2 steps (CI)

Both models get random weights of the released architectures (speed does not depend on them) in bf16 files
laid out as the app finds them (DIMR_MODEL = a DiMR directory with vae/, facebook/DiT-XL-2-256 in a Hugging
Face cache of its own, both in a temporary directory), so a request runs exactly as the app's
/compare_imagenet does: `dimr.demo.imagenet_compare.stream_comparison` on the demo's device and acceleration mode, DiMR
with its branch panel and previews, then DiT, both decoded. Per batch: the first request (loading, compilation,
CUDA graph capture) and --repeats more, each request's seconds and the GPU memory it allocated at its peak
beyond what was held before it. Results go to --out (default benchmarks/results/compare-imagenet-<device>.json).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import huggingface_hub.constants
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not

from sampling import SD_VAE_CONFIG, TINY_CONFIG, TINY_VAE_CONFIG, Log, device_info, randomize, slug  # noqa: E402

DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
DIT_TINY = dict(DIT_XL_2, num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=16)
DIT_SCHEDULER = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small models; defaults become 2 steps, batch 1, 1 repeat")
    parser.add_argument("--batches", type=int, nargs="+", help="images per request (default 1 4; tiny: 1)")
    parser.add_argument("--steps", type=int, help="sampling steps of each model (default 50; tiny: 2)")
    parser.add_argument("--repeats", type=int, help="timed requests after the first, per batch (default 2; tiny: 1)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/compare-imagenet-<device>.json)")
    args = parser.parse_args(argv)
    args.batches = args.batches or ([1] if args.tiny else [1, 4])
    args.steps = args.steps or (2 if args.tiny else 50)
    args.repeats = args.repeats or (1 if args.tiny else 2)
    return args


def write_models(root, tiny):
    """Random DiMR (+ VAE) in root/dimr and a random DiT repo in root/hub's cache layout; returns the DiMR path."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    from dimr.demo.dit import DIT_REPO
    from dimr.network.config import normalize_official_config, variant_config
    from dimr.network.model import DiMRModel

    torch.manual_seed(0)
    dimr_config = normalize_official_config(TINY_CONFIG) if tiny else variant_config("DiMR-XL/2R")
    vae_config = TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG
    dimr_dir = root / "dimr"
    revision = "0" * 40
    repo = root / "hub" / f"models--{DIT_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: half the bytes to write and read
    try:
        randomize(DiMRModel(**dimr_config)).save_pretrained(dimr_dir)
        AutoencoderKL(**vae_config).save_pretrained(dimr_dir / "vae")
        # .bin files, like the hub repo's main branch.
        DiTTransformer2DModel(**(DIT_TINY if tiny else DIT_XL_2)).save_pretrained(snapshot / "transformer",
                                                                                  safe_serialization=False)
        AutoencoderKL(**vae_config).save_pretrained(snapshot / "vae", safe_serialization=False)
    finally:
        torch.set_default_dtype(default_dtype)
    DDIMScheduler(**DIT_SCHEDULER).save_pretrained(snapshot / "scheduler")
    return dimr_dir


def run_request(request, device):
    """One request as the app runs it; (seconds, GiB allocated at the peak beyond what was held before)."""
    from dimr.demo import imagenet_compare

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    comparison = list(imagenet_compare.stream_comparison(request))[-1]
    comparison.dit_gallery(), comparison.dimr.gallery(), comparison.dimr.branch_panel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - held) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def main(argv=None):
    args = parse_args(argv)
    log = Log()
    device = torch.device(args.device)
    info = device_info(device)
    out = Path(args.out) if args.out else (ROOT / "benchmarks" / "results"
                                           / f"compare-imagenet-{slug(info['name'])}.json")
    with tempfile.TemporaryDirectory(prefix="compare-imagenet-") as tmp:
        root = Path(tmp)
        # The demo reads these when a request runs; huggingface_hub read its cache path when it was imported.
        os.environ.update(HF_HUB_OFFLINE="1", DIMR_DEVICE=str(device),
                          DIMR_MODEL=str(write_models(root, args.tiny)))
        huggingface_hub.constants.HF_HUB_CACHE = str(root / "hub")
        log(f"random {'tiny' if args.tiny else 'XL'} models written to {root}")
        from dimr.demo import imagenet_compare, serving
        from dimr.demo.dit import DIT_GUIDANCE

        report = {"device": info,
                  "settings": {"models": "tiny" if args.tiny else "DiMR-XL/2R + DiT-XL/2, random weights",
                               "steps": args.steps, "batches": args.batches, "repeats": args.repeats,
                               "acceleration": serving.acceleration_mode(),
                               "dimr_guidance": imagenet_compare.DIMR_GUIDANCE, "dit_guidance": DIT_GUIDANCE},
                  "requests": {}}
        for batch in args.batches:
            request = imagenet_compare.ComparisonRequest.check(classes=list(range(batch)),
                                                               num_inference_steps=args.steps)
            first, first_peak = run_request(request, device)
            timed = [run_request(request, device) for _ in range(args.repeats)]
            seconds = [s for s, _ in timed]
            peaks = [p for _, p in timed if p is not None]
            report["requests"][str(batch)] = {
                "batch": batch, "first_request_s": first, "first_request_peak_gib": first_peak, "seconds": seconds,
                "median_s": statistics.median(seconds), "peak_extra_gib": max(peaks) if peaks else None}
            log(f"batch {batch}: first request {first:.1f} s, then median {statistics.median(seconds):.2f} s"
                + (f", peak +{max(peaks):.2f} GiB" if peaks else ""))
    if device.type == "cuda":
        report["resident_gib"] = torch.cuda.memory_allocated(device) / 2**30
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
