"""Convolutional blocks: a residual block and strided down/up sampling, GroupNorm + SiLU."""

from __future__ import annotations

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels``."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv3x3) x 2 plus a 1x1 skip if widths differ."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            group_norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H, W)
        return self.skip(x) + self.body(x)


def downsample(c_in: int, c_out: int) -> nn.Module:
    """Halve H and W: strided 4x4 conv, then a residual block."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), ResBlock(c_out, c_out))


def upsample(c_in: int, c_out: int) -> nn.Module:
    """Double H and W: nearest upsampling + conv3x3 (no checkerboard), then a residual block."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), ResBlock(c_out, c_out)
    )
