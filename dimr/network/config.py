"""Model configs in the official field names (validation, the named variants) and the 1000-step training time
table."""

import copy

# DiMR is trained on a table of 1000 diffusion steps: timestep index k in 0..999, official time n = k + 1.
NUM_TRAIN_TIMESTEPS = 1000

STAGE_FIELDS = {
    # field: default (None = required)
    "block_type": None,
    "dim": None,
    "hidden_dim": None,
    "num_blocks": None,
    "max_height": None,
    "max_width": None,
    "num_attention_heads": None,  # transformer branches only
    "kernel_size": None,  # ConvNeXt branches only
    "image_input_ratio": 1,
    "input_feature_ratio": 1,
    "final_kernel_size": 3,
    "dropout_prob": 0.0,
    # Not an official field: p > 1 replaces the head by a U-ViT style un-patchify head that predicts
    # p x p pixels per token (used by the single-resolution baseline of the distortion lab).
    "head_patch_size": 1,
}
# Copied into every branch by the official code; accepted when they agree with the model's.
SHARED_FIELDS = ("num_classes", "pe_type", "norm_type")
NORM_TYPES = ("TDRMSN", "LN")
BLOCK_TYPES = ("TransformerBlock", "ConvNeXtBlock")


def stage_num_blocks(stage):
    """The official branch builds n//2 in-blocks, one middle block and n//2 out-blocks."""
    return stage["num_blocks"] // 2 * 2 + 1


def _as_dict(obj):
    return dict(obj) if isinstance(obj, dict) else dict(vars(obj))


def normalize_official_config(config):
    """Check an official-style model config and return it with defaults filled in and extras removed."""
    config = _as_dict(config)
    for field in ("channels", "num_classes", "stage_configs"):
        if field not in config:
            raise ValueError(f"model config lacks '{field}'")
    norm_type = config.get("norm_type", "LN")  # the official default when the field is absent
    if norm_type not in NORM_TYPES:
        raise ValueError(f"norm_type {norm_type!r} is not supported; use one of {NORM_TYPES}")
    pe_type = config.get("pe_type", "APE")
    if pe_type != "APE":
        raise ValueError(f"pe_type {pe_type!r} is not supported; only 'APE' (the released models') is")
    if config.get("condition_dim") is not None:
        raise ValueError("text conditioning (condition_dim) is not supported; DiMR's released models are class-conditional")
    if not config["stage_configs"]:
        raise ValueError("stage_configs is empty: a model needs at least one branch")

    stages = []
    for i, raw in enumerate(config["stage_configs"]):
        raw = _as_dict(raw)
        for field in SHARED_FIELDS:
            expected = {"num_classes": config["num_classes"], "pe_type": pe_type, "norm_type": norm_type}[field]
            if field in raw and raw[field] != expected:
                raise ValueError(f"stage {i}: {field}={raw[field]!r} differs from the model's {expected!r}")
        unknown = set(raw) - set(STAGE_FIELDS) - set(SHARED_FIELDS)
        if unknown:
            raise ValueError(f"stage {i}: unknown fields {sorted(unknown)}; allowed: {sorted(STAGE_FIELDS)}")
        if raw.get("block_type") not in BLOCK_TYPES:
            raise ValueError(f"stage {i}: block_type {raw.get('block_type')!r} is not one of {BLOCK_TYPES}")
        needed = "num_attention_heads" if raw["block_type"] == "TransformerBlock" else "kernel_size"
        stage = {}
        for field, default in STAGE_FIELDS.items():
            if field in ("num_attention_heads", "kernel_size") and field != needed:
                continue
            if field not in raw and default is None:
                raise ValueError(f"stage {i} ({raw['block_type']}) lacks '{field}'")
            stage[field] = raw.get(field, default)
        if i > 0 and stage["max_height"] % stages[-1]["max_height"]:
            raise ValueError(
                f"stage {i}: max_height {stage['max_height']} is not a multiple of the previous branch's "
                f"{stages[-1]['max_height']}"
            )
        stages.append(stage)
    return {
        "channels": config["channels"],
        "num_classes": config["num_classes"],
        "stage_configs": stages,
        "norm_type": norm_type,
        "block_grad_to_lowres": bool(config.get("block_grad_to_lowres", False)),
    }


def _two_branch(dim, depth, conv_dim, conv_blocks):
    return {
        "channels": 4,
        "num_classes": 1001,
        "norm_type": "TDRMSN",
        "block_grad_to_lowres": False,
        "stage_configs": [
            {"block_type": "TransformerBlock", "dim": dim, "hidden_dim": 2 * dim, "num_attention_heads": 16,
             "num_blocks": depth, "max_height": 16, "max_width": 16, "input_feature_ratio": 2},
            {"block_type": "ConvNeXtBlock", "dim": conv_dim, "hidden_dim": 2 * conv_dim, "kernel_size": 7,
             "num_blocks": conv_blocks, "max_height": 32, "max_width": 32, "input_feature_ratio": 1},
        ],
    }


# The released ImageNet 256x256 models (latent 4x32x32).
VARIANTS = {
    "DiMR-XL/2R": _two_branch(960, 39, 480, 20),
    "DiMR-G/2R": _two_branch(1152, 57, 576, 29),
}


def variant_config(name):
    """A named variant's config (a fresh copy)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; known: {', '.join(VARIANTS)}")
    return normalize_official_config(copy.deepcopy(VARIANTS[name]))
