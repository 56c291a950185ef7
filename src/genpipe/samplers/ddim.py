"""Denoising diffusion implicit models: the non-Markovian sampler with a tunable eta.

Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", https://arxiv.org/abs/2010.02502

From x_t to x_s (s < t, any subsequence of the training timesteps, sec. 4.2):

    sigma   = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)          (eq. 16)
    x_s     = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z           (eq. 12)

with x0_hat ("predicted x_0") and eps_hat the network's prediction at x_t in both forms
(:class:`~genpipe.samplers.common.Denoised`). eta = 0 is deterministic (an Euler step of the
probability-flow ODE in the variables x / sqrt(abar) and sqrt(1 - abar) / sqrt(abar), sec. 4.3);
eta = 1 is the DDPM posterior.
The final step goes to abar = 1 and returns x0_hat.
"""

from __future__ import annotations

import math

import torch

from genpipe.samplers.common import DenoiseFn, alpha_bar, call_denoiser, cpu_noise


@torch.no_grad()
def ddim_sample(
    denoise_fn: DenoiseFn,  # the network: (x_t, t) -> (x0_hat, eps_hat)
    x_T: torch.Tensor,  # (B, C, H, W) noise at t = timesteps[0]
    alphas_cumprod: torch.Tensor,  # (T,) float64 alpha-bar
    timesteps: list[int],  # descending, e.g. timestep_sequence(T, 50, "uniform")
    *,
    eta: float = 0.0,  # 0: deterministic DDIM; 1: DDPM-like ancestral noise
    generator: torch.Generator | None = None,  # CPU generator of z (unused when eta = 0)
) -> torch.Tensor:
    """Run DDIM from ``x_T``; returns x_0 (B, C, H, W)."""
    x = x_T.float()
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_t, ab_s = alpha_bar(alphas_cumprod, t), alpha_bar(alphas_cumprod, s)
        x0, eps = call_denoiser(denoise_fn, x, t)
        sigma = eta * math.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
        x = math.sqrt(ab_s) * x0 + math.sqrt(max(1.0 - ab_s - sigma**2, 0.0)) * eps
        if sigma > 0.0:
            x = x + sigma * cpu_noise(x, generator)
    return x
