"""End-to-end sampling speed: our pipeline in its fastest correct mode vs the official evaluation path.

    python benchmarks/sampling.py --official-repo .official            # DiMR-XL/2R, GPU, batches 1 4 16
    python benchmarks/sampling.py --tiny --device cpu                   # small model, 2 steps (CI)

One run, one device. Both paths sample DiMR-XL/2R with the same random weights (speed does not depend on
them) at 256x256 (latent 4x32x32), 50 steps, guidance 1.4 (the official `cond + 0.4 (cond - uncond)`), and
decode with a randomly initialised SD VAE (sd-vae-ft-ema's architecture): the hub is not needed.
- ours: DiMRPipeline with its default sampler, accelerated by `dimr.network.acceleration` ("fast" on CUDA: bf16,
  compiled blocks, CUDA graphs; "none" on CPU), cond and uncond in one batch.
- official: its network and DPM-Solver "fast" imported from `--official-repo` (see official_path.py), fp16
  autocast, two forwards per step, then the same VAE decode under fp16 autocast as its eval.py.
Each (path, batch) is timed after `--warmup` runs (compile and graph capture happen there) over
`--repeats` runs with CUDA events; the median is reported. Model FLOPs count the forwards actually run
(2 x batch images per step for both paths); MFU divides by the device's dense bf16 peak. Correctness: the
final latents of our mode vs a float32 run of our pipeline (TF32 off) on the same noise.
Results go to benchmarks/results/<device>.json (or --out), rewritten after every measurement.
"""

import argparse
import json
import math
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not

from dimr import DiMRModel, variant_config  # noqa: E402
from dimr.network.acceleration import accelerate_pipeline, default_mode, mode_dtype  # noqa: E402
from dimr.network.config import normalize_official_config  # noqa: E402
from dimr.network.model import TimeDependentParameter  # noqa: E402
from dimr.sampling.loading import SD_VAE_CONFIG  # noqa: E402
from dimr.sampling.pipeline import DEFAULT_SAMPLER, DiMRPipeline, make_scheduler  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, first match wins.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.1)]
TOLERANCE_REL_L2 = 0.02

# A small two-branch model on a 4x16x16 latent and a two-level VAE (32x32 images) for CPU runs.
TINY_CONFIG = {
    "channels": 4, "num_classes": 1001, "norm_type": "TDRMSN",
    "stage_configs": [
        {"block_type": "TransformerBlock", "dim": 64, "hidden_dim": 128, "num_attention_heads": 4,
         "num_blocks": 3, "max_height": 8, "max_width": 8, "input_feature_ratio": 2},
        {"block_type": "ConvNeXtBlock", "dim": 32, "hidden_dim": 64, "kernel_size": 7,
         "num_blocks": 2, "max_height": 16, "max_width": 16},
    ],
}
TINY_VAE_CONFIG = dict(SD_VAE_CONFIG, block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                       sample_size=32)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="small model and VAE; defaults become 2 steps, batch 1, 1 repeat, no warm-up")
    parser.add_argument("--variant", default="DiMR-XL/2R")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 16 4 1; tiny: 1)")
    parser.add_argument("--steps", type=int, help="sampling steps = model evaluations (default 50; tiny: 2)")
    parser.add_argument("--guidance-scale", type=float, default=1.4)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, help="our pipeline's sampler")
    parser.add_argument("--mode", help="our acceleration mode (default: dimr.network.acceleration.default_mode)")
    parser.add_argument("--no-compile", action="store_true", help="fast mode without torch.compile")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="fast mode without CUDA graphs")
    parser.add_argument("--no-ablation", action="store_true", help="skip timing our bf16 mode without compile/graphs")
    parser.add_argument("--warmup", type=int, help="untimed runs per measurement (default 1; tiny: 0)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default 3; tiny: 1)")
    parser.add_argument("--official-repeats", type=int, help="timed runs per official measurement (default --repeats)")
    parser.add_argument("--error-batch", type=int, help="batch for the float32 comparison (default min(4, max batch))")
    parser.add_argument("--official-repo", help="local copy of github.com/qihao067/DiMR (default: .official if present)")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="skip measurements that would start after this many seconds (results so far are kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/<device>.json)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.batches = args.batches or ([1] if tiny else [16, 4, 1])
    args.steps = args.steps or (2 if tiny else 50)
    args.warmup = args.warmup if args.warmup is not None else (0 if tiny else 1)
    args.repeats = args.repeats or (1 if tiny else 3)
    args.official_repeats = args.official_repeats or args.repeats
    args.error_batch = args.error_batch or min(4, max(args.batches))
    if args.official_repo is None and not args.no_official and (ROOT / ".official").is_dir():
        args.official_repo = str(ROOT / ".official")
    return args


class Log:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start

    def __call__(self, message):
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)


def device_info(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)
    else:
        name, peak = platform.processor() or platform.machine() or "cpu", None
    return {"name": name, "type": device.type, "peak_bf16_tflops": peak, "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None}


def randomize(model):
    """Random weights of the official initialisation's scale, with time-dependent parameters that really
    vary with time (the time input only acts through them); uses the global RNG."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.trunc_normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, TimeDependentParameter):
            with torch.no_grad():
                for p in (module.param0, module.param1):
                    p.add_(torch.randn_like(p), alpha=0.1)
                module.nodecay_weight.normal_()
                module.nodecay_bias.normal_()
    return model


def gflop_per_image(config):
    """Forward FLOPs for one image (2 per multiply-add), counted on the meta device."""
    with torch.device("meta"):
        model = DiMRModel(**config)
        size = model.sample_size
        with FlopCounterMode(display=False) as counter:
            model.forward_branches(torch.empty(1, config["channels"], size, size), 500.0, torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops() / 1e9


def timed(device, fn):
    """(seconds, result) of fn(), measured with CUDA events on a GPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    result = fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1000, result


def measure(log, device, name, batch, fn, warmup, repeats):
    """Time fn (which samples `batch` images) after warm-up; median seconds, images/s and extra peak memory."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        seconds, _ = timed(device, fn)
        log(f"{name}, batch {batch}: warm-up {i + 1} took {seconds:.2f} s")
    times = [timed(device, fn)[0] for _ in range(repeats)]
    median = statistics.median(times)
    result = {"batch": batch, "seconds": times, "median_s": median, "images_per_s": batch / median}
    if device.type == "cuda":
        result["peak_extra_gib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
        result["resident_gib"] = resident / 2**30
    log(f"{name}, batch {batch}: {result['images_per_s']:.2f} images/s (median {median:.3f} s of "
        f"{', '.join(f'{t:.3f}' for t in times)})"
        + (f", peak +{result['peak_extra_gib']:.2f} GiB over {result['resident_gib']:.2f} GiB resident"
           if device.type == "cuda" else ""))
    return result


def add_rates(result, gflop_image, steps, peak_tflops, decode_s=None):
    """Model TFLOP/s and MFU for 2 x batch images-worth of forwards per step (cond + uncond)."""
    flops = 2 * result["batch"] * steps * gflop_image * 1e9
    result["model_tflops"] = flops / result["median_s"] / 1e12
    if decode_s is not None:
        result["decode_s"] = decode_s
        result["model_tflops_excluding_decode"] = flops / (result["median_s"] - decode_s) / 1e12
    if peak_tflops:
        result["mfu"] = result["model_tflops"] / peak_tflops
        if decode_s is not None:
            result["mfu_excluding_decode"] = result["model_tflops_excluding_decode"] / peak_tflops
    return result


def compare(latents, reference):
    """How far `latents` are from the float32 `reference`, and whether that is within TOLERANCE_REL_L2."""
    diff = (latents.float() - reference.float())
    rel_l2 = (diff.norm() / reference.norm()).item()  # nan or inf (never within) for a non-finite result
    return {"rel_l2": rel_l2, "max_rel": (diff.abs().max() / reference.abs().max()).item(),
            "finite": bool(torch.isfinite(latents).all()), "within_tolerance": rel_l2 <= TOLERANCE_REL_L2}


def official_decode(vae, latents, device):
    """The official eval decode: the VAE under fp16 autocast on a GPU, then to [0, 1]."""
    context = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), context:
        images = vae.decode(latents / vae.config.scaling_factor).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


def count_host_syncs(device, fn):
    """Number of device-to-host synchronisations fn() performs (CUDA only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None):
    args = parse_args(argv)
    log = Log()
    device = torch.device(args.device)
    info = device_info(device)
    mode = args.mode or default_mode(device)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{slug(info['name'])}.json"
    config = normalize_official_config(TINY_CONFIG) if args.tiny else variant_config(args.variant)
    gflop = gflop_per_image(config)
    report = {
        "device": info,
        "settings": {"model": "tiny" if args.tiny else args.variant, "steps": args.steps, "batches": args.batches,
                     "guidance_scale": args.guidance_scale, "sampler": args.sampler, "mode": mode,
                     "compile": not args.no_compile, "cuda_graphs": not args.no_cuda_graphs,
                     "warmup": args.warmup, "repeats": args.repeats, "official_repeats": args.official_repeats,
                     "gflop_per_image_forward": gflop, "vae": "random AutoencoderKL, "
                     + ("tiny config" if args.tiny else "sd-vae-ft-ema config"), "seed": args.seed},
        "ours": {}, "ours_bf16_eager": {}, "official": {}, "speedup": {}, "notes": [],
    }
    peak = info["peak_bf16_tflops"]
    log(f"device {info['name']} ({device}), torch {torch.__version__}; dense bf16 peak assumed: "
        + (f"{peak} TFLOP/s" if peak else "unknown (no MFU)"))
    log(f"model {report['settings']['model']}: {gflop:.4g} GFLOP per image forward; {args.steps} steps, "
        f"guidance {args.guidance_scale}, batches {args.batches}; our mode {mode!r}, sampler {args.sampler!r}")

    def save():
        for batch in args.batches:
            ours, official = report["ours"].get(str(batch)), report["official"].get(str(batch))
            if ours and official:
                report["speedup"][str(batch)] = ours["images_per_s"] / official["images_per_s"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")

    def in_budget(what):
        if log.elapsed() <= args.max_seconds:
            return True
        report["notes"].append(f"skipped {what}: past --max-seconds {args.max_seconds}")
        log(report["notes"][-1])
        save()
        return False

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = randomize(DiMRModel(**config)).eval()
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if args.tiny else SD_VAE_CONFIG)).eval()
    inputs = {}
    for batch in sorted(set(args.batches + [args.error_batch])):
        generator = torch.Generator(device).manual_seed(args.seed + batch)
        noise = torch.randn(batch, *config_latent_shape(model), generator=generator, device=device)
        labels = torch.randint(0, model.null_class, (batch,), generator=generator, device=device).tolist()
        inputs[batch] = (noise, labels)
    log(f"built models on {device}: ours {sum(p.numel() for p in model.parameters()):,} parameters")

    # The official path first, while our network is still in float32 (it loads the same weights).
    if args.official_repo and not args.no_official:
        run_official(args, log, device, model, config, vae, inputs, gflop, peak, report, save, in_budget)
    else:
        report["notes"].append("official path skipped: no --official-repo (and no .official folder)")
        log(report["notes"][-1])

    pipe = DiMRPipeline(model=model, vae=vae, scheduler=make_scheduler(args.sampler))
    pipe.set_progress_bar_config(disable=True)
    guidance = args.guidance_scale

    def sample(pipeline, batch, output_type="pt"):
        noise, labels = inputs[batch]
        return pipeline(labels, guidance_scale=guidance, num_inference_steps=args.steps, latents=noise,
                        output_type=output_type).images

    reference = with_full_fp32(lambda: sample(pipe, args.error_batch, "latent"))
    log(f"float32 reference latents at batch {args.error_batch} done")
    to_mode_dtype(model, vae, mode)
    accelerate_pipeline(pipe, mode, compile=not args.no_compile, cuda_graphs=not args.no_cuda_graphs)
    measure_ours(args, log, device, pipe, sample, inputs, f"ours ({mode})", report["ours"], reference, gflop, peak, save,
                 in_budget)

    if mode == "fast" and not args.no_ablation and in_budget("our bf16 eager ablation"):
        # "fast" leaves the network itself eager (it compiles a weight-sharing copy): a second pipeline around it
        # in "bf16" mode measures the same weights without compilation and graphs.
        eager_pipe = DiMRPipeline(model=model, vae=vae, scheduler=make_scheduler(args.sampler))
        eager_pipe.set_progress_bar_config(disable=True)
        accelerate_pipeline(eager_pipe, "bf16")
        measure_ours(args, log, device, eager_pipe, sample, inputs, "ours (bf16 eager)", report["ours_bf16_eager"],
                     reference, gflop, peak, save, in_budget)

    if device.type == "cuda" and in_budget("host sync count"):
        batch = min(args.batches)
        report["ours"]["host_syncs_per_call"] = count_host_syncs(device, lambda: sample(pipe, batch))
        log(f"ours ({mode}), batch {batch}: {report['ours']['host_syncs_per_call']} host syncs in one pipeline call")

    save()
    print_summary(report, args, out)


def to_mode_dtype(model, vae, mode):
    """Cast this benchmark's own network and VAE to the mode's dtype, as load_pipeline would load them
    (and a bf16 VAE channels-last, as dimr.sampling.loading keeps it on CUDA)."""
    dtype = mode_dtype(mode)
    model.to(dtype)
    vae.to(dtype=dtype, memory_format=torch.channels_last if dtype == torch.bfloat16 else torch.preserve_format)


def config_latent_shape(model):
    return (model.config.channels, model.sample_size, model.sample_size)


def with_full_fp32(fn):
    """Run fn with TF32 off, so the reference is true float32."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def measure_ours(args, log, device, pipe, sample, inputs, name, results, reference, gflop, peak, save, in_budget):
    for batch in args.batches:
        if not in_budget(f"{name} batch {batch}"):
            return
        result = measure(log, device, name, batch, lambda: sample(pipe, batch), args.warmup, args.repeats)
        noise = inputs[batch][0]
        decode_s = statistics.median(timed(device, lambda: pipe.decode(noise, "pt"))[0] for _ in range(3))
        results[str(batch)] = add_rates(result, gflop, args.steps, peak, decode_s)
        save()
    if in_budget(f"{name} error check"):
        results["error_vs_fp32"] = compare(sample(pipe, args.error_batch, "latent"), reference)
        log(f"{name}: final latents vs float32, batch {args.error_batch}: " + ", ".join(
            f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in results["error_vs_fp32"].items()))
        save()


def run_official(args, log, device, model, config, vae, inputs, gflop, peak, report, save, in_budget):
    from official_path import OfficialCode

    try:
        official = OfficialCode(args.official_repo)
    except (ImportError, FileNotFoundError) as err:
        report["notes"].append(f"official path skipped: {type(err).__name__}: {err}")
        log(report["notes"][-1])
        return
    nnet = official.model(config, model.state_dict(), device)
    autocast = torch.float16 if device.type == "cuda" else None  # fp16 on CPU would only be slow
    report["settings"]["official"] = {"repo": "github.com/qihao067/DiMR", "autocast": str(autocast),
                                      "solver": "DPM-Solver fast (order 3, time_uniform)",
                                      "cfg_scale": round(args.guidance_scale - 1, 12)}
    # Its reentrant checkpointing and pure-torch time-dependent kernel warn on every call.
    warnings.filterwarnings("ignore", message="torch.utils.checkpoint: the use_reentrant")
    warnings.filterwarnings("ignore", message="Using slower tdp_torch")

    def sample(batch):
        noise, labels = inputs[batch]
        latents = official.sample(nnet, noise, torch.tensor(labels, device=device), args.steps,
                                  cfg_scale=round(args.guidance_scale - 1, 12), autocast_dtype=autocast)
        return official_decode(vae, latents, device)

    for batch in args.batches:
        if not in_budget(f"official batch {batch}"):
            break
        result = measure(log, device, "official", batch, lambda: sample(batch), args.warmup, args.official_repeats)
        noise = inputs[batch][0]
        decode_s = statistics.median(timed(device, lambda: official_decode(vae, noise, device))[0] for _ in range(3))
        report["official"][str(batch)] = add_rates(result, gflop, args.steps, peak, decode_s)
        save()
    if device.type == "cuda" and in_budget("official host sync count"):
        batch = min(args.batches)
        report["official"]["host_syncs_per_call"] = count_host_syncs(device, lambda: sample(batch))
        log(f"official, batch {batch}: {report['official']['host_syncs_per_call']} host syncs in one sampling call")
        save()
    del nnet
    if device.type == "cuda":
        torch.cuda.empty_cache()


def print_summary(report, args, out):
    peak = report["device"]["peak_bf16_tflops"]
    print(f"\n{report['settings']['model']} on {report['device']['name']}, {args.steps} steps, guidance "
          f"{args.guidance_scale}, VAE decode included; MFU vs {peak or '?'} TFLOP/s dense bf16\n")
    print("| path | batch | images/s | model TFLOP/s | MFU | MFU excl. decode | peak extra GiB | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for path in ("official", "ours_bf16_eager", "ours"):
        for batch in args.batches:
            r = report[path].get(str(batch))
            if not r:
                continue
            speed = report["speedup"].get(str(batch)) if path == "ours" else None
            print(f"| {path} | {batch} | {r['images_per_s']:.2f} | {r['model_tflops']:.4g} | "
                  f"{fmt_pct(r.get('mfu'))} | {fmt_pct(r.get('mfu_excluding_decode'))} | "
                  f"{r.get('peak_extra_gib', float('nan')):.2f} | {f'{speed:.2f}x' if speed else '-'} |")
    for path in ("ours", "ours_bf16_eager"):
        error = report[path].get("error_vs_fp32")
        if error:
            print(f"\n{path}: final latents vs float32: relative L2 {error['rel_l2']:.2e}, max relative "
                  f"{error['max_rel']:.2e} ({'within' if error['within_tolerance'] else 'OUTSIDE'} "
                  f"{TOLERANCE_REL_L2:.0%})")
    for path in ("official", "ours"):
        if "host_syncs_per_call" in report[path]:
            print(f"{path}: {report[path]['host_syncs_per_call']} host syncs in one call at batch {min(args.batches)}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"\nwrote {out}")


def fmt_pct(value):
    return f"{value:.1%}" if value is not None and math.isfinite(value) else "-"


if __name__ == "__main__":
    main()
