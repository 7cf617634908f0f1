"""Inception FID of a sample file against a reference: `python -m dimr fid SAMPLES.npz --reference REF.npz`.

The engine is torchmetrics' `FrechetInceptionDistance` (running sums in float64, its own formula) fed by the FID
Inception network as torch-fidelity ports it (TensorFlow's 2015-12-05 graph, the one the original FID code and the
ADM evaluator run) with TensorFlow 1's bilinear resize to 299 px (`antialias=False`; torchmetrics' default
antialiased resize departs from the reference numbers). docs/evaluation.md says why these and not another.

Reference: an .npz with `mu` and `sigma` (ADM's reference batches: the statistics of the whole ImageNet training
set, which is what the ADM evaluator's FID uses), else images in `arr_0` (their statistics are computed here).

Weights: torch-fidelity would download them on first use; here it never does. The file must be on disk (by default
where that download would put it, torch hub's checkpoints folder), else the error says what to get and where.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from dimr.sampling.sample_files import image_batches, sample_count

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch hub's convention: the file name ends in the start of its sha256
INCEPTION_FEATURES = 2048


def inception_weights_path(path=None):
    """The Inception weights file (given, or torch hub's checkpoints folder); FileNotFoundError saying what to
    download and where to put it when it is not there."""
    path = Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the Inception weights for FID are not at {path}, and they are not downloaded "
                                f"here. On a machine with internet, download {INCEPTION_URL} and put it at {path} "
                                f"(or anywhere, and pass --inception-weights FILE).")
    return path


def inception_network(weights):
    """The FID Inception network (torch-fidelity's, through torchmetrics): uint8 images [B, 3, H, W] -> pool
    features [B, 2048]."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise ValueError(f"{weights} is not the FID Inception weights: its sha256 begins {digest[:8]}, "
                         f"{INCEPTION_FILE} ({INCEPTION_URL}) begins {INCEPTION_SHA256_PREFIX}")
    # torch-fidelity loads the file without weights_only; loading it here first refuses anything but tensors.
    torch.load(weights, map_location="cpu", weights_only=True)
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        network = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)],
                                     feature_extractor_weights_path=str(weights), antialias=False)
    except ModuleNotFoundError as err:
        raise ValueError("Inception FID needs torch-fidelity: `pip install -r requirements-eval.txt` (it brings "
                         "torchvision, which needs the CUDA build of torch that GPU machines install)") from err
    network.num_features = INCEPTION_FEATURES
    return network


def use_reference_statistics(metric, mu, sigma):
    """Make `mu` [D] and `sigma` [D, D] the metric's real-image statistics. torchmetrics keeps running sums; these
    are the sums of n samples with exactly that mean and covariance (any n >= 2 gives both back)."""
    device = metric.real_features_sum.device
    mu, sigma = (torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device) for a in (mu, sigma))
    if mu.shape != metric.real_features_sum.shape or sigma.shape != metric.real_features_cov_sum.shape:
        raise ValueError(f"the reference statistics have mu {list(mu.shape)} and sigma {list(sigma.shape)}; the "
                         f"feature network gives {metric.real_features_sum.shape[0]} features")
    n = 2
    metric.real_features_sum = n * mu
    metric.real_features_cov_sum = (n - 1) * sigma + n * torch.outer(mu, mu)
    metric.real_features_num_samples = torch.tensor(n, device=device)


def inception_fid(samples, reference, weights=None, feature=None, device="cpu", batch_size=200, progress=True):
    """FID of the images in sample file `samples` against `reference` (see the module docstring).

    feature: a module mapping uint8 images [B, 3, H, W] to features [B, D]; default the Inception network,
    from `weights` (default path: `inception_weights_path`)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from tqdm import tqdm

    network = feature if feature is not None else inception_network(inception_weights_path(weights))
    metric = FrechetInceptionDistance(feature=network).to(device)
    # The reference numbers come from float32 convolutions: no TF32 (cuDNN's default on recent GPUs).
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), np.load(reference) as ref:
        if "mu" in ref.files and "sigma" in ref.files:
            use_reference_statistics(metric, ref["mu"], ref["sigma"])
            statistics = "stored mu and sigma"
        else:
            for images in tqdm(image_batches(reference, batch_size), desc="reference features", disable=not progress,
                               total=-(-sample_count(reference) // batch_size)):
                metric.update(images.to(device), real=True)
            statistics = f"{int(metric.real_features_num_samples)} images"
        for images in tqdm(image_batches(samples, batch_size), desc="sample features", disable=not progress,
                           total=-(-sample_count(samples) // batch_size)):
            metric.update(images.to(device), real=False)
        fid = float(metric.compute())
    return {"fid": fid, "samples": int(metric.fake_features_num_samples), "reference": str(reference),
            "reference_statistics": statistics}


def format_fid(result):
    return (f"FID {result['fid']:.4g} of {result['samples']} samples against {result['reference']} "
            f"({result['reference_statistics']})")


def add_cli_arguments(parser):
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("samples", type=Path, help="sample file (.npz, images in arr_0: dimr evaluate writes one)")
    parser.add_argument("--reference", type=Path, required=True,
                        help="reference .npz: mu/sigma (an ADM reference batch) or images in arr_0")
    parser.add_argument("--inception-weights", type=Path,
                        help=f"the Inception weights file (default: {INCEPTION_FILE} in torch hub's checkpoints "
                             f"folder, {Path(torch.hub.get_dir()) / 'checkpoints'})")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")


def cli_main(args):
    for path in (args.samples, args.reference):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = inception_fid(args.samples, args.reference, weights=args.inception_weights, device=device,
                           batch_size=args.batch_size)
    print(format_fid(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
