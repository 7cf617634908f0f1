"""The official DiMR evaluation sampler, run from a local copy of github.com/qihao067/DiMR.

The official code is imported at run time from a folder the user exports (never committed here):

    git -C /path/to/DiMR-mirror archive HEAD | tar -x -C .official      # or: git clone ... .official

What its eval.py does per image batch, reproduced around its own modules (`libs.core.blocks.MRModel`,
`dpm_solver.NoiseScheduleVP` / `DPM_Solver`):
- the network is wrapped by `accelerate` with fp16 mixed precision: every call runs under fp16 autocast
  and its outputs are cast back to float32; inside, its blocks always go through reentrant
  `torch.utils.checkpoint` and attention runs in float32; time-dependent values are recomputed for every
  module on every call (pure-torch path, as its `seed_time` does);
- classifier-free guidance calls the network twice per evaluation (labels, then a fresh null-label
  tensor) and returns `cond + scale * (cond - uncond)` (scale 0.4 in its configs);
- DPM-Solver "fast" (singlestep orders 3, ..., 3, then 2 or 1), data prediction, uniform time steps
  from T=1 to eps=1/1000 on the discrete SD "scaled linear" schedule; the network's time input is
  log_snr = 8 n / 1000 - 4 with n = 1000 t.
"""

import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from dimr.network.config import NUM_TRAIN_TIMESTEPS


class OfficialCode:
    """The official modules this benchmark needs, imported from `repo` (a checkout or export of the repo)."""

    def __init__(self, repo):
        repo = Path(repo).resolve()
        if not (repo / "libs" / "core" / "blocks.py").is_file() or not (repo / "dpm_solver.py").is_file():
            raise FileNotFoundError(
                f"{repo} is not a copy of github.com/qihao067/DiMR (libs/core/blocks.py and dpm_solver.py expected); "
                "export one with `git -C MIRROR archive HEAD | tar -x -C DIR`")
        # Its axial-RoPE module switches torch._dynamo to silently swallow compile errors on import;
        # keep our own setting so a failing torch.compile of ours still reports itself.
        suppress_errors = torch._dynamo.config.suppress_errors
        sys.path.insert(0, str(repo))
        try:
            from dpm_solver import DPM_Solver, NoiseScheduleVP
            from libs.core.blocks import MRModel
        finally:
            sys.path.remove(str(repo))
            torch._dynamo.config.suppress_errors = suppress_errors
        self.repo = repo
        self.MRModel, self.DPM_Solver, self.NoiseScheduleVP = MRModel, DPM_Solver, NoiseScheduleVP

    def model(self, config, state_dict, device):
        """The official network for a config in the official field names (ours, normalized), with `state_dict`."""
        stages = []
        for stage in config["stage_configs"]:
            if stage.get("head_patch_size", 1) != 1:
                raise ValueError("the official network has no un-patchify head (head_patch_size must be 1)")
            stages.append(SimpleNamespace(**{k: v for k, v in stage.items() if k != "head_patch_size"}))
        official_config = SimpleNamespace(
            channels=config["channels"], num_classes=config["num_classes"], norm_type=config["norm_type"],
            block_grad_to_lowres=config["block_grad_to_lowres"], stage_configs=stages)
        with torch.device(device):
            nnet = self.MRModel(official_config)
        nnet.load_state_dict(state_dict)
        return nnet.eval()

    def sample(self, nnet, noise, class_labels, steps, cfg_scale=0.4, autocast_dtype=torch.float16):
        """Final latents of the official sampler from `noise` [B, C, H, W] and labels [B] (ints on the device).

        `autocast_dtype=None` runs the network in float32 (for checks on CPU)."""
        device = noise.device
        null_class = nnet.stages[0].class_embeds.num_embeddings - 1
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
        schedule = self.NoiseScheduleVP(schedule="discrete", betas=betas.to(device).float())

        def network(x, log_snr, y):
            # accelerate's fp16 wrapper: autocast around the call, every output cast back to float32.
            context = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with context:
                outputs = nnet(x, log_snr=log_snr, y=y)
            return [out.float() for out in outputs][-1]

        def model_fn(x, t_continuous):
            log_snr = (t_continuous * NUM_TRAIN_TIMESTEPS).float() / NUM_TRAIN_TIMESTEPS * 8 - 4
            cond = network(x, log_snr, class_labels)
            uncond = network(x, log_snr, torch.tensor([null_class] * x.size(0), device=device))
            return cond + cfg_scale * (cond - uncond)

        solver = self.DPM_Solver(model_fn, schedule, predict_x0=True, thresholding=False)
        return solver.sample(noise, steps=steps, eps=1.0 / NUM_TRAIN_TIMESTEPS, T=1.0)
