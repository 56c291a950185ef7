"""Glow / RealNVP: a multi-scale normalizing flow with an exact continuous density.

Dinh et al. 2017, "Density estimation using Real NVP", https://arxiv.org/abs/1605.08803
Kingma & Dhariwal 2018, "Glow", https://arxiv.org/abs/1807.03039

An invertible f maps an image to latents z = f(x), and the change of variables gives

    log p(x) = log p_Z(f(x)) + log|det df/dx|                            (RealNVP eq. 3)

Architecture (Glow fig. 2b): an optional logit transform of the pixels, then one level per
entry n of ``steps_per_level``: [squeeze 2x2 -> n x (actnorm, 1x1 conv, coupling) -> split
off half the channels], the last level without the split. Each split-off half z_i gets a learned
Gaussian prior conditioned on the half that goes on, N(z_i; mu(h_i), sigma(h_i)) (Glow's
``split2d``); the top latent a learned Gaussian. With ``conditional`` each of these priors
also has per-class means and log-stds (Glow's class-conditional prior), and every coupling
net a per-class bias, so p(x | y) is a class-dependent flow onto a class-dependent base.

Latents: the flow's "latent" is the whitened noise eps of every level, flattened into one
(B, D) vector, D = C*H*W. Decoding sets z_i = mu_i + T * sigma_i * eps_i level by level
from the top and inverts the steps; temperature T = 0 decodes the "mean image path" (eps
ignored), T < 1 trades diversity for cleaner images (Glow sec. 5.5).

Likelihood and dequantisation: pixels are 256 levels in [-1, 1], bins 2/255 wide. Training
adds u ~ U(-1/255, 1/255) to every pixel (uniform dequantisation), and

    log P(x) = log E_u[p(x + u)] + D log(2/255)
             >= E_u[log p(x + u)] + D log(2/255)           (Jensen; Theis et al. 2016)

so the reported number is a lower bound on the log-probability of the 8-bit image, in
expectation over the noise (``kind="lower_bound"``). The evaluation estimate averages S
draws inside the log, log (1/S) sum_s p(x + u_s) (importance weighting with the uniform
proposal, as IWAE does for the ELBO): still a lower bound in expectation, tighter as S
grows; S = 1 is the training objective. The noise comes from the global torch RNG on the
CPU, which the evaluation stage seeds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LogLikelihood, OptimizerGroup, check_labels, cpu_randn
from genpipe.models.distributions import gaussian_log_prob
from genpipe.models.flow.config import FlowConfig
from genpipe.models.flow.layers import (
    HALF_BIN, FlowStep, IdentityTransform, LogitTransform, ZeroConv2d, squeeze, unsqueeze,
)

LOG_BIN = math.log(2.0 * HALF_BIN)  # log width of one pixel bin, log(2/255)
PRIOR_LOGS_RANGE = (-7.0, 4.0)  # prior log-stds are clamped here: no zero or huge variance


def class_table(num_classes: int, width: int) -> nn.Embedding:
    """Per-class prior parameters: all zero (N(0, I)) for one class; for several, small random
    values, so that the label changes the image from the first step on."""
    table = nn.Embedding(num_classes, width)
    if num_classes > 1:
        nn.init.normal_(table.weight, std=0.01)
    else:
        nn.init.zeros_(table.weight)
    return table


class TopPrior(nn.Module):
    """Learned N(mean, exp(logs)) of the top latent (C, H, W): one per class, or one in all."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.shape = shape
        self.table = class_table(num_classes, 2 * math.prod(shape))

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """labels (B,) -> mean, logs, each (B, C, H, W)."""
        mean, logs = self.table(labels).view(-1, 2, *self.shape).unbind(1)
        return mean, logs.clamp(*PRIOR_LOGS_RANGE)


class SplitPrior(nn.Module):
    """N(z_i; mu(h_i, y), exp(logs(h_i, y))) of a split-off half (Glow's ``split2d``).

    A zero-initialised conv of the kept half h_i, plus a per-class, per-channel bias when
    the flow is conditional (a table of one row when it is not).
    """

    def __init__(self, c_kept: int, c_out: int, num_classes: int):
        super().__init__()
        self.conv = ZeroConv2d(c_kept, 2 * c_out)
        self.table = class_table(num_classes, 2 * c_out)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, c_kept, H, W), labels (B,) -> mean, logs, each (B, c_out, H, W)."""
        params = self.conv(h) + self.table(labels)[:, :, None, None]
        mean, logs = params[:, 0::2], params[:, 1::2]
        return mean, logs.clamp(*PRIOR_LOGS_RANGE)


def levels_for(steps_per_level: tuple[int, ...], h: int, w: int) -> tuple[int, ...]:
    """The levels the images can take: each squeeze halves H and W, so at most as many as both
    divide by 2 (28 px: 2; 32 px: 5); configured levels beyond that fold their steps into the
    last one kept (the same total depth). InputError when not even one squeeze fits."""
    fits = 0
    while h % 2 ** (fits + 1) == 0 and w % 2 ** (fits + 1) == 0:
        fits += 1
    if fits == 0:
        side = 2 * round(max(h, w) / 2)
        raise InputError(f"flow: {h}x{w} images cannot be squeezed (an odd side); data.resolution: {side} would work")
    if len(steps_per_level) <= fits:
        return tuple(steps_per_level)
    return (*steps_per_level[: fits - 1], sum(steps_per_level[fits - 1 :]))


class Glow(nn.Module):
    """Multi-scale flow x <-> (eps_1, ..., eps_L); see the module docstring."""

    def __init__(self, cfg: FlowConfig, spec: ImageSpec):
        super().__init__()
        c, h, w = spec.shape
        self.steps_per_level = levels_for(cfg.steps_per_level, h, w)
        n_levels = len(self.steps_per_level)
        self.cfg, self.spec = cfg, spec
        self.num_classes = spec.num_classes if cfg.conditional else 1
        self.transform = LogitTransform(cfg.logit_alpha) if cfg.input_transform == "logit" else IdentityTransform()
        self.levels, self.split_priors = nn.ModuleList(), nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []  # eps_i per level, the top last
        for i, depth in enumerate(self.steps_per_level):
            c, h, w = 4 * c, h // 2, w // 2
            coupling_classes = spec.num_classes if cfg.conditional else 0
            self.levels.append(nn.ModuleList(
                FlowStep(c, cfg.hidden, cfg.coupling, coupling_classes) for _ in range(depth)
            ))
            if i < n_levels - 1:
                c_out = c // 2
                self.split_priors.append(SplitPrior(c - c_out, c_out, self.num_classes))
                self.latent_shapes.append((c_out, h, w))
                c -= c_out
        self.latent_shapes.append((c, h, w))
        self.top_prior = TopPrior((c, h, w), self.num_classes)
        self.latent_dim = sum(math.prod(s) for s in self.latent_shapes)  # = C*H*W

    # -- the two directions -------------------------------------------------------
    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """x (B, C, H, W) dequantised, labels (B,) -> split-off z_i and the top z, the kept
        halves h_i their priors condition on, and log|det df/dx| (B,)."""
        h, logdet = self.transform(x)
        zs, kept = [], []
        for i, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h, ld = step(h, labels)
                logdet = logdet + ld
            if i < len(self.levels) - 1:
                c_keep = h.shape[1] - self.latent_shapes[i][0]
                h, z = h[:, :c_keep], h[:, c_keep:]
                zs.append(z)
                kept.append(h)
        zs.append(h)
        return zs, kept, logdet

    def prior_params(self, kept: list[torch.Tensor], labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, logs) of every latent, in the order of ``encode``'s zs."""
        return [*(p(h, labels) for p, h in zip(self.split_priors, kept)), self.top_prior(labels)]

    def decode(self, eps: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
        """Whitened latents eps (B, D) -> x (B, C, H, W), with z_i = mu_i + T sigma_i eps_i."""
        pieces = self._unflatten(eps)
        mean, logs = self.top_prior(labels)
        h = mean + temperature * torch.exp(logs) * pieces[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                mean, logs = self.split_priors[i](h, labels)
                h = torch.cat([h, mean + temperature * torch.exp(logs) * pieces[i]], 1)
            for step in reversed(self.levels[i]):
                h = step.inverse(h, labels)
            h = unsqueeze(h)
        return self.transform.inverse(h)

    def encode_latents(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> whitened eps (B, D), the inverse of ``decode`` at T = 1."""
        zs, kept, _ = self.encode(x, labels)
        eps = [(z - m) * torch.exp(-s) for z, (m, s) in zip(zs, self.prior_params(kept, labels))]
        return torch.cat([e.flatten(1) for e in eps], 1)

    def log_density(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """log p(x) (B,) of continuous x, eq. 3; with labels=None on a conditional flow the
        marginal log sum_y p(x | y) p(y) under uniform p(y) (one pass per class)."""
        if self.num_classes == 1 or labels is not None:
            labels = labels if self.num_classes > 1 else x.new_zeros(x.shape[0], dtype=torch.long)
            return self._conditional_log_density(x, labels)
        per_class = [
            self._conditional_log_density(x, torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))
            for k in range(self.num_classes)
        ]
        return torch.logsumexp(torch.stack(per_class), 0) - math.log(self.num_classes)

    def _conditional_log_density(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(x | y) = sum_i log N(z_i; mu_i, sigma_i) + log|det df/dx|, (B,)."""
        zs, kept, logdet = self.encode(x, labels)
        params = self.prior_params(kept, labels)
        return logdet + sum(gaussian_log_prob(z, m, s).flatten(1).sum(1) for z, (m, s) in zip(zs, params))

    def _unflatten(self, eps: torch.Tensor) -> list[torch.Tensor]:
        sizes = [math.prod(s) for s in self.latent_shapes]
        if eps.dim() != 2 or eps.shape[1] != self.latent_dim:
            raise InputError(f"latents: expected shape (n, {self.latent_dim}), got {tuple(eps.shape)}")
        return [p.view(-1, *s) for p, s in zip(eps.split(sizes, 1), self.latent_shapes)]

    def _labels(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Prior indices for generation: the labels, a balanced mix, or all zeros."""
        ys = check_labels(labels, n, num_classes=self.spec.num_classes, conditional=self.cfg.conditional,
                          family="flow", device=device)
        return ys if ys is not None else torch.zeros(n, dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        return self.top_prior.table.weight.device

    # -- the family interface ---------------------------------------------------------
    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        c = self.cfg
        return {"model": OptimizerGroup(list(self.parameters()), c.lr, c.betas, c.weight_decay)}

    def training_losses(self, x: torch.Tensor, labels: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        """-(log p(x + u) + D log(2/255)) / D with u uniform in a bin: the dequantised NLL in nats/dim."""
        with torch.autocast(x.device.type, enabled=False):  # log-dets and inverses need float32
            x = x.float()
            x_deq = x + (torch.rand_like(x) * 2.0 - 1.0) * HALF_BIN  # uniform dequantisation
            log_px = self.log_density(x_deq, labels if self.num_classes > 1 else None)  # (B,)
            dims = x[0].numel()
            nll = -(log_px.mean() + dims * LOG_BIN) / dims  # nats per dimension
        return {"loss": nll, "bpd": (nll / math.log(2)).detach()}

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None, options=None
    ) -> torch.Tensor:
        """n images from z = mu + T sigma eps, eps ~ N(0, I) drawn on the CPU from ``generator``."""
        labels = self._labels(n, labels, self.device)  # validates before any noise is drawn
        return self._decode_images(self.sample_latents(n, generator), labels, options)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """eps ~ N(0, I), (n, D): the whitened latents of every level, flattened."""
        return cpu_randn((n, self.latent_dim), generator, self.device)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, labels: torch.Tensor | None = None, options=None) -> torch.Tensor:
        """Images (n, C, H, W) in [-1, 1] for whitened latents z (n, D) at ``options.temperature``."""
        return self._decode_images(z, self._labels(z.shape[0], labels, self.device), options)

    def _decode_images(self, z: torch.Tensor, labels: torch.Tensor, options) -> torch.Tensor:
        temperature = (options or self.cfg.sampling).temperature
        with torch.autocast(self.device.type, enabled=False):
            return self.decode(z.to(self.device, torch.float32), labels, temperature).clamp(-1.0, 1.0)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood:
        """Lower bound on log P(x) of 8-bit x (B, C, H, W): log mean_s p(x + u_s) + D log(2/255).

        With labels on a conditional flow: log P(x | y); without, the class-marginal log P(x).
        """
        s_count, dims = self.cfg.eval_dequant_samples, x[0].numel()
        labels = labels if self.num_classes > 1 else None
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            logs = []
            for _ in range(s_count):
                u = (torch.rand(x.shape, generator=generator) * 2.0 - 1.0) * HALF_BIN  # CPU noise: device-independent
                logs.append(self.log_density(x + u.to(x.device), labels))
            log_px = torch.logsumexp(torch.stack(logs), 0) - math.log(s_count)  # (B,)
        return LogLikelihood(
            nats=log_px + dims * LOG_BIN, kind="lower_bound", estimator=f"dequantised-change-of-variables-{s_count}"
        )


def build_flow(cfg: FlowConfig, spec: ImageSpec) -> Glow:
    return Glow(cfg, spec)
