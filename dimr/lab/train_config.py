"""Training configs of the shapes models: the schema with its defaults and checks, loading by name, and cost."""

import copy
import json
from pathlib import Path

import torch

from dimr.lab.objective import BETA_SCHEDULES, PREDICTION_TYPES, TIME_SAMPLINGS
from dimr.lab.shapes import CLASS_NAMES
from dimr.network.model import DiMRModel, PositionEmbedding, count_parameters

CONFIG_DIR = Path(__file__).with_name("configs")

TRAIN_DEFAULTS = {
    "batch_size": 512,
    "lr": 1e-3,
    "weight_decay": 0.03,
    "betas": [0.9, 0.99],
    "warmup_steps": 500,
    "decay_steps": 0,  # linear decay of the learning rate to 0 over the last decay_steps steps; 0: constant
    "ema_decay": 0.999,
    "label_dropout": 0.1,
    "grad_clip": 1.0,
    "max_steps": 100000,
    "seed": 0,
    "loss_coeffs": None,  # one per branch; default: 1/4 for every lower-resolution branch, 1 for the last
    "min_snr_gamma": None,  # weight each sample's loss by min(SNR, gamma) / SNR (Hang et al. 2023); None: equal
    "time_sampling": "uniform",  # how training times are drawn: "uniform" or "logit_normal" (dimr.lab.objective)
    "logit_mean": 0.0,  # of logit_normal times
    "logit_std": 1.0,
    "position_init": "normal",  # position tables: "normal" (the official std 0.02) or "sincos" (2D sine-cosine)
}
DATA_DEFAULTS = {"num_images": 200000, "seed": 0}
# How the model diffuses: saved beside the exported weights as scheduler_config.json, so sampling uses the same.
# DiMR's own: Stable Diffusion's scaled-linear schedule, epsilon prediction, no clipping of x0 estimates.
DIFFUSION_DEFAULTS = {"beta_schedule": "scaled_linear", "prediction_type": "epsilon", "thresholding": False}


def resolve_config_path(name_or_path):
    """A config file path, or a config name under dimr/lab/configs/ ("tiny-dimr")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{name_or_path}.json"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a name in {CONFIG_DIR} (known: {known})")


def prepare_config(raw):
    """Validate a training config dict and fill defaults, the classes and the null class.

    The shapes dataset decides the classes: `model.num_classes` = number of shapes + 1 (null) and
    `model.class_names` = the shape names, so a config cannot disagree with the data.
    """
    raw = copy.deepcopy(raw)
    unknown = set(raw) - {"name", "description", "model", "diffusion", "data", "train"}
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; "
                         "allowed: name, description, model, diffusion, data, train")
    for section in ("name", "model"):
        if section not in raw:
            raise ValueError(f"training config lacks '{section}'")
    model = dict(raw["model"])
    if model.get("channels", 3) != 3:
        raise ValueError(f"shapes models work in pixel space: model.channels must be 3, got {model['channels']}")
    model["channels"] = 3
    for field, value in (("num_classes", len(CLASS_NAMES) + 1), ("class_names", CLASS_NAMES)):
        if field in model and model[field] != value:
            raise ValueError(f"model.{field}={model[field]!r} disagrees with the shapes dataset ({value!r})")
        model[field] = list(value) if isinstance(value, list) else value
    data = {**DATA_DEFAULTS, **raw.get("data", {})}
    train = {**TRAIN_DEFAULTS, **raw.get("train", {})}
    diffusion = {**DIFFUSION_DEFAULTS, **raw.get("diffusion", {})}
    for section, given, allowed in (("data", raw.get("data", {}), DATA_DEFAULTS), ("train", raw.get("train", {}), TRAIN_DEFAULTS),
                                    ("diffusion", raw.get("diffusion", {}), DIFFUSION_DEFAULTS)):
        extra = set(given) - set(allowed)
        if extra:
            raise ValueError(f"unknown {section} fields {sorted(extra)}; allowed: {sorted(allowed)}")
    num_branches = len(model["stage_configs"])
    if train["loss_coeffs"] is None:
        train["loss_coeffs"] = [0.25] * (num_branches - 1) + [1.0]
    if len(train["loss_coeffs"]) != num_branches:
        raise ValueError(f"train.loss_coeffs has {len(train['loss_coeffs'])} entries but the model has {num_branches} branches")
    for field, minimum in (("batch_size", 1), ("max_steps", 1), ("warmup_steps", 0), ("decay_steps", 0)):
        if not isinstance(train[field], int) or train[field] < minimum:
            raise ValueError(f"train.{field} must be an integer >= {minimum}, got {train[field]!r}")
    if train["decay_steps"] > train["max_steps"]:
        raise ValueError(f"train.decay_steps ({train['decay_steps']}) cannot exceed train.max_steps ({train['max_steps']})")
    if not train["lr"] > 0:
        raise ValueError(f"train.lr must be positive, got {train['lr']!r}")
    if not 0 <= train["label_dropout"] < 1:
        raise ValueError(f"train.label_dropout must be in [0, 1), got {train['label_dropout']}")
    if train["min_snr_gamma"] is not None and not train["min_snr_gamma"] > 0:
        raise ValueError(f"train.min_snr_gamma must be positive (or null for no weighting), got {train['min_snr_gamma']!r}")
    if not 0 <= train["ema_decay"] < 1:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {train['ema_decay']}")
    for section, field, allowed in (("train", "time_sampling", TIME_SAMPLINGS),
                                    ("train", "position_init", ("normal", "sincos")),
                                    ("diffusion", "beta_schedule", BETA_SCHEDULES),
                                    ("diffusion", "prediction_type", PREDICTION_TYPES)):
        value = {"train": train, "diffusion": diffusion}[section][field]
        if value not in allowed:
            raise ValueError(f"{section}.{field} {value!r} is not one of {', '.join(allowed)}")
    if not isinstance(diffusion["thresholding"], bool):
        raise ValueError(f"diffusion.thresholding must be true or false, got {diffusion['thresholding']!r}")
    if not train["logit_std"] > 0:
        raise ValueError(f"train.logit_std must be positive, got {train['logit_std']!r}")
    return {"name": raw["name"], "description": raw.get("description", ""), "model": model, "diffusion": diffusion,
            "data": data, "train": train}


def load_config(name_or_path):
    path = resolve_config_path(name_or_path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return prepare_config(raw)


def build_model(config):
    """A freshly initialised DiMRModel for a prepared training config (the official initialisation, position
    tables as train.position_init says)."""
    model = DiMRModel(**config["model"])
    if config["train"]["position_init"] == "sincos":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, PositionEmbedding):
                    table = module.position_embeddings.weight
                    table.copy_(sincos_table(module.max_height, module.max_width, table.shape[1]))
    return model


def sincos_table(height, width, dim):
    """2D sine-cosine positions [height * width, dim], as MAE and DiT fix theirs: half the channels encode the
    row and half the column, each as sines and cosines of geometrically spaced frequencies. A transformer then starts
    knowing where each token is instead of learning it from positions that start as noise of std 0.02 (in the lab's
    ablation, docs/lab.md, it never did worse)."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    parts = [f(grid.reshape(-1, 1) * frequencies) for grid in (rows, cols) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1])).float()


def model_cost(model_config):
    """(parameters, forward FLOPs for one image) of a model config, counted on the meta device (no compute).

    FLOPs are torch's FlopCounterMode count: 2 per multiply-add of matmuls, convolutions and attention.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DiMRModel(**model_config)
        size = model.sample_size
        sample = torch.zeros(1, model_config["channels"], size, size)
        with FlopCounterMode(display=False) as counter:
            model(sample, torch.tensor([500.0]), torch.tensor([0]))
    return count_parameters(model), counter.get_total_flops()
