"""The judge of the distortion lab: a small CNN that names the shape in an image, or says "none of these".

It has one output per shapes class and one more, "none", learned from real renders broken the ways generative
models break them (`dimr.lab.corruptions`: blurred, blobbed, warped, patch-shuffled, texture-scrambled, cut,
amorphous). A classifier that can only pick the closest of the ten classes calls a splotch of blobs
"checkerboard"; with "none" it can refuse. It never sees a generated sample: real renders and their
corruptions only, like the paper's classifier trained on real images. Its pooled features are the space in
which the distortion measure computes the Frechet distance and precision/recall.
Bundled in dimr/checkpoints/shapes-classifier/ (config.json + model.safetensors).

    python -m dimr.lab.classifier [--device cuda] [--images 40000] [--epochs 5] [--out dimr/checkpoints/shapes-classifier]
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dimr.atomic import replaced_atomically
from dimr.lab.corruptions import KINDS, corrupt
from dimr.lab.shapes import CLASS_NAMES, colourise, make_dataset, render_coverage, sample_parameters, to_model_range
from dimr.sampling.loading import CHECKPOINTS_DIR

CLASSIFIER_DIR = CHECKPOINTS_DIR / "shapes-classifier"
TRAIN_SEED, VALIDATION_SEED = 1, 3  # the diffusion models train on seed 0; the distortion lab's real data is seed 2
# Corrupted renders use their own seeds, so "none" never shares a drawing with a real training image.
CORRUPT_TRAIN_SEED, CORRUPT_VALIDATION_SEED = 11, 13
NONE = "none"
JUDGE_CLASSES = [*CLASS_NAMES, NONE]


def _conv_block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


class ShapesClassifier(nn.Module):
    """Three stages of two 3x3 convolutions (32 -> 16 -> 8 px), global average pooling, a linear layer."""

    def __init__(self, num_classes=len(JUDGE_CLASSES), width=16):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width}
        w = width
        self.features = nn.Sequential(
            _conv_block(3, w), _conv_block(w, w), nn.MaxPool2d(2),
            _conv_block(w, 2 * w), _conv_block(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w), _conv_block(4 * w, 4 * w),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def embed(self, images):
        """Images in [-1, 1] [B, 3, 32, 32] -> pooled features [B, 4 * width]."""
        return self.features(images).mean(dim=(2, 3))

    def forward(self, images):
        """Images in [-1, 1] [B, 3, 32, 32] -> logits [B, num_classes]."""
        return self.head(self.embed(images))

    @torch.no_grad()
    def probabilities_and_features(self, images_uint8, batch_size=500):
        """(class probabilities [N, num_classes], pooled features [N, 4 * width]) of uint8 images [N, 3, H, W]."""
        device = next(self.parameters()).device
        probs, feats = [], []
        for i in range(0, images_uint8.shape[0], batch_size):
            features = self.embed(to_model_range(images_uint8[i : i + batch_size].to(device))).float()
            probs.append(F.softmax(self.head(features), dim=1).cpu())
            feats.append(features.cpu())
        return torch.cat(probs), torch.cat(feats)

    def probabilities(self, images_uint8, batch_size=500):
        """Class probabilities [N, num_classes] of uint8 images [N, 3, H, W]."""
        return self.probabilities_and_features(images_uint8, batch_size)[0]


def save_classifier(model, out_dir, info):
    with replaced_atomically(out_dir) as partial:
        partial.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  partial / "model.safetensors")
        config = {**model.config, "class_names": JUDGE_CLASSES, **info}
        (partial / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    return Path(out_dir)


def load_classifier(path=CLASSIFIER_DIR, device="cpu"):
    """The bundled (or a given) classifier in eval mode; clear errors when it is missing or for other classes."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no shapes classifier in {path} (config.json + model.safetensors); "
                                f"train one with `python -m dimr.lab.classifier --out {path}`")
    config = json.loads((path / "config.json").read_text())
    if config["class_names"] != JUDGE_CLASSES:
        raise ValueError(f"the classifier in {path} knows classes {config['class_names']}, "
                         f"but the judge needs {JUDGE_CLASSES} (the shapes classes and 'none'); retrain it")
    model = ShapesClassifier(config["num_classes"], config["width"])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.to(device).eval()


# Pixel noise up to this std (16/255 in [0, 255] units) is added in training. Generated samples keep a little
# residual noise; trained on clean images only, the classifier called a clean circle with noise of std 8/255
# "not a circle" 49 times in 50, so the rate measured grain, not shape. With it, it judges the shape.
MAX_TRAIN_NOISE = 16 / 127.5


def _augment(x):
    """Flips and quarter turns (every shapes class is invariant to them) and mild Gaussian pixel noise."""
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(2, 3))
    sigma = MAX_TRAIN_NOISE * torch.rand(x.shape[0], 1, 1, 1, device=x.device)
    return x + sigma * torch.randn_like(x)


def add_pixel_noise(images_uint8, std, seed=0):
    """uint8 images with Gaussian noise of `std` (in 0..255 units) added, rounded and clipped."""
    noise = torch.randn(images_uint8.shape, generator=torch.Generator().manual_seed(seed))
    return (images_uint8.float() + std * noise).round().clamp(0, 255).to(torch.uint8)


def corrupted_dataset(num_images, seed, device="cpu"):
    """Misdrawn shapes: renders of every class, each broken by one corruption kind (kinds in turn).

    Returns (uint8 images [N, 3, 32, 32], the class each was drawn from [N], the kind of each [N]).
    """
    params = sample_parameters(num_images, seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(num_images)]
    coverage = render_coverage(params, device=device)
    coverage = corrupt(coverage, kinds, torch.Generator(device).manual_seed(seed))
    return colourise(coverage, params), torch.as_tensor(params["labels"], device=device), kinds


def judge_dataset(num_images, seed, corrupt_seed, device="cpu"):
    """Real renders with their class and as many corrupted renders labelled "none", shuffled together."""
    real, labels = make_dataset(num_images, seed, device=device)
    broken, _, _ = corrupted_dataset(num_images, corrupt_seed, device=device)
    images = torch.cat([real, broken])
    labels = torch.cat([labels, torch.full_like(labels, JUDGE_CLASSES.index(NONE))])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(device)
    return images[order], labels[order]


def flag_rates(model, num_images=10000):
    """Validation of the judge on held-out data: the share of real renders flagged (p(own class) < 0.5),
    with and without faint noise, and the share of corrupted renders flagged, per corruption kind."""
    real, labels = make_dataset(num_images, VALIDATION_SEED)
    rates = {}
    for std in (0, 8):
        probs = model.probabilities(add_pixel_noise(real, std) if std else real)
        rates[f"real_flagged{'' if std == 0 else f'_noise{std}'}"] = (
            probs[torch.arange(num_images), labels] < 0.5).float().mean().item()
    broken, broken_labels, kinds = corrupted_dataset(num_images, CORRUPT_VALIDATION_SEED)
    flagged = model.probabilities(broken)[torch.arange(num_images), broken_labels] < 0.5
    rates["corrupted_flagged"] = flagged.float().mean().item()
    for kind in KINDS:
        mask = torch.tensor([k == kind for k in kinds])
        rates[f"corrupted_flagged_{kind}"] = flagged[mask].float().mean().item()
    return {k: round(v, 5) for k, v in rates.items()}


def train_classifier(num_images=40000, epochs=5, batch_size=256, lr=3e-3, width=16, device="cpu", seed=0,
                     progress=True):
    """Train on `num_images` real renders and as many corrupted ones; returns (model, info with validation rates)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    images, labels = judge_dataset(num_images, TRAIN_SEED, CORRUPT_TRAIN_SEED, device=device)
    total = len(labels)
    model = ShapesClassifier(len(JUDGE_CLASSES), width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(total / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    start, step = time.monotonic(), 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(total, device=device)
        for i in range(0, total, batch_size):
            index = order[i : i + batch_size]
            x = _augment(to_model_range(images[index])).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress and step % 50 == 0:
                print(f"epoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval().to("cpu")
    info = {
        "train_images": num_images, "train_corrupted_images": num_images, "train_seed": TRAIN_SEED,
        "corrupt_train_seed": CORRUPT_TRAIN_SEED, "epochs": epochs, "batch_size": batch_size,
        "train_noise_std_max": round(MAX_TRAIN_NOISE * 127.5, 2),
        "validation_images": 10000, "validation_seed": VALIDATION_SEED,
        "corrupt_validation_seed": CORRUPT_VALIDATION_SEED, **flag_rates(model),
        "train_minutes": round((time.monotonic() - start) / 60, 2),
    }
    return model, info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dimr.lab.classifier", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=40000,
                        help="real training images (rendered, seed 1), and as many corrupted ones")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage (x2, x4 after)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default=str(CLASSIFIER_DIR))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = train_classifier(args.images, args.epochs, args.batch_size, width=args.width, device=args.device)
    print(json.dumps(info, indent=1))
    print(f"saved to {save_classifier(model, args.out, info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
