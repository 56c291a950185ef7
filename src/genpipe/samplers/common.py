"""What every sampler shares: the network interface, timestep sequences and noise.

Timesteps are discrete indices ``t`` in ``0 .. T-1`` into ``alphas_cumprod`` (alpha-bar,
float64, (T,)), with x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. A sampler
starts from x_T ~ N(0, I) placed at ``t = T-1`` and ends at the clean image, whose
alpha-bar is 1 (index -1 below, DDIM's "alpha_0 := 1").

Samplers ask the network for its prediction in both forms at once, the denoised image x0_hat
and the noise eps_hat (:class:`Denoised`), and never convert one into the other: solving
x_t = sqrt(abar) x0 + sqrt(1 - abar) eps for x0 divides by sqrt(abar), about 5e-5 at t = T-1
of the cosine schedule, which would magnify float32 rounding 2e4-fold. The model forms both
from what its network predicts (eps or v; see ``GaussianDiffusion.denoise``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch


class Denoised(NamedTuple):
    """The network's prediction at x_t, with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""

    x0: torch.Tensor  # (B, C, H, W) the denoised image x0_hat
    eps: torch.Tensor  # (B, C, H, W) the noise eps_hat


DenoiseFn = Callable[[torch.Tensor, torch.Tensor], Denoised]
"""The network as samplers see it: ``denoise_fn(x_t (B, C, H, W), t (B,) long) -> Denoised``."""

Spacing = Literal["uniform", "quadratic"]


def timestep_sequence(num_timesteps: int, steps: int, spacing: Spacing) -> list[int]:
    """``steps`` distinct timesteps from ``T - 1`` down to 0, one network evaluation each.

    uniform:   t_i = round((T - 1) * i / (S - 1))
    quadratic: t_i = round((T - 1) * (i / (S - 1))^2), denser near the data (Song et al.
               2021, DDIM, appendix D.2), bumped to stay strictly increasing.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps={steps} must be in [1, {num_timesteps}]")
    if steps == 1:
        return [num_timesteps - 1]
    frac = [i / (steps - 1) for i in range(steps)]
    ts = [round((num_timesteps - 1) * (f if spacing == "uniform" else f * f)) for f in frac]
    for i in range(1, steps):
        ts[i] = max(ts[i], ts[i - 1] + 1)
    return ts[::-1]


def alpha_bar(alphas_cumprod: torch.Tensor, t: int) -> float:
    """alpha-bar at index ``t`` as a Python float; ``t = -1`` is the clean image (1.0)."""
    return 1.0 if t < 0 else float(alphas_cumprod[t])


def call_denoiser(denoise_fn: DenoiseFn, x: torch.Tensor, t: int) -> Denoised:
    """denoise_fn at the same timestep ``t`` for the whole batch, as float32."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    x0, eps = denoise_fn(x, tt)
    return Denoised(x0.float(), eps.float())


def cpu_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) shaped like ``like``, drawn on the CPU from ``generator``, moved to its device."""
    return torch.randn(like.shape, generator=generator).to(device=like.device, dtype=like.dtype)
