"""Diffusion samplers: one algorithm per file, plain functions of (denoise_fn, x_T, alpha-bar, timesteps).

Every sampler has the signature ``f(denoise_fn, x_T, alphas_cumprod, timesteps, *, generator, ...)``
and returns x_0; ``denoise_fn(x_t, t)`` is the network's prediction as the pair (x0_hat, eps_hat)
(:class:`Denoised`). :func:`run_sampler` picks the timesteps (all T for ``ddpm``) and passes
the options a sampler takes; its length is the number of network evaluations (NFE).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genpipe.samplers.common import DenoiseFn, Denoised, Spacing, timestep_sequence
from genpipe.samplers.ddim import ddim_sample
from genpipe.samplers.dpm_solver import dpm_solver_pp_sample
from genpipe.samplers.ddpm import ddpm_sample

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm_sample,  # ancestral, all T steps (Ho et al. 2020)
    "ddim": ddim_sample,  # eta, any number of steps (Song et al. 2021)
    "dpm_solver++": dpm_solver_pp_sample,  # 2M multistep ODE solver (Lu et al. 2022)
}


def sampler_timesteps(name: str, num_timesteps: int, steps: int, spacing: Spacing) -> list[int]:
    """The timesteps sampler ``name`` visits: all T for ddpm, else ``steps`` spaced by ``spacing``."""
    if name == "ddpm":
        return list(range(num_timesteps - 1, -1, -1))
    return timestep_sequence(num_timesteps, steps, spacing)


def run_sampler(
    name: str,  # a key of SAMPLERS
    denoise_fn: DenoiseFn,
    x_T: torch.Tensor,  # (B, C, H, W) standard normal noise
    alphas_cumprod: torch.Tensor,  # (T,) float64
    *,
    steps: int,  # network evaluations; ignored by ddpm
    spacing: Spacing = "uniform",
    eta: float = 0.0,  # ddim only
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_0 (B, C, H, W) from ``x_T`` with the named sampler."""
    timesteps = sampler_timesteps(name, len(alphas_cumprod), steps, spacing)
    extra = {"eta": eta} if name == "ddim" else {}
    return SAMPLERS[name](denoise_fn, x_T, alphas_cumprod, timesteps, generator=generator, **extra)


__all__ = ["SAMPLERS", "DenoiseFn", "Denoised", "Spacing", "run_sampler", "sampler_timesteps", "timestep_sequence"]
