"""Ancestral sampling of the learned reverse process (DDPM).

Ho et al. 2020, "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239

Each step draws x_s ~ p(x_s | x_t) = q(x_s | x_t, x_0 = x0_hat) with the forward
posterior (eq. 6-7), written for any s < t so that a respaced chain works as well
(Nichol & Dhariwal 2021, sec. 4):

    beta'      = 1 - abar_t / abar_s
    mu_tilde   = sqrt(abar_s) beta' / (1 - abar_t) * x0_hat
               + sqrt(1 - beta') (1 - abar_s) / (1 - abar_t) * x_t                      (eq. 7)
    beta_tilde = (1 - abar_s) / (1 - abar_t) * beta'                                     (eq. 7)
    x_s        = mu_tilde + sqrt(beta_tilde) z,  z ~ N(0, I)

with x0_hat the network's denoised image at x_t. With s = t - 1 this is
Algorithm 2 with sigma_t^2 = beta_tilde_t. The last step (to abar = 1) adds no noise and
returns x0_hat.
"""

from __future__ import annotations

import math

import torch

from genpipe.samplers.common import DenoiseFn, alpha_bar, call_denoiser, cpu_noise


@torch.no_grad()
def ddpm_sample(
    denoise_fn: DenoiseFn,  # the network: (x_t, t) -> (x0_hat, eps_hat)
    x_T: torch.Tensor,  # (B, C, H, W) noise at t = timesteps[0]
    alphas_cumprod: torch.Tensor,  # (T,) float64 alpha-bar
    timesteps: list[int] | None = None,  # descending; None: all T steps (the DDPM chain)
    *,
    generator: torch.Generator | None = None,  # CPU generator of the per-step noise z
) -> torch.Tensor:
    """Run the reverse chain from ``x_T``; returns x_0 (B, C, H, W)."""
    seq = list(range(len(alphas_cumprod) - 1, -1, -1)) if timesteps is None else list(timesteps)
    x = x_T.float()
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else -1
        ab_t, ab_s = alpha_bar(alphas_cumprod, t), alpha_bar(alphas_cumprod, s)
        x0 = call_denoiser(denoise_fn, x, t).x0
        beta = 1.0 - ab_t / ab_s
        mean = (math.sqrt(ab_s) * beta / (1.0 - ab_t)) * x0 + (
            math.sqrt(1.0 - beta) * (1.0 - ab_s) / (1.0 - ab_t)
        ) * x
        if s < 0:
            return mean  # = x0_hat: beta' = 1 - abar_t, the x_t coefficient vanishes
        x = mean + math.sqrt(beta * (1.0 - ab_s) / (1.0 - ab_t)) * cpu_noise(x, generator)
    return x
