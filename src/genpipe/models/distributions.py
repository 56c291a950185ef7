"""Likelihoods of 8-bit pixels, shared by the families that model them.

The discretised logistic (Salimans et al. 2017, "PixelCNN++", eq. 2) assigns each of the
256 pixel levels the mass of its bin under a logistic, with the edge bins taking the tails,
so the probabilities over the 256 levels sum to exactly one and ``-log p`` is a true code
length (bits/dim without any dequantisation correction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HALF_BIN = 1.0 / 255.0  # pixels live on 256 levels in [-1, 1], 2/255 apart


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
