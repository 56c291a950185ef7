"""Likelihoods of 8-bit pixels, shared by the families that model them.

The discretised logistic (Salimans et al. 2017, "PixelCNN++", eq. 2) assigns each of the
256 pixel levels the mass of its bin under a logistic, with the edge bins taking the tails,
so the probabilities over the 256 levels sum to exactly one and ``-log p`` is a true code
length (bits/dim without any dequantisation correction). The discretised Gaussian is the
same construction with a Gaussian CDF: the decoder p(x_0 | x_1) of DDPM (Ho et al. 2020,
eq. 13).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HALF_BIN = 1.0 / 255.0  # pixels live on 256 levels in [-1, 1], 2/255 apart


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_std)^2) elementwise (broadcast; the caller sums over its dims):
    the continuous density of latents (a flow's prior, a VAE's prior and posterior)."""
    return -0.5 * (math.log(2 * math.pi) + 2.0 * log_std + ((z - mean) * torch.exp(-log_std)).pow(2))


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for x on the 256-level grid of [-1, 1]; all tensors broadcast."""
    centered = x - mean
    inv_s = torch.exp(-log_scale)
    plus_in = inv_s * (centered + HALF_BIN)
    min_in = inv_s * (centered - HALF_BIN)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in), used for x = -1
    log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigmoid(min_in)), used for x = +1
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centered  # when the bin mass underflows, use the density times bin width
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in) + torch.log(torch.tensor(2 * HALF_BIN))
    log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_mid))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for x on the 256-level grid of [-1, 1] under N(mean, exp(log_scale)^2)
    integrated over x's bin (the edge bins take the tails); computed in float64, all tensors broadcast."""
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_s = torch.exp(-log_scale)
    upper = inv_s * (x - mean + HALF_BIN)
    lower = inv_s * (x - mean - HALF_BIN)
    log_cdf_upper = torch.special.log_ndtr(upper)  # used for x = -1
    log_sf_lower = torch.special.log_ndtr(-lower)  # log(1 - Phi(lower)), used for x = +1
    # log(Phi(upper) - Phi(lower)) = log Phi(upper) + log(1 - exp(log Phi(lower) - log Phi(upper))),
    # mirrored onto the right tail when the bin lies above the mean, so neither side cancels
    right = lower > 0
    a = torch.where(right, -lower, upper)  # the bin's edge nearer the mean, as a left-tail point
    b = torch.where(right, -upper, lower)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    # when the bin is far narrower than the scale the two CDFs round to one value: density x bin width
    log_pdf_mid = -0.5 * (inv_s * (x - mean)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi) + math.log(2 * HALF_BIN)
    resolved = log_b < log_a
    gap = torch.where(resolved, log_b - log_a, torch.full_like(log_a, -1.0))  # placeholder where unresolved
    log_mid = torch.where(resolved & torch.isfinite(log_a), log_a + torch.log(-torch.expm1(gap)), log_pdf_mid)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mid))
