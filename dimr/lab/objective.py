"""The training objective: noise schedule, training times, multi-scale targets and the weighted loss.

Three parametrisations, in diffusers' names, for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:
    "epsilon"       the model predicts eps (the official DiMR recipe)
    "v_prediction"  v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022): a unit-variance target at every
                    noise level, which is what EDM's c_skip / c_out preconditioning achieves for this VP process
    "sample"        x0 itself
All three are linear in (x0, eps), so the multi-scale target of branch l is the same pooling of the full
target, whichever is predicted.
"""

import torch
import torch.nn.functional as F

from dimr.network.config import NUM_TRAIN_TIMESTEPS
from dimr.sampling.pipeline import make_scheduler

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("scaled_linear", "squaredcos_cap_v2", "linear")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def alphas_cumprod(beta_schedule="scaled_linear"):
    """abar over the 1000 training timesteps of a diffusers beta schedule (DiMR's own: "scaled_linear")."""
    return make_scheduler("ddim", beta_schedule=beta_schedule).alphas_cumprod.clone()


def sample_timesteps(z, time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
    """Timestep indices k in 0..999 from standard normal draws z [B].

    "uniform": t = Phi(z), uniform in (0, 1); "logit_normal": t = sigmoid(mean + std z) (Esser et al. 2024),
    which spends the training on middle noise levels. Both read the same draws, so two runs that differ only
    here see the same images and noise in the same order."""
    if time_sampling == "uniform":
        t = 0.5 * (1 + torch.erf(z / 2**0.5))
    else:
        t = torch.sigmoid(logit_mean + logit_std * z)
    return (t * NUM_TRAIN_TIMESTEPS).long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)


def prediction_target(x0, noise, abar, prediction_type):
    """What the network is trained to output, [B, C, H, W] (abar broadcastable)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    return x0


def multiscale_targets(target, scales):
    """The target at each branch's resolution: sum-pooled over f x f windows and divided by f (unit variance
    for noise), as the official code pools the noise."""
    return [target if f == 1 else F.avg_pool2d(target, f) * f for f in scales]


def snr_weights(abar, gamma, prediction_type="epsilon"):
    """Min-SNR-gamma weights (Hang et al. 2023), SNR = abar / (1 - abar): each sample's x0 error counts
    min(SNR, gamma), expressed for the predicted target, whose squared error is the x0 error times SNR
    (epsilon), SNR + 1 (v) or 1 (sample). Caps the easy, numerous low-noise steps."""
    snr = abar / (1 - abar)
    per_x0_error = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    return snr.clamp(max=gamma) / per_x0_error


def diffusion_loss(model, x0, labels, timesteps, noise, alphas_cumprod, loss_coeffs, min_snr_gamma=None,
                   prediction_type="epsilon"):
    """Multi-scale loss for clean images x0 in [-1, 1]; returns (total, [per-branch MSE]).

    With min_snr_gamma, each sample's squared error is weighted by `snr_weights`; the per-branch MSEs returned
    for logging stay unweighted."""
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    predictions = model.forward_branches(noisy, timesteps, labels)
    targets = multiscale_targets(prediction_target(x0, noise, abar, prediction_type), model.branch_scales)
    errors = [(p.float() - t).square().mean(dim=(1, 2, 3)) for p, t in zip(predictions, targets)]
    if min_snr_gamma is None:
        weights = torch.ones_like(errors[0])
    else:
        weights = snr_weights(abar.flatten(), min_snr_gamma, prediction_type)
    total = sum(c * (w_err * weights).mean() for c, w_err in zip(loss_coeffs, errors))
    return total, [e.mean() for e in errors]
