"""CPU forward time of DiMR-XL/2R (random weights, float32), ours next to the official way, in one run.

    python benchmarks/forward_cpu.py [--variant DiMR-XL/2R] [--batch 2] [--repeats 3] [--warmup 1]
    python benchmarks/forward_cpu.py --tiny --warmup 0 --repeats 1      # small model (tests)

The official blocks wrap every block in `torch.utils.checkpoint.checkpoint` (reentrant) whatever the grad
mode, and cast q, k, v to float32 before attention (a no-op in this float32 benchmark); its sampler calls the
network under `torch.no_grad`. Rows:
  ours, inference_mode            how our pipeline calls the network
  ours, grad enabled              a plain call with autograd recording (activations kept)
  official style, grad enabled    checkpoint every block, autograd on
  official style, no_grad         the same under torch.no_grad, as the official sampler runs it
So the official-style rows differ from ours only by checkpointing and grad mode. Each row: `--warmup` untimed forwards, then the median of `--repeats` (rows interleaved).
"""

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package from a checkout, installed or not

from sampling import TINY_CONFIG, gflop_per_image  # noqa: E402

from dimr import DiMRModel, variant_config  # noqa: E402
from dimr.network.config import normalize_official_config  # noqa: E402


class OfficialBlock(torch.nn.Module):
    """A block as the official code runs it when `official` is set: inside a reentrant checkpoint, whatever the
    grad mode (our own gradient checkpointing only acts when gradients are on)."""

    def __init__(self, block):
        super().__init__()
        self.block = block
        self.official = False

    def forward(self, x, c):
        return checkpoint(self.block, x, c, use_reentrant=True) if self.official else self.block(x, c)


def wrap_blocks(model):
    """Put every block of `model` in an OfficialBlock (this benchmark's own model; key names change)."""
    for stage in model.stages:
        stage.blocks = torch.nn.ModuleList(OfficialBlock(block) for block in stage.blocks)


def official_style(model, enabled):
    for module in model.modules():
        if isinstance(module, OfficialBlock):
            module.official = enabled


def time_once(model, inputs, grad_context):
    with grad_context():
        start = time.perf_counter()
        out = model.forward_branches(*inputs)[-1]
        elapsed = time.perf_counter() - start
    del out
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="DiMR-XL/2R")
    parser.add_argument("--tiny", action="store_true", help="the small benchmark model instead of --variant")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    # Reentrant checkpointing under no_grad warns that no input needs a gradient: expected in that row.
    warnings.filterwarnings("ignore", message="None of the inputs have requires_grad")
    torch.manual_seed(0)
    config = normalize_official_config(TINY_CONFIG) if args.tiny else variant_config(args.variant)
    model_name = "tiny" if args.tiny else args.variant
    model = DiMRModel(**config).eval()
    wrap_blocks(model)
    size = model.sample_size
    inputs = (
        torch.randn(args.batch, model.config.channels, size, size),
        torch.full((args.batch,), 500.0),
        torch.randint(0, model.null_class, (args.batch,)),
    )
    print(f"{model_name}: {sum(p.numel() for p in model.parameters()):,} params, float32, batch {args.batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, warmup {args.warmup}, "
          f"median of {args.repeats}", flush=True)

    rows = [
        ("ours, inference_mode", False, torch.inference_mode),
        ("ours, grad enabled", False, contextlib.nullcontext),
        ("official style, grad enabled", True, contextlib.nullcontext),
        ("official style, no_grad", True, torch.no_grad),
    ]
    # Rows take turns within each repeat, so a change in the load of this shared machine hits all of them.
    times = {name: [] for name, _, _ in rows}
    for repeat in range(args.warmup + args.repeats):
        this_round = []
        for name, official, grad_context in rows:
            official_style(model, official)
            this_round.append(time_once(model, inputs, grad_context))
            if repeat >= args.warmup:
                times[name].append(this_round[-1])
        print(f"  {'warm-up' if repeat < args.warmup else 'repeat'} {repeat + 1}: "
              + ", ".join(f"{t:.2f} s" for t in this_round), flush=True)
    results = [(name, statistics.median(t)) for name, t in times.items()]

    gflop = gflop_per_image(config)
    medians = dict(results)
    grad_base, nograd_base = medians["official style, grad enabled"], medians["official style, no_grad"]
    print(f"\n| forward ({model_name}, batch {args.batch}, fp32 CPU) | median s | GFLOP/s "
          "| speed vs official style, grad | speed vs official style, no_grad |")
    print("|---|---|---|---|---|")
    for name, median in results:
        print(f"| {name} | {median:.3g} | {gflop * args.batch / median:.3g} | {grad_base / median:.2f}x "
              f"| {nograd_base / median:.2f}x |")


if __name__ == "__main__":
    main()
