"""Invertible layers of a Glow / RealNVP flow, each with its log-determinant.

Dinh et al. 2017, "Density estimation using Real NVP", https://arxiv.org/abs/1605.08803
Kingma & Dhariwal 2018, "Glow", https://arxiv.org/abs/1807.03039

Every layer maps x -> y with ``forward(x) -> (y, logdet)``, ``logdet`` (B,) being
log|det dy/dx| per sample, and has an exact ``inverse(y) -> x``. The flow's density then
follows from the change of variables (RealNVP eq. 3):

    log p_X(x) = log p_Z(f(x)) + sum_layers log|det J_layer|

Every log-determinant is closed-form (Glow table 1): actnorm ``H*W*sum(log|s|)``, the 1x1
convolution ``H*W*log|det W|``, the affine coupling ``sum(log s)``, the logit transform a
sum over pixels of log|dy/dx|.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from genpipe.models.distributions import HALF_BIN  # 256 levels in [-1, 1]: each bin is +-1/255 wide

LOG_SCALE_BOUND = 3.0  # coupling log-scales are soft-clamped to (-3, 3): scales in (0.05, 20)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 patch becomes 4 channels (RealNVP sec. 3.6)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """(B, 4C, H, W) -> (B, C, 2H, 2W), the inverse of :func:`squeeze`."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over data-parallel ranks (identity outside torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t


class ActNorm(nn.Module):
    """y = (x + b) * exp(logs), per channel; Glow sec. 3.1.

    Data-dependent initialisation: the first forward in training mode sets b and logs so
    that this batch's output has zero mean and unit variance per channel (statistics are
    averaged over data-parallel ranks, so every rank starts identical). The ``initialized``
    buffer records it, so checkpoints, EMA copies and reloaded models never re-initialise;
    it is a float (0./1.) because the EMA lerps every buffer.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0.0))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set b = -mean, logs = -log std of ``x`` (B, C, H, W) per channel."""
        stats = torch.stack([x.mean((0, 2, 3)), x.pow(2).mean((0, 2, 3))])  # (2, C)
        mean, sq = _all_reduce_mean(stats.float())
        std = (sq - mean.pow(2)).clamp_min(0.0).sqrt()
        self.bias.copy_(-mean.view_as(self.bias))
        self.logs.copy_(-torch.log(std.clamp_min(1e-3)).view_as(self.logs))
        self.initialized.fill_(1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        logdet = x.shape[2] * x.shape[3] * self.logs.sum()
        return (x + self.bias) * torch.exp(self.logs), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.logs) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution with an LU-decomposed weight, Glow sec. 3.2 (eq. 10).

    W = P L (U + diag(sign(s) * exp(log|s|))), P a fixed permutation, L unit lower
    triangular, U strictly upper triangular, so log|det W| = sum(log|s|) costs O(C).
    Initialised from a random rotation (log|det W| = 0).
    """

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # random orthogonal
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        """The (C, C) matrix W."""
        eye = torch.eye(self.log_s.numel(), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        logdet = x.shape[2] * x.shape[3] * self.log_s.sum()
        return torch.einsum("ij,bjhw->bihw", w, x), logdet.expand(x.shape[0])  # a 1x1 conv, as a matmul

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = torch.linalg.inv(self.weight().double()).to(y.dtype)  # float64: exact to ~1e-7
        return torch.einsum("ij,bjhw->bihw", w_inv, y)


class ZeroConv2d(nn.Module):
    """3x3 conv starting at zero output, scaled by exp(3 * logs) (Glow's ``Conv2dZeros``).

    Zero initialisation makes every coupling (and every learned prior) the identity
    (the standard normal) at the start, which Glow found helps train deep flows.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, c_out, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(3.0 * self.logs)


class CouplingNet(nn.Module):
    """The small conv net NN() of a coupling: conv3x3, ReLU, conv1x1, ReLU, zero conv3x3.

    With ``num_classes`` > 0, a learned per-class vector is added after the first conv, so
    the coupling is conditioned on y (still invertible in x: y is not transformed).
    """

    def __init__(self, c_in: int, hidden: int, c_out: int, num_classes: int):
        super().__init__()
        self.first = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.rest = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), ZeroConv2d(hidden, c_out))
        self.class_bias = nn.Embedding(num_classes, hidden) if num_classes else None
        if self.class_bias is not None:
            nn.init.zeros_(self.class_bias.weight)  # starts as the unconditional net

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.first(x)  # (B, hidden, H, W)
        if self.class_bias is not None and labels is not None:
            h = h + self.class_bias(labels)[:, :, None, None]
        return self.rest(h)


class Coupling(nn.Module):
    """Affine (or additive) coupling, RealNVP eq. 7 / Glow sec. 3.3.

    x = [x_a, x_b]; y_a = x_a; y_b = (x_b + t(x_a, y)) * exp(log s(x_a, y)), with
    log s = 3 tanh(raw / 3) soft-clamped so that no scale explodes in either direction;
    log|det| = sum log s. ``kind="additive"`` (NICE) fixes s = 1, a volume-preserving step.
    """

    def __init__(self, channels: int, hidden: int, kind: Literal["affine", "additive"], num_classes: int = 0):
        super().__init__()
        self.kind = kind
        self.c_a = channels // 2
        c_b = channels - self.c_a
        self.net = CouplingNet(self.c_a, hidden, 2 * c_b if kind == "affine" else c_b, num_classes)

    def _shift_log_scale(self, x_a: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a, labels)
        if self.kind == "additive":
            return h, None
        shift, raw = h[:, 0::2], h[:, 1::2]  # interleaved, as in Glow's "cross" split
        return shift, LOG_SCALE_BOUND * torch.tanh(raw / LOG_SCALE_BOUND)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.c_a], x[:, self.c_a :]
        shift, log_s = self._shift_log_scale(x_a, labels)
        if log_s is None:
            return torch.cat([x_a, x_b + shift], 1), x.new_zeros(x.shape[0])
        y_b = (x_b + shift) * torch.exp(log_s)
        return torch.cat([x_a, y_b], 1), log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        y_a, y_b = y[:, : self.c_a], y[:, self.c_a :]
        shift, log_s = self._shift_log_scale(y_a, labels)
        x_b = y_b - shift if log_s is None else y_b * torch.exp(-log_s) - shift
        return torch.cat([y_a, x_b], 1)


class FlowStep(nn.Module):
    """One step of flow, Glow fig. 2a: actnorm -> invertible 1x1 conv -> coupling (given y)."""

    def __init__(self, channels: int, hidden: int, coupling: Literal["affine", "additive"], num_classes: int = 0):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.coupling = Coupling(channels, hidden, coupling, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld_norm = self.actnorm(x)
        x, ld_conv = self.invconv(x)
        x, ld_coupling = self.coupling(x, labels)
        return x, ld_norm + ld_conv + ld_coupling

    def inverse(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        y = self.coupling.inverse(y, labels)
        return self.actnorm.inverse(self.invconv.inverse(y))


class LogitTransform(nn.Module):
    """Dequantised pixels -> logit space, RealNVP sec. 4.1 (no parameters).

    x in [-1 - 1/255, 1 + 1/255] is mapped to p in [0, 1], squeezed to
    q = alpha + (1 - 2 alpha) p so the logit stays finite, and y = log q - log(1 - q).
    log|dy/dx| = log((1 - 2 alpha) / (2 + 2/255)) - log q - log(1 - q), per pixel. It turns
    the hard edges of the pixel range (digits: a third of all pixels are -1) into tails a
    Gaussian can model.
    """

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.width = 2.0 + 2.0 * HALF_BIN  # length of the dequantised range

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = ((x + 1.0 + HALF_BIN) / self.width).clamp(0.0, 1.0)
        q = self.alpha + (1.0 - 2.0 * self.alpha) * p
        y = torch.log(q) - torch.log1p(-q)
        log_jac = math.log((1.0 - 2.0 * self.alpha) / self.width) - torch.log(q) - torch.log1p(-q)
        return y, log_jac.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        p = (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)
        return p * self.width - 1.0 - HALF_BIN


class IdentityTransform(nn.Module):
    """Pixels enter the flow as they are (Glow's choice); log|det| = 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y
