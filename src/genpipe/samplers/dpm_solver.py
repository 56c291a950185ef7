"""DPM-Solver++(2M): a second-order multistep solver of the diffusion ODE in data-prediction form.

Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", https://arxiv.org/abs/2211.01095

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
and the data prediction x0_hat(x_t, t) (the network's denoised image), the exact
solution of the probability-flow ODE from s to t is (eq. 8)

    x_t = sigma_t / sigma_s * x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x0_hat dlambda.

Algorithm 2 (multistep, second order) approximates x0_hat linearly in lambda from the
last two evaluations: with h_i = lambda_{t_i} - lambda_{t_{i-1}} and r_i = h_{i-1} / h_i,

    D_i     = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}
    x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i

The first step uses D_1 = x0_hat_0 (DPM-Solver++(1), i.e. DDIM). The final step goes to
sigma = 0 (lambda = inf), where the update reduces to x_0 = x0_hat of the last evaluation
(first order there, as in diffusers' ``final_sigmas_type="zero"``). NFE = len(timesteps).
"""

from __future__ import annotations

import math

import torch

from genpipe.samplers.common import DenoiseFn, alpha_bar, call_denoiser


def _lambda(abar: float) -> float:
    """Half the log signal-to-noise ratio: log(alpha / sigma)."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


@torch.no_grad()
def dpm_solver_pp_sample(
    denoise_fn: DenoiseFn,  # the network: (x_t, t) -> (x0_hat, eps_hat)
    x_T: torch.Tensor,  # (B, C, H, W) noise at t = timesteps[0]
    alphas_cumprod: torch.Tensor,  # (T,) float64 alpha-bar
    timesteps: list[int],  # descending, e.g. timestep_sequence(T, 20, "uniform")
    *,
    generator: torch.Generator | None = None,  # unused: the solver is deterministic
) -> torch.Tensor:
    """Run DPM-Solver++(2M) from ``x_T``; returns x_0 (B, C, H, W)."""
    x = x_T.float()
    prev_x0, prev_h = None, None
    for i, t in enumerate(timesteps):
        ab_t = alpha_bar(alphas_cumprod, t)
        x0 = call_denoiser(denoise_fn, x, t).x0
        if i + 1 == len(timesteps):
            return x0  # the step to sigma = 0
        ab_s = alpha_bar(alphas_cumprod, timesteps[i + 1])
        h = _lambda(ab_s) - _lambda(ab_t)
        if prev_x0 is None:
            d = x0
        else:
            r = prev_h / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
        x = math.sqrt((1.0 - ab_s) / (1.0 - ab_t)) * x - math.sqrt(ab_s) * math.expm1(-h) * d
        prev_x0, prev_h = x0, h
    return x
