"""DiMRPipeline: official-quality sampling, guidance, determinism, per-branch traces, and clear input errors."""

import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dimr import DiMRPipeline, load_pipeline
from dimr.sampling.pipeline import SAMPLERS, branch_x0, guidance_weights, make_scheduler, model_evaluations

pytestmark = pytest.mark.usefixtures("one_thread")  # the models are tiny

GUIDANCE_FORMS = {  # golden sample key -> how a user asks for the same guidance
    "steps250_cfg0.4": dict(guidance_scale=1.4, guidance_schedule="constant"),
    "steps250_cfg3.0_powcos1.0": dict(guidance_scale=3.0, guidance_schedule="power-cosine", guidance_power=1.0),
}


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def latent_pipe(two_branch):
    return quiet(DiMRPipeline(two_branch.model(), vae=None))


def relative_l2(ours, reference):
    return ((ours - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module", params=["two_branch", "three_branch"])
def golden_samples(request, golden_file):
    """Each golden model sampled as the done-when criterion says: default sampler, 50 steps, both guidance forms."""
    golden = golden_file(request.param)
    pipe = quiet(DiMRPipeline(golden.model(), vae=None))
    ours = {form: pipe(class_labels=golden[f"in.sample.{form}.y"], **GUIDANCE_FORMS[form], num_inference_steps=50,
                       latents=golden[f"in.sample.{form}.noise"], output_type="latent").images
            for form in GUIDANCE_FORMS}
    return golden, ours


@pytest.mark.parametrize("form", GUIDANCE_FORMS)
def test_default_sampler_at_50_steps_is_within_1_percent_of_official_250_steps(golden_samples, form):
    golden, ours = golden_samples
    assert relative_l2(ours[form], golden[f"out.sample.{form}"]) < 0.01


def test_power_cosine_changes_the_result_as_the_official_one_does(golden_samples):
    """The two official guidance forms differ by ~1%; our difference must be that same difference."""
    golden, ours = golden_samples
    constant, cosine = (ours[form] for form in GUIDANCE_FORMS)
    official = golden["out.sample.steps250_cfg3.0_powcos1.0"] - golden["out.sample.steps250_cfg0.4"]
    assert relative_l2(cosine - constant, official) < 0.1


def test_power_cosine_weight_runs_from_one_at_pure_noise_to_the_scale_at_the_end():
    weights = guidance_weights([999, 499, 0], guidance_scale=3.0, guidance_schedule="power-cosine", guidance_power=1)
    assert weights[0] == pytest.approx(1.0)
    assert weights[1] == pytest.approx(1 + 2 * (1 - math.cos(math.pi * 0.5)) / 2)
    assert weights[2] == pytest.approx(1 + 2 * (1 - math.cos(math.pi * 0.999)) / 2)
    assert guidance_weights([999, 0], 1.4) == [1.4, 1.4]


def test_same_seed_gives_the_same_image_bit_for_bit(latent_pipe):
    def sample(seed):
        return latent_pipe([3, "tabby cat"], num_inference_steps=8, output_type="latent",
                           generator=torch.Generator().manual_seed(seed)).images

    first, again, other = sample(0), sample(0), sample(1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def count_forwards(model):
    """Record the batch size of every forward_branches call."""
    calls = []
    original = model.forward_branches

    def recording(sample, timestep, class_labels):
        calls.append(class_labels.clone())
        return original(sample, timestep, class_labels)

    model.forward_branches = recording
    return calls


def test_guidance_scale_one_is_the_conditional_model_alone(two_branch):
    model = two_branch.model()
    pipe = quiet(DiMRPipeline(model, vae=None))
    noise = two_branch["in.sample.steps250_cfg0.4.noise"]
    calls = count_forwards(model)
    guided = pipe([1, 5], guidance_scale=1.0, num_inference_steps=6, latents=noise, output_type="latent").images
    assert len(calls) == 6 and all(c.tolist() == [1, 5] for c in calls), "s = 1 must not run the null class"

    # Conditional-only sampling written out by hand with the same scheduler.
    scheduler = make_scheduler()
    scheduler.set_timesteps(6)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model.forward_branches(x, t, torch.tensor([1, 5]))[-1], t, x).prev_sample
    torch.testing.assert_close(guided, x, rtol=0, atol=1e-6)
    flat = pipe([1, 5], guidance_scale=1.0, guidance_schedule="power-cosine", num_inference_steps=6, latents=noise,
                output_type="latent").images
    assert torch.equal(flat, guided)


def test_guidance_is_one_batched_forward_equal_to_two_separate_ones(two_branch):
    model = two_branch.model()
    pipe = quiet(DiMRPipeline(model, vae=None))
    noise = two_branch["in.sample.steps250_cfg0.4.noise"]
    seen = {}

    def keep_first(pipe, i, t, tensors):
        seen.setdefault("noise_pred", tensors["noise_pred"].clone())
        seen.setdefault("t", t)
        return {}

    calls = count_forwards(model)
    pipe([1, 5], guidance_scale=2.5, num_inference_steps=3, latents=noise, output_type="latent",
         callback_on_step_end=keep_first, callback_on_step_end_tensor_inputs=["noise_pred"])
    assert [c.tolist() for c in calls] == [[1, 5, 1000, 1000]] * 3, "cond and uncond go in one forward per step"

    with torch.no_grad():
        cond = model.forward_branches(noise, seen["t"], torch.tensor([1, 5]))[-1]
        uncond = model.forward_branches(noise, seen["t"], torch.tensor([1000, 1000]))[-1]
    torch.testing.assert_close(seen["noise_pred"], uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_branch_trace_has_every_branch_at_every_step(golden):
    pipe = quiet(DiMRPipeline(golden.model(), vae=None))
    out = pipe([1, 5], num_inference_steps=4, output_type="latent", return_branches=True)
    trace = out.branches
    assert trace.scales == pipe.model.branch_scales
    assert len(trace.timesteps) == 4 and trace.timesteps[0] == 999
    for eps, x0, scale in zip(trace.noise_pred, trace.x0_pred, trace.scales):
        assert eps.shape == x0.shape == (4, 2, 4, 16 // scale, 16 // scale)
        assert torch.isfinite(x0).all()
    assert trace.images == []  # latent output: nothing decoded


def test_branch_clean_estimate_is_the_avg_pooled_image_when_the_noise_is_the_training_target():
    """A branch trained on sum-pool(eps) / f implies avg-pool(x0): the units of the trace's x0_pred."""
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    abar = torch.tensor(0.3)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    for f in (1, 2, 4):
        branch_eps = F.avg_pool2d(eps, f) * f  # sum-pool over f x f, divided by f
        torch.testing.assert_close(branch_x0(x_t, branch_eps, f, abar), F.avg_pool2d(x0, f))


def count_decodes(vae):
    """Record the batch size of every vae.decode call."""
    decodes = []
    original = vae.decode
    vae.decode = lambda z, *a, **k: decodes.append(z.shape[0]) or original(z, *a, **k)
    return decodes


def test_branch_images_decode_with_a_vae_in_bounded_batches(two_branch, tiny_vae):
    vae = tiny_vae
    pipe = quiet(DiMRPipeline(two_branch.model(), vae=vae))
    pipe.vae_batch_size = 5
    decodes = count_decodes(vae)
    out = pipe([1, 5], num_inference_steps=5, return_branches=True, branch_steps=[0, -1, 2])
    trace = out.branches
    assert decodes == [5, 5, 2, 2], "3 steps x 2 branches x 2 images in batches of at most 5, then the final images"
    assert trace.image_steps == [0, 4, 2]
    assert len(trace.images) == 3 and all(len(per_step) == 2 for per_step in trace.images)
    for per_step in trace.images:
        for images in per_step:
            assert len(images) == 2 and all(isinstance(im, Image.Image) and im.size == (32, 32) for im in images)
    assert len(out.images) == 2 and out.images[0].size == (32, 32)

    later = pipe.decode_branch_trace(trace, steps=[4], output_type="np")
    assert later[0][1].shape == (2, 32, 32, 3) and np.isfinite(later[0][1]).all()


@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_decoding_in_batches_gives_the_same_pixels_as_one_call(output_type, tiny_pixel_model, tiny_vae):
    vae = tiny_vae
    pipe = DiMRPipeline(tiny_pixel_model, vae=vae)
    latents = torch.randn(11, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    pipe.vae_batch_size = len(latents)
    decodes = count_decodes(vae)
    whole = pipe.decode(latents, output_type)
    pipe.vae_batch_size = 4
    batched = pipe.decode(latents, output_type)
    assert decodes == [11, 4, 4, 3]
    if output_type == "pil":
        whole, batched = np.stack([np.asarray(im) for im in whole]), np.stack([np.asarray(im) for im in batched])
        np.testing.assert_array_equal(batched, whole)
    else:
        expected = (11, 3, 32, 32) if output_type == "pt" else (11, 32, 32, 3)
        assert type(batched) is type(whole) and batched.shape == whole.shape == expected
        np.testing.assert_allclose(np.asarray(batched), np.asarray(whole), rtol=0, atol=1e-6)


def test_per_sample_guidance_gives_each_sample_what_its_scale_gives_alone(two_branch):
    pipe = quiet(DiMRPipeline(two_branch.model(), vae=None))
    noise = torch.randn(3, *pipe.latent_shape, generator=torch.Generator().manual_seed(1))
    scales = [1.0, 0.0, 2.5]
    for schedule in ("constant", "power-cosine"):
        together = pipe([1, 5, 2], guidance_scale=torch.tensor(scales), guidance_schedule=schedule,
                        num_inference_steps=4, latents=noise, output_type="latent").images
        for b, scale in enumerate(scales):
            alone = pipe([[1, 5, 2][b]], guidance_scale=scale, guidance_schedule=schedule, num_inference_steps=4,
                         latents=noise[b : b + 1], output_type="latent").images
            torch.testing.assert_close(together[b : b + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scales, message", [
    (torch.tensor([1.0, 2.0, 3.0]), r"one value per sample, shape \(2,\); got shape \(3,\)"),
    (torch.tensor([1.0, -2.0]), "guidance_scale=-2.0 is negative"),
    (torch.tensor([1.0, float("nan")]), "guidance_scale must be a finite number, got nan"),
])
def test_a_bad_per_sample_guidance_scale_is_a_clear_error(latent_pipe, scales, message):
    with pytest.raises(ValueError, match=message):
        latent_pipe([1, 2], guidance_scale=scales, num_inference_steps=2, output_type="latent")


def test_a_branch_step_outside_the_run_is_a_clear_error(tiny_pixel_model):
    pipe = quiet(DiMRPipeline(tiny_pixel_model))
    with pytest.raises(ValueError, match=r"branch step=3 is out of range: use -3..2"):
        pipe(["circle"], num_inference_steps=3, return_branches=True, branch_steps=[0, 3])


def test_pixel_space_branch_images_show_the_branch_resolution(tiny_pixel_model):
    pipe = quiet(DiMRPipeline(tiny_pixel_model))
    out = pipe(["circle", "tri"], num_inference_steps=3, return_branches=True, output_type="pt")
    assert out.images.shape == (2, 3, 16, 16) and 0 <= out.images.min() and out.images.max() <= 1
    for scale, images in zip(out.branches.scales, out.branches.images[-1]):
        assert images.shape == (2, 3, 16, 16)
        # Nearest upsampling: each f x f block holds one value.
        torch.testing.assert_close(images, F.interpolate(F.avg_pool2d(images, scale), scale_factor=scale))


def test_float16_vae_is_decoded_in_float32(two_branch, tiny_vae):
    pipe = quiet(DiMRPipeline(two_branch.model(), vae=tiny_vae.to(torch.float16)))
    images = pipe([1], num_inference_steps=2, output_type="np").images
    assert pipe.vae.dtype == torch.float32 and np.isfinite(images).all()


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_named_sampler_produces_a_sample(two_branch, name):
    pipe = quiet(DiMRPipeline(two_branch.model(), vae=None, scheduler=make_scheduler(name)))
    out = pipe([1, 5], num_inference_steps=4, output_type="latent").images
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_traces_one_entry_per_step_and_its_last_is_the_final_image(name):
    """Heun evaluates the network twice per step (2N - 1 times in all): the trace, the callback and the progress bar
    still count N steps, each entry the estimate of its step's last evaluation, and `model_evaluations` counts the
    network's calls."""
    pipe = quiet(load_pipeline("tiny-dimr", sampler=name))
    calls, steps_seen = [], []
    pipe.network = lambda *args: calls.append(1) or pipe.model.forward_branches(*args)
    out = pipe(["ring", "star", "square"], num_inference_steps=6, generator=torch.Generator().manual_seed(0),
               output_type="np", return_branches=True, branch_steps=[-1],
               callback_on_step_end=lambda p, i, t, tensors: steps_seen.append(i) or {})
    assert len(out.branches.timesteps) == 6 and out.branches.x0_pred[-1].shape[0] == 6
    assert steps_seen == list(range(6))
    assert len(calls) == model_evaluations(name, 6) == (11 if name == "heun" else 6)
    final, last = (np.round(255 * images) for images in (out.images, out.branches.images[-1][-1]))
    # Heun ends at sigma 0, so its last estimate is its final image; the others end at t = 1/1000 (sigma 0.029, the
    # official endpoint), whose noise stays in the final image: about 3/255 on average.
    assert np.abs(final - last).mean() <= (0.5 if name == "heun" else 4)


def test_docs_say_where_each_sampler_evaluates_and_ends():
    """docs/sampling.md's sampler table: per sampler, its model evaluations for N steps, its last evaluation's
    timestep index and the sigma its last step ends at, as the schedulers have them (here at N = 10)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "sampling.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `")]
    documented = {}
    for names, _, evaluations, last, end in rows:
        for name in re.findall(r"`([^`]+)`", names):
            documented[name] = (evaluations.strip(), last.strip(), float(re.match(r" *([0-9.]+)", end)[1]))
    assert sorted(documented) == sorted(SAMPLERS)
    for name, (evaluations, last, end) in documented.items():
        scheduler = make_scheduler(name)
        scheduler.set_timesteps(10)
        final_abar = getattr(scheduler, "final_alpha_cumprod", None)  # DDIM keeps no sigmas
        final_sigma = ((1 - final_abar) / final_abar) ** 0.5 if final_abar is not None else scheduler.sigmas[-1]
        assert model_evaluations(name, 10) == eval(evaluations.replace("2N", "2 * N"), {"N": 10}), name
        assert scheduler.timesteps[-1] == eval(last.removeprefix("k = "), {"N": 10}), name
        assert float(final_sigma) == pytest.approx(end, abs=5e-4), name


def test_callback_can_replace_latents_and_see_branch_predictions(latent_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append([x.shape[-1] for x in tensors["branch_x0_pred"]])
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = latent_pipe([1], num_inference_steps=3, output_type="latent", callback_on_step_end=callback,
                      callback_on_step_end_tensor_inputs=["latents", "branch_x0_pred"])
    assert seen == [[8, 16]] * 3
    assert torch.equal(out.images, torch.zeros_like(out.images))


def test_a_callback_can_stop_sampling_early(latent_pipe):
    def stop(pipe, i, t, tensors):
        if i == 1:
            pipe.stop()
        return {}

    out = latent_pipe([1], num_inference_steps=10, output_type="latent", return_branches=True,
                      callback_on_step_end=stop)
    assert len(out.branches.timesteps) == 2


@pytest.mark.parametrize("first_to_start", ["stopping call", "other call"])
def test_a_stop_ends_only_its_own_call_of_a_shared_pipeline(latent_pipe, first_to_start):
    """Two threads sample with one pipeline; one call stops itself after its first step while the other starts or
    runs. The stopping call ends there, whichever started first, and the other runs all its steps."""
    stopped, other_started = threading.Event(), threading.Event()

    def stopping(pipe, i, t, tensors):
        if i == 0:
            pipe.stop()
            stopped.set()
            assert other_started.wait(60)  # the other call starts (and begins its steps) after this stop
        return {}

    def other(pipe, i, t, tensors):
        other_started.set()
        assert stopped.wait(60)  # the other call steps on after the stop
        return {}

    def run(callback):
        return latent_pipe([1], num_inference_steps=6, output_type="latent", return_branches=True,
                           callback_on_step_end=callback)

    with ThreadPoolExecutor(2) as pool:
        if first_to_start == "stopping call":
            stopping_run = pool.submit(run, stopping)
            assert stopped.wait(60)
            other_run = pool.submit(run, other)
        else:
            other_run = pool.submit(run, other)
            assert other_started.wait(60)
            stopping_run = pool.submit(run, stopping)
        assert len(stopping_run.result().branches.timesteps) == 1
        assert len(other_run.result().branches.timesteps) == 6


def test_a_stopped_run_shows_only_the_branch_steps_it_reached(tiny_pixel_model):
    pipe = quiet(DiMRPipeline(tiny_pixel_model, vae=None))

    def stop(pipe, i, t, tensors):
        if i == 1:
            pipe.stop()
        return {}

    out = pipe([0], num_inference_steps=5, output_type="np", return_branches=True, branch_steps=[0, 1, 4],
               callback_on_step_end=stop)
    assert out.branches.image_steps == [0, 1]
    assert len(out.branches.images) == 2


BAD_INPUTS = [
    (dict(class_labels=["no such animal"]), "unknown class name 'no such animal'"),
    (dict(class_labels=[1000]), "1000 is the null class"),
    (dict(class_labels=[-1]), "class id -1 is out of range"),
    (dict(class_labels=[]), "class_labels is empty"),
    (dict(class_labels=[1.5]), "class label 1.5 must be"),
    (dict(num_inference_steps=0), "num_inference_steps=0 is out of range: use 1..1000"),
    (dict(num_inference_steps=100000), "num_inference_steps=100000 is out of range"),
    (dict(num_inference_steps=2.5), "num_inference_steps must be an integer"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number, got nan"),
    (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number, got inf"),
    (dict(guidance_scale=-1.0), "guidance_scale=-1.0 is negative"),
    (dict(guidance_schedule="cosine"), "guidance_schedule 'cosine' is not one of constant, power-cosine"),
    (dict(guidance_power=0.0), "guidance_power=0.0 must be positive"),
    (dict(output_type="jpg"), "output_type 'jpg' is not one of pil, np, pt, latent"),
    (dict(output_type="pil"), "needs a VAE"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents must be a tensor of shape (2, 4, 16, 16)"),
    (dict(callback_on_step_end_tensor_inputs=["x0"]), "['x0'] are not available"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gives_a_clear_error(latent_pipe, bad, message):
    kwargs = {**dict(class_labels=[1, 5], num_inference_steps=2, output_type="latent"), **bad}
    with pytest.raises(ValueError) as err:
        latent_pipe(**kwargs)
    assert message in str(err.value)


def test_unknown_sampler_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown sampler 'fast'; choose one of dpm-solver-3s, dpm\\+\\+2m"):
        make_scheduler("fast")


def test_model_class_names_and_synonyms_are_labels(tiny_pixel_model):
    pipe = DiMRPipeline(tiny_pixel_model)
    assert pipe.resolve_class_labels(["Circle", "tri", 1, "2"]) == [0, 2, 1, 2]
    with pytest.raises(ValueError, match="3 is the null class"):
        pipe.resolve_class_labels([3])


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@needs_gpu
def test_the_sampling_loop_never_waits_for_the_gpu(two_branch):
    pipe = quiet(DiMRPipeline(two_branch.model().cuda()))

    def strict_from_now_on(pipe, i, t, tensors):
        torch.cuda.set_sync_debug_mode("error")  # any later host sync raises
        return {}

    try:
        pipe([1, 5], num_inference_steps=6, output_type="latent", return_branches=True,
             callback_on_step_end=strict_from_now_on, callback_on_step_end_tensor_inputs=[])
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_gpu
def test_bf16_autocast_on_gpu_stays_close_to_float32(two_branch, tiny_vae):
    pipe = quiet(DiMRPipeline(two_branch.model().cuda(), vae=tiny_vae.cuda()))
    noise = two_branch["in.sample.steps250_cfg0.4.noise"].cuda()
    exact = pipe([1, 5], num_inference_steps=10, latents=noise, output_type="latent").images
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = pipe([1, 5], num_inference_steps=10, latents=noise, output_type="latent").images
        images = pipe([1, 5], num_inference_steps=2, output_type="np").images
    assert fast.dtype == torch.float32 and relative_l2(fast, exact) < 0.05
    assert np.isfinite(images).all()
