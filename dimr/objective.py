"""The training objective: the noise schedule, the multi-scale noise targets and the (optionally SNR-weighted) loss."""

import torch
import torch.nn.functional as F

from .pipeline import make_scheduler


def scaled_linear_alphas_cumprod():
    """alphas_cumprod of the schedule DiMR trains and samples on (diffusers' DDPMScheduler, scaled linear)."""
    return make_scheduler("ddim").alphas_cumprod.clone()


def multiscale_targets(noise, scales):
    """The noise at each branch's resolution: sum-pooled over f x f windows and divided by f (unit variance)."""
    return [noise if f == 1 else F.avg_pool2d(noise, f) * f for f in scales]


def snr_weights(abar, gamma):
    """Min-SNR-gamma weights of epsilon-prediction losses: min(SNR, gamma) / SNR, SNR = abar / (1 - abar).

    Low-noise steps (high SNR) are easy and numerous; capping their weight stops them from dominating the
    gradient, which Hang et al. (2023) found speeds convergence about 3x."""
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(model, x0, labels, timesteps, noise, alphas_cumprod, loss_coeffs, min_snr_gamma=None):
    """Multi-scale epsilon loss for clean images x0 in [-1, 1]; returns (total, [per-branch MSE]).

    With min_snr_gamma, each sample's squared error is weighted by `snr_weights`; the per-branch MSEs returned
    for logging stay unweighted, so runs with and without weighting are compared on the same scale."""
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    predictions = model.forward_branches(noisy, timesteps, labels)
    targets = multiscale_targets(noise, model.branch_scales)
    errors = [(p.float() - t).square().mean(dim=(1, 2, 3)) for p, t in zip(predictions, targets)]
    weights = torch.ones_like(errors[0]) if min_snr_gamma is None else snr_weights(abar.flatten(), min_snr_gamma)
    total = sum(c * (w_err * weights).mean() for c, w_err in zip(loss_coeffs, errors))
    return total, [e.mean() for e in errors]
