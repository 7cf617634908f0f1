"""A sequence of varied demo requests through the demo's own request path (`dimr.demo.serving.stream`, branch panel on), as a
freshly started app serves them: wall time and peak memory of each, and whether it was the first of its size.

    python benchmarks/demo_requests.py                                   # CPU: a tiny random latent model + VAE
    python benchmarks/demo_requests.py --variant DiMR-XL/2R --device cuda --out benchmarks/results/demo-requests-nvidia-h100.json
    python benchmarks/demo_requests.py --variant DiMR-XL/2R --device cuda --warm-up   # after the app's warm-up

The model is saved with random weights as a model directory (a released variant's architecture with a random VAE
of sd-vae-ft-ema's shape, or `--variant tiny-latent`: a small latent DiMR with a small VAE), then served as
DIMR_MODEL in the device's default acceleration mode ("fast" on CUDA). Each row: model, images, steps, wall_s,
first (the first request of that many images since start), peak_allocated_gib (CUDA: torch's peak allocated
memory during the request) and peak_rss_gib (CPU: the process's peak resident memory during the request). --out
writes the rows as JSON (no machine paths). --warm-up first runs what the app's start-up warm-up runs and prints
how long it took. --vae-peak instead measures how the SD VAE decoder's peak memory grows with its batch.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package from a checkout, installed or not

from dimr import DiMRModel, variant_config  # noqa: E402
from dimr.network.config import VARIANTS  # noqa: E402
from dimr.sampling.loading import SD_VAE_CONFIG  # noqa: E402

TINY_LATENT = "tiny-latent"
# A small latent DiMR (4x8x8 latents, ImageNet's 1000 classes) and a VAE decoding them to 16x16 images.
TINY_LATENT_CONFIG = dict(channels=4, num_classes=1001, norm_type="TDRMSN", stage_configs=[
    dict(block_type="TransformerBlock", dim=64, hidden_dim=128, num_attention_heads=2, num_blocks=2, max_height=4,
         max_width=4, input_feature_ratio=2),
    dict(block_type="ConvNeXtBlock", dim=32, hidden_dim=64, kernel_size=3, num_blocks=1, max_height=8, max_width=8),
])
TINY_VAE_CONFIG = dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                       norm_num_groups=32)
DEFAULT_SEQUENCE = (1, 4, 4, 1, 16, 16)  # images per request, in order
GIB = 2**30


def save_random_model(variant, path, device):
    """A model directory with random weights: `variant`'s network and a VAE beside it (vae/)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    config = TINY_LATENT_CONFIG if variant == TINY_LATENT else variant_config(variant)
    with torch.device(device):
        DiMRModel.from_config(config).save_pretrained(path)
    AutoencoderKL(**(TINY_VAE_CONFIG if variant == TINY_LATENT else SD_VAE_CONFIG)).save_pretrained(path / "vae")


class PeakMemory:
    """Peak memory during a block: torch's allocated bytes on CUDA, the process's resident set (VmHWM) on CPU."""

    def __init__(self, device):
        self.device = device
        self.allocated_gib = self.rss_gib = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.allocated_gib = torch.cuda.max_memory_allocated(self.device) / GIB
        else:
            status = Path("/proc/self/status").read_text().splitlines()
            self.rss_gib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024 / GIB


def run_sequence(model_dir, label, sequence, steps, device, warm_up):
    from dimr.demo import batching, catalogue, serving
    from dimr.demo.request import Request

    os.environ.update(DIMR_MODEL=str(model_dir), DIMR_DEVICE=str(device))
    if warm_up:
        start = time.perf_counter()
        load = lambda: serving.load(str(model_dir))  # noqa: E731
        load()
        for images, guided in batching.warm_up_batches():
            batching.run_shape(load, images, guided)
        print(f"warm-up (load + {len(batching.warm_up_batches())} network batches): "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    classes = catalogue.default_classes(str(model_dir))
    rows, seen = [], set()
    for images in sequence:
        per_class = max(1, images // len(classes))
        chosen = classes[: images // per_class]
        request = Request.check(model=str(model_dir), classes=chosen, images_per_class=per_class,
                                num_inference_steps=steps)  # guidance: the model's default
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            generation = list(serving.stream(request))[-1]
            wall = time.perf_counter() - start
        assert len(generation.images) == images
        rows.append(dict(model=label, images=images, steps=steps, wall_s=round(wall, 3), first=images not in seen,
                         peak_allocated_gib=None if peak.allocated_gib is None else round(peak.allocated_gib, 2),
                         peak_rss_gib=None if peak.rss_gib is None else round(peak.rss_gib, 2)))
        seen.add(images)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def vae_decode_peaks(device, batches=(1, 2, 4)):
    """Peak memory above the start of one sd-vae-ft-ema-shaped decoder call (random weights) per batch of 256x256
    images, in the VAE dtype the device's default mode uses (float32 on CPU, bf16 on CUDA)."""
    from diffusers import AutoencoderKL

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = AutoencoderKL(**SD_VAE_CONFIG).to(device, dtype).eval()
    with torch.inference_mode():
        vae.decode(torch.randn(1, 4, 32, 32, device=device, dtype=dtype))
        for batch in batches:
            latents = torch.randn(batch, 4, 32, 32, device=device, dtype=dtype)
            with PeakMemory(device) as start:
                pass
            with PeakMemory(device) as peak:
                vae.decode(latents)
            before, after = (start.allocated_gib, peak.allocated_gib) if device.type == "cuda" else \
                (start.rss_gib, peak.rss_gib)
            print(f"VAE decode of {batch} image(s) at 256x256 ({dtype}): peak {after - before:.2f} GiB above the "
                  f"start", flush=True)


def table(rows, device_name):
    lines = [f"device: {device_name}", "| model | images | steps | wall_s | first of its size | peak allocated GiB "
             "| peak RSS GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        first = "yes" if r["first"] else ""
        lines.append(f"| {r['model']} | {r['images']} | {r['steps']} | {r['wall_s']:.2f} | {first} "
                     f"| {r['peak_allocated_gib'] or ''} | {r['peak_rss_gib'] or ''} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default=TINY_LATENT, choices=[TINY_LATENT, *VARIANTS],
                        help="the architecture to serve with random weights (default: tiny-latent)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, nargs="+", default=DEFAULT_SEQUENCE,
                        help="images per request, in order (default: 1 4 4 1 16 16)")
    parser.add_argument("--warm-up", action="store_true", help="run the app's start-up warm-up first")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--vae-peak", action="store_true",
                        help="only measure the SD VAE decoder's peak memory for 1, 2 and 4 images, then exit")
    parser.add_argument("--keep-model", type=Path,
                        help="save the random model directory here and keep it (e.g. for load_app.py)")
    args = parser.parse_args()
    for images in args.images:
        if not 1 <= images <= 16:
            parser.error(f"--images {images}: a demo request has 1..16 images")
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.vae_peak:
        vae_decode_peaks(device)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.keep_model or Path(tmp) / "model"
        if not (model_dir / "config.json").is_file():
            save_random_model(args.variant, model_dir, device)
        rows = run_sequence(model_dir, f"{args.variant} (random weights)", args.images, args.steps, device,
                            args.warm_up)
    print(table(rows, device_name))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([{**row, "device": device_name, "warmed_up": args.warm_up} for row in rows],
                                       indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
