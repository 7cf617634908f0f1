"""`dimr evaluate`: sample N images of a model across processes and GPUs into one sample file, then score it.

    python -m dimr evaluate --model tiny-dimr --samples 1000 --out runs/tiny-dimr.npz
    torchrun --nproc_per_node 8 -m dimr evaluate --model DiMR-XL/2R --samples 50000 --out runs/xl.npz \\
        --reference VIRTUAL_imagenet256_labeled.npz

One process per GPU (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK; the processes exchange only counts, over gloo);
a plain `python -m dimr evaluate` is one process. Defaults: for the released ImageNet models the paper's evaluation
(dpm-solver-3s, 250 model evaluations as the official DPM-Solver run, constant guidance 1.4); for the shapes models
the demo's (dimr.sampling.defaults).

What a sample is: sample i asks for class i mod (number of classes) and starts from noise drawn from (seed, i)
alone (numpy's SeedSequence, built for independent parallel streams). The samples are sampled in fixed blocks of
--batch-size consecutive indices, each block always as one batch: the images do not depend on the number of
processes or on where a run was resumed, bit for bit. They do depend, in the last bits, on the batch size and
(on a CPU) the threads per process, because the convolution kernels are picked by batch size and thread count:
a different batch size moves a few pixels by one level of 255 (docs/evaluation.md). So the batch size is part of
the job, and a resume must keep it.

Files: OUT.npz (`arr_0` uint8 [N, H, W, 3] and `arr_1` labels, the ADM evaluation suite's layout:
dimr.sampling.sample_files), OUT.json (settings, model, software, time, scores). While it runs, OUT.shards/ holds the job
(job.json) and one finished file per block; a killed run resumes from them when the same command is run again, and
the directory is removed once OUT.npz is written. Across nodes, OUT must be on a filesystem every node sees.
Scores: with --reference, Inception FID against it (dimr.evaluation.fid); for the shapes models also the lab's measure
(dimr.lab.distortion.measure: misdrawn rate, judge-feature FID, precision/recall), the same as
`python -m dimr distortion --images OUT.npz` reports.
"""

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from dimr.atomic import replaced_atomically
from dimr.checks import check_int
from dimr.lab.shapes import CLASS_NAMES
from dimr.network.acceleration import MODES, accelerate_pipeline, default_mode, mode_dtype
from dimr.sampling import defaults
from dimr.sampling.grids import to_uint8
from dimr.sampling.loading import MODELS, load_pipeline, model_config, model_files, trained_noise_settings
from dimr.sampling.pipeline import MAX_INFERENCE_STEPS, check_guidance
from dimr.sampling.sample_cli import add_sampling_arguments
from dimr.sampling.sample_files import write_samples

# The official evaluation: DPM-Solver with 250 model evaluations (dimr-reference, "Sampling as the official
# evaluation does it"); dpm-solver-3s takes one evaluation per step.
PAPER_STEPS = 250
DEFAULT_SAMPLES = 50_000  # FID-50K
DEFAULT_BATCH_SIZE = 16  # the batch benchmarks/sampling.py measured on a GPU
JOB_FILE = "job.json"
PEER_FAILURE_GRACE_S = 10


def add_cli_arguments(parser):
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--model", required=True,
                        help=f"one of {', '.join(MODELS)}, or a directory with config.json")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"number of images N (default {DEFAULT_SAMPLES:,})")
    parser.add_argument("--out", type=Path, required=True, help="the sample file to write, ending in .npz")
    add_sampling_arguments(parser, PAPER_STEPS, ", the paper's evaluation")
    parser.add_argument("--seed", type=int, default=0, help="sample i starts from noise drawn from (seed, i)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per block and batch (default {DEFAULT_BATCH_SIZE}); keep it when resuming")
    parser.add_argument("--speed", choices=MODES,
                        help="acceleration mode (default: 'fast' on a GPU, 'none' on a CPU; see dimr.network.acceleration)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="cpu or cuda (default: cuda when available; each process takes the GPU LOCAL_RANK)")
    parser.add_argument("--vae", help="local VAE directory or weights file (latent models; default sd-vae-ft-ema)")
    parser.add_argument("--reference", type=Path,
                        help="score the samples with Inception FID against this .npz (an ADM reference batch: "
                             "mu/sigma, or images in arr_0)")
    parser.add_argument("--inception-weights", type=Path,
                        help="the Inception weights file for --reference (default: see `python -m dimr fid -h`)")


def job_settings(args):
    """The settings that decide the images (checked before anything samples); ValueError names a bad one."""
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {args.seed}")
    if args.out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz (the ADM sample layout), got {args.out}")
    if args.reference is not None and not args.reference.is_file():
        raise FileNotFoundError(f"--reference {args.reference} does not exist")
    model_files(args.model)  # an unknown name or a missing bundled model fails here, before any sampling
    num_classes = model_config(args.model)["num_classes"] - 1
    steps = args.steps if args.steps is not None else (
        PAPER_STEPS if num_classes == defaults.IMAGENET_CLASSES else defaults.num_inference_steps(num_classes))
    guidance = defaults.guidance_scale(num_classes) if args.guidance is None else args.guidance
    check_int("num_inference_steps", steps, 1, MAX_INFERENCE_STEPS)
    check_guidance(guidance, args.guidance_schedule, args.guidance_power)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but this machine has no GPU that torch can use")
    speed = args.speed or default_mode(device_type)
    if speed != "none" and device_type != "cuda":
        raise ValueError(f"--speed {speed} needs a GPU; on a CPU only 'none' (float32) is sensible")
    return {"model": args.model, "samples": args.samples, "num_classes": num_classes, "steps": steps,
            "guidance": guidance, "guidance_schedule": args.guidance_schedule, "guidance_power": args.guidance_power,
            "sampler": args.sampler, "seed": args.seed, "batch_size": args.batch_size, "speed": speed,
            "device": device_type, "vae": args.vae}


def check_writable(out):
    """Create OUT's folder and prove it takes a file, so a bad --out fails before anything samples."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write --out {out}: {err.strerror or err}") from err


def shards_dir(out):
    return out.with_name(out.stem + ".shards")


def settings_file(out):
    return out.with_suffix(".json")


def sample_noise(seed, index, shape):
    """The initial noise of sample `index`: a function of (seed, index) alone."""
    return torch.from_numpy(np.random.default_rng([seed, index]).standard_normal(shape, dtype=np.float32))


def num_blocks(settings):
    return math.ceil(settings["samples"] / settings["batch_size"])


def block_range(block, settings):
    """The sample indices [start, end) of a block."""
    start = block * settings["batch_size"]
    return start, min(start + settings["batch_size"], settings["samples"])


def block_images(blocks, settings):
    """How many images the blocks hold."""
    return sum(end - start for start, end in (block_range(b, settings) for b in blocks))


def sample_block(pipe, settings, block):
    """The images (uint8 [n, H, W, 3]) and labels [n] of one block, sampled as one batch."""
    start, end = block_range(block, settings)
    indices = range(start, end)
    noise = torch.stack([sample_noise(settings["seed"], i, pipe.latent_shape) for i in indices])
    labels = [i % settings["num_classes"] for i in indices]
    out = pipe(labels, guidance_scale=settings["guidance"], guidance_schedule=settings["guidance_schedule"],
               guidance_power=settings["guidance_power"], num_inference_steps=settings["steps"], latents=noise,
               output_type="pt").images
    images = to_uint8(out.float().cpu() * 2 - 1)  # [0, 1] -> 0..255 as the distortion measure converts samples
    return images.permute(0, 2, 3, 1).numpy(), np.array(labels, dtype=np.int64)


def shard_path(directory, block):
    return directory / f"block-{block:07d}.npz"


def write_shard(path, images, labels):
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, labels=labels)


def read_shard(path):
    with np.load(path) as data:
        return data["images"], data["labels"]


class Processes:
    """This process's place in the job: rank, world size, device, and the collectives the job needs."""

    def __init__(self, device_type):
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{local_rank}" if device_type == "cuda" else "cpu")
        if self.device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"process {local_rank} of this node has no GPU of its own: the node has "
                                 f"{torch.cuda.device_count()}; start at most that many (--nproc_per_node)")
            torch.cuda.set_device(self.device)
        if self.world > 1:
            # The processes only exchange a few numbers (CPU tensors): gloo, on GPU machines too.
            dist.init_process_group(backend="gloo")

    def barrier(self):
        if self.world > 1:
            self._collective(dist.barrier)

    def broadcast(self, value):
        """Rank 0's value, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        self._collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def total(self, count):
        """The sum of `count` over all ranks."""
        if self.world == 1:
            return count
        tensor = torch.tensor([count], dtype=torch.int64)
        self._collective(dist.all_reduce, tensor)
        return int(tensor)

    def _collective(self, operation, *args, **kwargs):
        try:
            operation(*args, **kwargs)
        except RuntimeError as err:  # gloo reports a closed connection as a plain RuntimeError
            # A peer that failed closes its connections at once. Wait for the launcher, which saw that failure
            # first, to stop this process, so that its summary names the rank that failed, not this one.
            time.sleep(PEER_FAILURE_GRACE_S)
            raise RuntimeError(f"{self.describe()} lost contact with another process, which most likely failed: "
                               f"see that rank's error") from err

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def describe(self):
        return f"rank {self.rank} of {self.world} ({socket.gethostname()}, {self.device})"


def start_job(directory, settings, processes):
    """Rank 0 writes the job's settings into the shard directory, or checks them against a run being resumed;
    every other rank then checks that it sees the same file (the directory must be shared by all nodes)."""
    job_file = directory / JOB_FILE
    if processes.rank == 0:
        directory.mkdir(exist_ok=True)
        if job_file.is_file():
            check_same_settings(json.loads(job_file.read_text()), settings, directory)
        else:
            job_file.write_text(json.dumps(settings, indent=1) + "\n")
    processes.barrier()
    if processes.rank != 0 and not job_file.is_file():
        raise RuntimeError(f"{processes.describe()} does not see {job_file}, which rank 0 wrote: --out must be on a "
                           f"filesystem that every node sees")


def check_same_settings(stored, settings, where):
    differing = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
    if differing:
        listed = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differing.items())
        raise ValueError(f"{where} holds a run with other settings ({listed}); run with its settings to resume "
                         f"it, or choose another --out")


def finished_blocks(directory):
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("block-*.npz") if p.is_file())


def sample_job(pipe, settings, directory, processes):
    """Sample every block not yet in `directory`, spread over the ranks; returns (images sampled by this run,
    seconds). Ranks go in rounds of one block each, adding up what was done after every round for the progress
    bar, which rank 0 shows for the whole job."""
    from tqdm import tqdm

    done = processes.broadcast(finished_blocks(directory) if processes.rank == 0 else None)
    remaining = sorted(set(range(num_blocks(settings))) - set(done))
    bar = tqdm(total=settings["samples"], initial=settings["samples"] - block_images(remaining, settings), unit="img",
               desc=f"sampling {settings['model']} in {processes.world} process(es)", disable=processes.rank != 0)
    started = time.perf_counter()
    sampled = 0
    for round_start in range(0, len(remaining), processes.world):
        mine = remaining[round_start + processes.rank : round_start + processes.rank + 1]  # one block or none
        for block in mine:
            start, end = block_range(block, settings)
            try:
                write_shard(shard_path(directory, block), *sample_block(pipe, settings, block))
            except Exception as err:
                raise RuntimeError(f"{processes.describe()} failed on block {block} (samples {start}..{end - 1}): "
                                   f"{err}. Finished blocks are kept in {directory}; run the same command again "
                                   f"to resume.") from err
        count = block_images(mine, settings)
        sampled += count
        bar.update(processes.total(count))
    bar.close()
    return sampled, time.perf_counter() - started


def assemble(directory, settings, out):
    """Write OUT.npz from the blocks in order, holding one block in memory at a time."""
    first, _ = read_shard(shard_path(directory, 0))
    shape = (settings["samples"], *first.shape[1:])
    write_samples(out, shape, (read_shard(shard_path(directory, b)) for b in range(num_blocks(settings))))


def software():
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for package in ("diffusers", "torchmetrics", "torch-fidelity"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # not installed: that is what the record should say
            versions[package] = None
    versions["cuda"] = torch.version.cuda
    versions["devices"] = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                           if torch.cuda.is_available() else [platform.processor() or platform.machine()])
    versions["cpu_threads_per_process"] = torch.get_num_threads()
    return versions


def score(out, settings, reference, inception_weights, device):
    """The scores of a finished sample file: the shapes lab's measure for the shapes models, Inception FID with a
    reference. Printed, and returned for OUT.json."""
    scores = {}
    if model_config(settings["model"]).get("class_names") == CLASS_NAMES:
        from dimr.lab.classifier import load_classifier
        from dimr.lab.distortion import format_result, measure
        from dimr.sampling.sample_files import read_samples

        images, labels = read_samples(out)
        scores["lab"] = measure(images, labels, load_classifier())
        print(format_result(settings["model"], scores["lab"]))
    if reference is not None:
        from dimr.evaluation.fid import format_fid, inception_fid

        scores["fid"] = inception_fid(out, reference, weights=inception_weights, device=device)
        print(format_fid(scores["fid"]))
    return scores


def write_json(path, content):
    with replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1) + "\n")


def cli_main(args):
    # Under torchrun, `record` puts a failing rank's error into the launcher's summary of the job.
    return (record(evaluate) if "TORCHELASTIC_ERROR_FILE" in os.environ else evaluate)(args)


def evaluate(args):
    settings = job_settings(args)
    out, json_path = args.out, settings_file(args.out)
    check_writable(out)
    weights = None
    if args.reference is not None:
        from dimr.evaluation.fid import inception_weights_path

        weights = inception_weights_path(args.inception_weights)  # a missing file fails now, not after hours
    if out.is_file():
        if not json_path.is_file():
            raise ValueError(f"{out} exists and has no {json_path.name} beside it (not written by dimr evaluate); "
                             f"choose another --out")
        stored = json.loads(json_path.read_text())
        check_same_settings(stored["settings"], settings, out)
        if int(os.environ.get("RANK", 0)) != 0:
            return 0
        shutil.rmtree(shards_dir(out), ignore_errors=True)  # left over if a run stopped right after writing OUT
        device = torch.device(settings["device"])
    else:
        stored, device = sample_to_file(settings, out)
        if stored is None:
            return 0  # not rank 0: its blocks are written; rank 0 assembles and scores
    scores = score(out, settings, args.reference, weights, device)
    write_json(json_path, {**stored, **scores})
    return 0


def sample_to_file(settings, out):
    """Sample the job (resuming it if OUT.shards/ holds one) and, on rank 0, write OUT.npz and OUT.json.
    Returns (the record written to OUT.json, rank 0's device) on rank 0, (None, device) elsewhere."""
    processes = Processes(settings["device"])
    directory = shards_dir(out)
    try:
        # Loaded first: a model that cannot be loaded (weights not downloaded) leaves no job behind.
        mode = settings["speed"]
        pipe = accelerate_pipeline(load_pipeline(settings["model"], device=processes.device,
                                                 torch_dtype=mode_dtype(mode), vae=settings["vae"],
                                                 sampler=settings["sampler"]), mode)
        pipe.set_progress_bar_config(disable=True)
        start_job(directory, settings, processes)
        started = datetime.datetime.now(datetime.timezone.utc)
        sampled, seconds = sample_job(pipe, settings, directory, processes)
        sampled = processes.total(sampled)
    finally:
        processes.close()
    if processes.rank != 0:
        return None, processes.device
    stored = {
        "file": out.name, "settings": settings,
        "noise_settings": trained_noise_settings(model_files(settings["model"]).directory),
        "software": software(),
        "run": {"processes": processes.world, "started": started.isoformat(timespec="seconds"),
                "sampling_seconds": round(seconds, 3), "images_sampled": sampled,
                "images_from_earlier_runs": settings["samples"] - sampled,
                "images_per_second": round(sampled / seconds, 4) if seconds > 0 else None},
    }
    # OUT.json first: a run that stops before OUT.npz is complete resumes from the blocks and rewrites both.
    write_json(settings_file(out), stored)
    assemble(directory, settings, out)
    shutil.rmtree(directory)
    print(f"wrote {out} ({settings['samples']} images) and {settings_file(out)}")
    return stored, processes.device
