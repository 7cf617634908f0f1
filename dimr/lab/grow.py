"""Deepen a trained model's last branch with blocks that start as the identity.

A continued arm then starts exactly where the trained model is (same outputs to float rounding), so what it learns
in its extra images is the effect of the added depth, not a restart. Only the last (finest) branch is grown: its
feature stack feeds no other branch, so extra blocks change nothing downstream. The U-ViT pairing is kept: old
"in" blocks stay first, the new identity "in" blocks sit just before the middle block and pair with the new
identity "out" blocks just after it, whose skip layer passes the main path through ([I | 0], zero bias).

    python -m dimr.lab.grow dimr/checkpoints/tiny-dimr runs/grown/tiny-dimr-deep --num-blocks 3
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dimr.network.config import stage_num_blocks
from dimr.network.model import DiMRModel

WEIGHTS = "diffusion_pytorch_model.safetensors"


def deepen_last_branch(weights, config, num_blocks, fresh):
    """New (weights, config) whose last branch builds `num_blocks // 2 * 2 + 1` blocks.

    `fresh` is a state dict of the grown architecture (its new blocks' initial weights); from it the new blocks
    keep their input projections and norms, while every residual output (the depthwise convolution, the MLP's
    last layer) is zeroed so each new block adds nothing until training moves it.
    """
    config = json.loads(json.dumps(config))
    last = len(config["stage_configs"]) - 1
    stage = config["stage_configs"][last]
    old_n, new_n = stage_num_blocks(stage), stage_num_blocks({**stage, "num_blocks": num_blocks})
    if new_n <= old_n:
        raise ValueError(f"num_blocks={num_blocks} builds {new_n} blocks; the last branch already has {old_n}")
    if stage["block_type"] != "ConvNeXtBlock":
        raise ValueError("only a ConvNeXt last branch can be grown (a transformer's blocks are not identity-startable here)")
    stage["num_blocks"] = num_blocks
    k, big_k = old_n // 2, new_n // 2
    # new block index -> old block index (None: a new identity block)
    origin = list(range(k)) + [None] * (big_k - k) + [k] + [None] * (big_k - k) + [k + 1 + j for j in range(k)]
    skip_origin = [None] * (big_k - k) + list(range(k))  # new out block j uses skip_denses j

    prefix = f"stages.{last}."
    grown = {name: value for name, value in weights.items() if not name.startswith(prefix + "blocks.")
             and not name.startswith(prefix + "skip_denses.")}
    for new, old in enumerate(origin):
        part = f"{prefix}blocks.{new}."
        if old is not None:
            grown.update({part + name[len(f"{prefix}blocks.{old}."):]: value for name, value in weights.items()
                          if name.startswith(f"{prefix}blocks.{old}.")})
            continue
        for name, value in fresh.items():
            if name.startswith(part):
                residual_out = ".block1." in name or ".block2.w2." in name
                grown[name] = torch.zeros_like(value) if residual_out else value.clone()
    for j, old in enumerate(skip_origin):
        part = f"{prefix}skip_denses.{j}."
        if old is not None:
            grown[part + "weight"] = weights[f"{prefix}skip_denses.{old}.weight"]
            grown[part + "bias"] = weights[f"{prefix}skip_denses.{old}.bias"]
            continue
        dim = stage["dim"]
        weight = torch.zeros(dim, 2 * dim, dtype=fresh[part + "weight"].dtype)
        weight[:, :dim] = torch.eye(dim)
        grown[part + "weight"], grown[part + "bias"] = weight, torch.zeros(dim, dtype=weight.dtype)
    return grown, config


def grow_model_dir(src, dst, num_blocks):
    """Write a grown copy of the exported model in `src` to `dst` (weights, config, scheduler config)."""
    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    weights = load_file(src / WEIGHTS)
    shape = {key: value for key, value in config.items() if not key.startswith("_")}
    probe = json.loads(json.dumps(shape))
    probe["stage_configs"][-1]["num_blocks"] = num_blocks
    torch.manual_seed(0)
    fresh = DiMRModel(**probe).state_dict()
    grown, new_config = deepen_last_branch(weights, config, num_blocks, fresh)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({name: value.contiguous() for name, value in grown.items()}, dst / WEIGHTS)
    (dst / "config.json").write_text(json.dumps(new_config, indent=2))
    for extra in ("scheduler_config.json", "training.json"):
        if (src / extra).is_file():
            (dst / extra).write_text((src / extra).read_text())
    return dst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="an exported model directory")
    parser.add_argument("dst", help="where to write the grown model")
    parser.add_argument("--num-blocks", type=int, required=True, help="the last branch's new num_blocks")
    args = parser.parse_args(argv)
    print(f"wrote {grow_model_dir(args.src, args.dst, args.num_blocks)}")


if __name__ == "__main__":
    main()
