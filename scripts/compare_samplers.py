"""How close each diffusers sampler gets to the official 250-step DPM-Solver result, at 20 and 50 steps.

Uses the golden models and noise of tests/fixtures/golden (small random latent models run through the official
code). For each sampler / timestep spacing, both guidance forms the official code offers (constant s = 1.4 and
power-cosine s = 3, p = 1), and both golden models, it samples with DiMRPipeline exactly as a user would and
prints the relative L2 error ||ours - official|| / ||official|| (the worse of the two models).

    python scripts/compare_samplers.py            # the full table (a few minutes on one CPU core)
    python scripts/compare_samplers.py --only dpm++2m
"""

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout, installed or not

from dimr.network.weights import from_official  # noqa: E402
from dimr.sampling.pipeline import SAMPLERS, DiMRPipeline, make_scheduler  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden"
GUIDANCE = {  # golden key -> pipeline guidance settings
    "steps250_cfg0.4": dict(guidance_scale=1.4, guidance_schedule="constant"),
    "steps250_cfg3.0_powcos1.0": dict(guidance_scale=3.0, guidance_schedule="power-cosine", guidance_power=1.0),
}
# (sampler name, scheduler overrides) pairs to try: every named sampler as the app offers it, then other
# timestep spacings, the sigma = 0 endpoint instead of the official one, and a few solver variants.
CANDIDATES = (
    [(name, {}) for name in SAMPLERS]
    + [(name, dict(timestep_spacing=spacing)) for name in SAMPLERS if "karras" not in name
       for spacing in ("trailing", "leading")]
    + [(name, dict(final_sigmas_type="zero")) for name, (_, settings) in SAMPLERS.items()
       if "final_sigmas_type" in settings]
    + [("dpm++2m", dict(use_lu_lambdas=True)), ("dpm++2m", dict(solver_type="heun")),
       ("unipc", dict(solver_order=3)), ("unipc", dict(solver_type="bh1"))]
)


def supported(sampler, overrides):
    """Whether the sampler's scheduler class has every setting (DPMSolverSinglestep has no timestep_spacing)."""
    return set(overrides) <= set(inspect.signature(SAMPLERS[sampler][0].__init__).parameters)


def golden_models():
    for name in ("two_branch", "three_branch"):
        meta = json.loads((GOLDEN / f"{name}.json").read_text())
        tensors = load_file(GOLDEN / f"{name}.safetensors")
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        yield name, from_official(meta["model_config"], state), tensors


def relative_errors(models, sampler, overrides, steps):
    """{golden key: worst relative L2 over the golden models}."""
    worst = {}
    for _, model, tensors in models:
        pipe = DiMRPipeline(model, None, make_scheduler(sampler, **overrides))
        pipe.set_progress_bar_config(disable=True)
        for key, guidance in GUIDANCE.items():
            ref = tensors[f"out.sample.{key}"]
            ours = pipe(class_labels=tensors[f"in.sample.{key}.y"], num_inference_steps=steps,
                        latents=tensors[f"in.sample.{key}.noise"], output_type="latent", **guidance).images
            error = ((ours - ref).norm() / ref.norm()).item()
            worst[key] = error if math.isnan(error) else max(worst.get(key, 0.0), error)  # NaN: the sampler broke
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="just these sampler names")
    parser.add_argument("--from-row", type=int, default=0, help="skip the first candidates (resume a table)")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = list(golden_models())
    rows = []
    header = "| sampler | settings | " + " | ".join(
        f"{s} steps, {'constant 1.4' if 'powcos' not in k else 'power-cosine 3'}" for s in args.steps for k in GUIDANCE
    ) + " |"
    print(header)
    print("|" + "---|" * (2 + len(args.steps) * len(GUIDANCE)))
    for sampler, overrides in CANDIDATES[args.from_row :]:
        if args.only and sampler not in args.only or not supported(sampler, overrides):
            continue
        start = time.time()
        errors = {steps: relative_errors(models, sampler, overrides, steps) for steps in args.steps}
        cells = [f"{100 * errors[s][k]:.3f}%" for s in args.steps for k in GUIDANCE]
        settings = ", ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"| {sampler} | {settings} | " + " | ".join(cells) + f" |  <!-- {time.time() - start:.0f}s -->",
              flush=True)
        rows.append(dict(sampler=sampler, settings=overrides,
                         errors={str(s): errors[s] for s in args.steps}))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
