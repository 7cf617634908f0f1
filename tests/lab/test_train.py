"""Training: the recipe's pieces, loss going down, exact resume, lockstep, export, the two matched configs, and
reproducing the lab's pair with one command."""

import hashlib
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

from dimr.__main__ import main
from dimr.lab.objective import (
    alphas_cumprod,
    diffusion_loss,
    multiscale_targets,
    prediction_target,
    sample_timesteps,
    snr_weights,
)
from dimr.lab.reproduce import steps_done
from dimr.lab.shapes import CLASS_NAMES
from dimr.lab.train import Trainer, train
from dimr.lab.train_config import load_config, model_cost, prepare_config
from dimr.network.model import DiMRModel
from dimr.sampling.loading import CHECKPOINTS_DIR


def tiny_config(**train_overrides):
    """A 2-branch model of ~0.1M parameters on 256 images: seconds per run on a CPU."""
    return prepare_config({
        "name": "tiny-test",
        "model": {"channels": 3, "stage_configs": [
            {"block_type": "TransformerBlock", "dim": 32, "hidden_dim": 64, "num_attention_heads": 2, "num_blocks": 2,
             "max_height": 8, "max_width": 8, "input_feature_ratio": 4},
            {"block_type": "ConvNeXtBlock", "dim": 16, "hidden_dim": 32, "kernel_size": 7, "num_blocks": 2,
             "max_height": 32, "max_width": 32}]},
        "data": {"num_images": 256, "seed": 0},
        "train": {"batch_size": 8, "warmup_steps": 2, **train_overrides},
    })


def test_multiscale_targets_keep_unit_variance_and_are_scaled_sum_pools():
    noise = torch.randn(256, 3, 32, 32)
    targets = multiscale_targets(noise, [4, 2, 1])
    assert [t.shape[-1] for t in targets] == [8, 16, 32]
    for target in targets:
        assert abs(target.std().item() - 1) < 0.02 and abs(target.mean().item()) < 0.02
    # Branch at scale 4: the sum over each 4x4 window, divided by 4.
    assert torch.allclose(targets[0][0, 0, 1, 2], noise[0, 0, 4:8, 8:12].sum() / 4, atol=1e-5)
    assert targets[2] is noise


def test_noise_schedule_is_diffusers_scaled_linear():
    from diffusers import DDPMScheduler

    expected = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear").alphas_cumprod
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert torch.equal(alphas_cumprod(), expected)
    assert torch.allclose(expected, torch.cumprod(1 - betas, 0))


def test_every_prediction_type_recovers_the_clean_image_through_the_branch_estimate():
    from dimr.sampling.pipeline import branch_x0

    x0, noise = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 3, 32, 32)
    abar = torch.tensor(0.3)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        target = prediction_target(x0, noise, abar, prediction_type)
        for f, pooled in zip([4, 2, 1], multiscale_targets(target, [4, 2, 1])):
            expected = torch.nn.functional.avg_pool2d(x0, f) if f > 1 else x0
            torch.testing.assert_close(branch_x0(x_t, pooled, f, abar, prediction_type), expected, atol=1e-5, rtol=0)


def test_uniform_and_logit_normal_times_read_the_same_draws():
    z = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    uniform, logit_normal = sample_timesteps(z), sample_timesteps(z, "logit_normal", 0.0, 1.0)
    assert uniform.min() >= 0 and uniform.max() <= 999
    assert abs(uniform.float().mean().item() - 499.5) < 10 and abs(uniform.float().std().item() - 288.7) < 5
    # Logit-normal times crowd the middle: fewer draws in the outer tenths than uniform ones.
    outer = lambda k: ((k < 100) | (k >= 900)).float().mean().item()
    assert outer(logit_normal) < 0.05 < 0.15 < outer(uniform)
    # Same draws: both are monotone in z, so a sample is in the noisier half under one exactly when under the other.
    assert torch.equal((uniform - 499.5).sign()[z.abs() > 0.1], (logit_normal - 499.5).sign()[z.abs() > 0.1])


def test_config_checks_the_diffusion_section():
    config = tiny_config()
    assert config["diffusion"] == {"beta_schedule": "scaled_linear", "prediction_type": "epsilon", "thresholding": False}
    with pytest.raises(ValueError, match="diffusion.prediction_type 'x0' is not one of epsilon, v_prediction, sample"):
        prepare_config({**config, "diffusion": {"prediction_type": "x0"}})
    with pytest.raises(ValueError, match="train.time_sampling 'normal' is not one of uniform, logit_normal"):
        tiny_config(time_sampling="normal")


def test_config_fills_classes_and_default_loss_coeffs_and_rejects_mismatches():
    config = tiny_config()
    assert config["model"]["num_classes"] == len(CLASS_NAMES) + 1
    assert config["model"]["class_names"] == CLASS_NAMES
    assert config["train"]["loss_coeffs"] == [0.25, 1.0]
    with pytest.raises(ValueError, match="loss_coeffs has 3 entries but the model has 2 branches"):
        tiny_config(loss_coeffs=[0.25, 0.25, 1.0])
    with pytest.raises(ValueError, match=r"unknown train fields \['learning_rate'\]"):
        tiny_config(learning_rate=0.1)


def test_min_snr_weights_cap_the_easy_low_noise_steps_and_leave_the_rest():
    abar = torch.tensor([0.99, 5 / 6, 0.5, 0.01])  # SNR 99, 5, 1, 1/99
    assert snr_weights(abar, 5.0).tolist() == pytest.approx([5 / 99, 1.0, 1.0, 1.0])
    # The same cap on the x0 error, for v (whose error is the x0 error times SNR + 1) and x0 predictions.
    assert snr_weights(abar, 5.0, "v_prediction").tolist() == pytest.approx([5 / 100, 5 / 6, 1 / 2, 1 / 100], rel=1e-5)
    assert snr_weights(abar, 5.0, "sample").tolist() == pytest.approx([5.0, 5.0, 1.0, 1 / 99], rel=1e-5)
    with pytest.raises(ValueError, match=r"train.min_snr_gamma must be positive \(or null for no weighting\), got 0"):
        tiny_config(min_snr_gamma=0)


def test_weighted_loss_weights_each_sample_but_logs_the_plain_mse():
    torch.manual_seed(0)
    model = DiMRModel(**tiny_config()["model"])
    x0, noise = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 3, 32, 32)
    labels, timesteps = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 10, 500, 999])
    abar = alphas_cumprod()
    plain, plain_branches = diffusion_loss(model, x0, labels, timesteps, noise, abar, [0.25, 1.0])
    weighted, weighted_branches = diffusion_loss(model, x0, labels, timesteps, noise, abar, [0.25, 1.0], 5.0)
    assert torch.allclose(torch.stack(plain_branches), torch.stack(weighted_branches))
    assert weighted < plain  # the two low-noise samples count less


def test_new_models_start_from_the_official_initialisation():
    model = DiMRModel(**load_config("tiny-dimr")["model"])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.001
    assert all(m.bias is None or not m.bias.any() for m in convs)


def test_learning_rate_warms_up_holds_and_decays_to_zero_at_the_last_step(tmp_path):
    trainer = Trainer(tiny_config(lr=1e-3, warmup_steps=2, max_steps=10, decay_steps=4), tmp_path)
    rates = [trainer.lr_at(step) for step in range(10)]
    assert rates == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    constant = Trainer(tiny_config(lr=1e-3, warmup_steps=2, max_steps=10), tmp_path)
    assert constant.lr_at(9) == constant.lr_at(2) == 1e-3


def test_config_rejects_a_decay_longer_than_the_run_and_a_nonpositive_lr():
    with pytest.raises(ValueError, match=r"train.decay_steps \(20\) cannot exceed train.max_steps \(10\)"):
        tiny_config(max_steps=10, decay_steps=20)
    with pytest.raises(ValueError, match="train.decay_steps must be an integer >= 0, got -1"):
        tiny_config(decay_steps=-1)
    with pytest.raises(ValueError, match="train.lr must be positive, got 0"):
        tiny_config(lr=0)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path):
    trainer = Trainer(tiny_config(lr=3e-3), tmp_path)
    batch = trainer.draw_batch()
    with torch.no_grad():
        before = trainer.compute_loss(batch)[0].item()
    for _ in range(25):
        trainer.train_step(batch)
    with torch.no_grad():
        after = trainer.compute_loss(batch)[0].item()
    assert after < 0.7 * before, (before, after)


def test_label_dropout_uses_the_null_class(tmp_path):
    trainer = Trainer(tiny_config(batch_size=4000, label_dropout=0.1), tmp_path)
    _, labels, timesteps, _ = trainer.draw_batch()
    dropped = (labels == trainer.model.null_class).float().mean().item()
    assert 0.08 < dropped < 0.12
    assert timesteps.min() >= 0 and timesteps.max() <= 999 and timesteps.float().std() > 250


def test_resume_continues_from_the_saved_step_exactly(tmp_path):
    config = tiny_config()
    interrupted = train(config, tmp_path / "a", max_steps=3, progress=False)
    assert json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["step"] == 3
    resumed = train(config, tmp_path / "a", max_steps=5, resume=True, progress=False)
    straight = train(config, tmp_path / "b", max_steps=5, progress=False)
    assert resumed.step == straight.step == 5
    for (name, a), b in zip(resumed.ema.state_dict().items(), straight.ema.state_dict().values()):
        assert torch.equal(a, b), name


SWAP_POINTS = {"while the new one is written": 2, "after the old one moved away": 4, "after the new one moved in": 4,
               "while the old one is removed": 4}  # where a kill lands -> the step a resumed run starts from
# For each {point: run dir} of argv[1], a `dimr train` process (argv[2:] --run-dir DIR), forked from this one so
# that the imports are paid once, killed (SIGKILL) at that point of its second checkpoint save, the first that
# replaces a checkpoint. Prints {point: the signal that ended it}.
KILL_DURING_A_SWAP = """
import json, os, pathlib, shutil, signal, sys, torch
from dimr.__main__ import main

rename, rmtree, save = pathlib.Path.rename, shutil.rmtree, torch.save
runs, command = json.loads(sys.argv[1]), sys.argv[2:]

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def train_until_killed(point, run_dir):
    def saving(obj, path):  # the optimizer state: written after the weights, before state.json
        save(obj, path)
        if point == "while the new one is written" and (pathlib.Path(path).parent.parent / "checkpoint").exists():
            kill()

    def renaming(source, target):
        moved = rename(source, target)
        if (point, source.name) == ("after the old one moved away", "checkpoint") or (
                point, target.name) == ("after the new one moved in", "checkpoint"):
            kill()
        return moved

    def removing(path, **kwargs):
        if point == "while the old one is removed":
            (path / "model.safetensors").unlink()
            kill()
        rmtree(path, **kwargs)

    torch.save, pathlib.Path.rename, shutil.rmtree = saving, renaming, removing
    main([*command, "--run-dir", run_dir])
    os._exit(0)

ended_by = {}
for point, run_dir in runs.items():
    pid = os.fork()
    if pid == 0:
        train_until_killed(point, run_dir)
    status = os.waitpid(pid, 0)[1]
    ended_by[point] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
print(json.dumps(ended_by))
"""


def train_command(config):
    return ["train", "--config", str(config), "--device", "cpu", "--threads", "1", "--num-images", "16",
            "--batch-size", "4", "--max-steps", "6", "--log-every", "2", "--checkpoint-minutes", "0", "--export",
            "none", "--no-progress", "--resume"]


@pytest.fixture(scope="module")
def killed_during_swaps(tmp_path_factory):
    """{point: run dir} of runs whose `dimr train` was killed at each of SWAP_POINTS."""
    tmp = tmp_path_factory.mktemp("killed")
    config = tmp / "tiny.json"
    config.write_text(json.dumps({**tiny_config(), "name": "tiny-test"}))
    runs = {point: str(tmp / f"run{n}") for n, point in enumerate(SWAP_POINTS)}
    done = subprocess.run([sys.executable, "-c", KILL_DURING_A_SWAP, json.dumps(runs), *train_command(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {point: signal.SIGKILL for point in runs}, done.stdout
    return config, runs


@pytest.mark.parametrize("point", SWAP_POINTS)
def test_a_kill_during_a_checkpoint_swap_resumes_from_the_newest_whole_checkpoint(killed_during_swaps, capsys,
                                                                                  point):
    """Checkpoints at steps 2 and 4; a `dimr train` killed during the swap at step 4 resumes at 4, or at 2 when step
    4's checkpoint was not yet whole, and trains on to its last step with nothing left beside its checkpoint."""
    config, runs = killed_during_swaps
    run = Path(runs[point])
    assert main([*train_command(config), "--run-dir", str(run)]) == 0
    assert f"resumed {run} at step {SWAP_POINTS[point]}" in capsys.readouterr().out
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json", "log.jsonl"]


def test_resume_refuses_a_run_with_another_model(tmp_path):
    train(tiny_config(), tmp_path, max_steps=1, progress=False)
    other = tiny_config()
    other["model"]["stage_configs"][1]["dim"] = 8
    with pytest.raises(ValueError, match="its 'model' config differs"):
        train(other, tmp_path, max_steps=2, resume=True, progress=False)


def test_runs_in_lockstep_stop_at_the_same_step(tmp_path):
    results = {}

    def run(name, threads_config):
        results[name] = train(threads_config, tmp_path / name, max_minutes=0.05, sync_dir=tmp_path / "sync",
                              log_every=2, progress=False).step

    a, b = tiny_config(), tiny_config()
    b["name"] = "tiny-test-b"
    workers = [threading.Thread(target=run, args=(c["name"], c)) for c in (a, b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results["tiny-test"] == results["tiny-test-b"] > 0


def test_a_stop_step_left_by_an_earlier_lockstep_session_does_not_end_the_next(tmp_path):
    config, sync = tiny_config(), tmp_path / "sync"
    # Out of time at once: the session agrees on stop step 4 (two log intervals on) and ends there.
    first = train(config, tmp_path / "run", max_steps=8, max_minutes=0, sync_dir=sync, log_every=2, progress=False)
    assert first.step == 4 and json.loads((sync / "stop.json").read_text())["step"] == 4
    second = train(config, tmp_path / "run", max_steps=8, max_minutes=60, resume=True, sync_dir=sync, log_every=2,
                   progress=False)
    assert second.step == 8


def test_export_is_a_loadable_pixel_space_model_with_class_names(tmp_path):
    trainer = train(tiny_config(), tmp_path / "run", max_steps=2, export_dir=tmp_path / "export", progress=False)
    model = DiMRModel.from_pretrained(tmp_path / "export")
    assert model.config.class_names == CLASS_NAMES and model.config.channels == 3
    saved = load_file(tmp_path / "export" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in trainer.ema.state_dict().items())
    info = json.loads((tmp_path / "export" / "training.json").read_text())
    assert info["steps"] == 2 and info["images_seen"] == 16


def test_a_model_trained_on_another_schedule_is_sampled_on_it(tmp_path):
    from dimr.sampling.loading import load_pipeline

    config = prepare_config({**tiny_config(), "diffusion": {"beta_schedule": "squaredcos_cap_v2",
                                                             "prediction_type": "v_prediction", "thresholding": True}})
    train(config, tmp_path / "run", max_steps=1, export_dir=tmp_path / "export", progress=False)
    for sampler in ("dpm-solver-3s", "ddim"):
        scheduler = load_pipeline(tmp_path / "export", device="cpu", sampler=sampler).scheduler
        assert (scheduler.config.beta_schedule, scheduler.config.prediction_type, scheduler.config.thresholding) == \
               ("squaredcos_cap_v2", "v_prediction", True)
    # Euler cannot clip x0 estimates: it keeps the schedule and prediction type and samples unclipped.
    euler = load_pipeline(tmp_path / "export", device="cpu", sampler="euler").scheduler
    assert euler.config.prediction_type == "v_prediction" and "thresholding" not in euler.config


def test_bundled_configs_match_in_parameters_and_flops_and_fit_the_size_limit():
    dimr, baseline = load_config("tiny-dimr"), load_config("tiny-baseline")
    (p_dimr, f_dimr), (p_base, f_base) = model_cost(dimr["model"]), model_cost(baseline["model"])
    assert max(p_dimr, p_base) / min(p_dimr, p_base) <= 1.15
    assert max(f_dimr, f_base) / min(f_dimr, f_base) <= 1.15
    # fp32 checkpoints under 20 MB; under 16 MiB each so a GPU run can send them back.
    assert 4 * max(p_dimr, p_base) < 16 * 2**20
    # Same data, steps and recipe; only the per-branch loss weights follow the number of branches.
    assert dimr["data"] == baseline["data"]
    assert {k: v for k, v in dimr["train"].items() if k != "loss_coeffs"} == \
           {k: v for k, v in baseline["train"].items() if k != "loss_coeffs"}
    # The baseline is the transformer branch alone, decoding its large patches with an un-patchify head.
    transformer = dimr["model"]["stage_configs"][0]
    (single,) = baseline["model"]["stage_configs"]
    assert single["input_feature_ratio"] == single["head_patch_size"] == transformer["input_feature_ratio"] == 4
    assert [s["block_type"] for s in dimr["model"]["stage_configs"]] == ["TransformerBlock", "ConvNeXtBlock", "ConvNeXtBlock"]


def test_continuing_an_exported_model_keeps_its_training_history(tmp_path):
    config = tiny_config()
    train(config, tmp_path / "first", max_steps=2, export_dir=tmp_path / "model-1", progress=False)
    # The second session is interrupted and resumed: the model it started from must still be remembered.
    train(config, tmp_path / "second", max_steps=1, init_from=tmp_path / "model-1", progress=False)
    train(config, tmp_path / "second", max_steps=3, resume=True, export_dir=tmp_path / "model-2", progress=False)
    info = json.loads((tmp_path / "model-2" / "training.json").read_text())
    assert [s["steps"] for s in info["sessions"]] == [2, 3]
    assert info["sessions"][1]["init_from"] == str(tmp_path / "model-1")
    assert info["total_steps"] == 5 and info["total_images_seen"] == 5 * 8
    train(config, tmp_path / "third", max_steps=1, init_from=tmp_path / "model-2", export_dir=tmp_path / "model-3",
          progress=False)
    info = json.loads((tmp_path / "model-3" / "training.json").read_text())
    assert [s["steps"] for s in info["sessions"]] == [2, 3, 1] and info["total_steps"] == 6


def test_train_command_applies_schedule_overrides_and_explains_bad_ones(tmp_path, capsys):
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(tiny_config()))
    common = ["train", "--config", str(config_file), "--device", "cpu", "--run-dir", str(tmp_path / "run"),
              "--no-progress"]
    assert main([*common, "--max-steps", "3", "--lr", "2e-3", "--decay-steps", "3", "--export",
                 str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert (info["steps"], info["lr"], info["decay_steps"]) == (3, 2e-3, 3)
    assert main([*common, "--max-steps", "3", "--decay-steps", "5", "--export", "none"]) == 2
    assert "train.decay_steps (5) cannot exceed train.max_steps (3)" in capsys.readouterr().err


# Reproducing the lab's models: one command trains a pair side by side, measures both, and leaves the bundled
# models alone unless asked.


def bundled_fingerprint():
    return {p.relative_to(CHECKPOINTS_DIR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(CHECKPOINTS_DIR.rglob("*")) if p.is_file()}


def test_reproduce_trains_both_in_lockstep_measures_them_and_keeps_the_bundled_models(tmp_path, capsys):
    configs = []
    for name in ("pair-a", "pair-b"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**tiny_config(), "name": name}))
        configs.append(str(path))
    before = bundled_fingerprint()
    command = ["reproduce", "--configs", *configs, "--out", str(tmp_path / "out"), "--max-steps", "4",
               "--samples", "10", "--threads", "1"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    for name in ("pair-a", "pair-b"):
        model = tmp_path / "out" / name / "model"
        assert json.loads((model / "training.json").read_text())["steps"] == 4
        assert json.loads((model / "distortion.json").read_text())["samples"] == 10
        assert (tmp_path / "out" / name / "grid.png").is_file()
        assert f"| {name} | 32 |" in printed  # 4 steps of 8 images
    assert "the bundled models are unchanged" in printed
    assert bundled_fingerprint() == before
    # Run again: nothing is trained or measured twice.
    weights = (tmp_path / "out" / "pair-a" / "model" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(command) == 0
    assert (tmp_path / "out" / "pair-a" / "model" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == weights


def test_reproduce_reads_the_step_of_complete_log_lines_only(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 10, "loss": 0.5}\n{"step": 2')  # the trainer is half-way through a line
    assert steps_done(tmp_path) == 10
    log.write_text('{"st')
    assert steps_done(tmp_path) == 0


def test_install_is_refused_for_models_that_are_not_the_bundled_pair(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({**tiny_config(), "name": "other"}))
    assert main(["reproduce", "--configs", str(path), "--out", str(tmp_path / "out"), "--install"]) == 2
    assert "--install and --continue-bundled work on the bundled models tiny-dimr, tiny-baseline; these configs train " \
           "other" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_without_export_keeps_its_model_in_the_run_directory(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**tiny_config(), "name": "tiny-dimr"}))  # the bundled model's name
    before = bundled_fingerprint()
    assert main(["train", "--config", str(path), "--device", "cpu", "--max-steps", "2", "--run-dir",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert bundled_fingerprint() == before
