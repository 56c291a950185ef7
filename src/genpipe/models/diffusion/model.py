"""Denoising diffusion probabilistic models (DDPM), sampled with DDPM, DDIM or DPM-Solver++.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239

The forward process adds Gaussian noise in T steps, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1},
beta_t I) (eq. 2), so that in closed form (eq. 4), with alpha_bar_t = prod_{s<=t} (1 - beta_s),

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

A U-Net learns to undo it. Training is the simplified objective (eq. 14)

    L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2,

or, with ``prediction="v"`` (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512, sec. 4),
the same regression onto v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, optionally weighted
per timestep by min-SNR (Hang et al. 2023, https://arxiv.org/abs/2303.09556). Noise schedules: the
linear betas of Ho et al. and the cosine alpha-bar of Nichol & Dhariwal 2021
(https://arxiv.org/abs/2102.09672, eq. 17). Conditional models drop the label with
probability ``p_uncond`` so that one network also learns p(x), which classifier-free
guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598, eq. 6) combines at sampling.

The process (:class:`GaussianDiffusion`) is a plain object that takes the network as an
argument (improved-diffusion style); the samplers live in :mod:`genpipe.samplers` and take the
network's prediction as the pair (x0_hat, eps_hat) (:meth:`GaussianDiffusion.denoise`): from v both
by a rotation, well conditioned at every t; from eps, x0 by eq. 4, evaluated in float64.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LogLikelihood, OptimizerGroup, check_labels, cpu_randn
from genpipe.models.diffusion.config import DiffusionSamplingConfig, DiffusionConfig
from genpipe.models.distributions import discretized_gaussian_log_prob
from genpipe.models.nets.unet import UNet
from genpipe.samplers import DenoiseFn, Denoised, run_sampler


# ----------------------------------------------------------------------------- schedules


def linear_alphas_cumprod(timesteps: int) -> torch.Tensor:
    """alpha-bar (T,) float64 of Ho et al.'s betas, linear from 1e-4 to 0.02 (sec. 4),
    scaled by 1000 / T so that any T covers the same noise levels."""
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha-bar (T,) float64 of the cosine schedule (Nichol & Dhariwal 2021, eq. 17):
    abar(t) = f(t) / f(0), f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2, betas clipped at 0.999."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1.0 - f((i + 1) / timesteps) / f(i / timesteps), max_beta) for i in range(timesteps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), dim=0)


SCHEDULES = {"linear": linear_alphas_cumprod, "cosine": cosine_alphas_cumprod}


# ----------------------------------------------------------------------------- parameterisations


def v_from_eps(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0   (Salimans & Ho 2022, sec. 4)."""
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - abar) x_t + sqrt(abar) v (rotating (x0, eps) by the angle phi_t)."""
    return (1 - abar).sqrt() * x_t + abar.sqrt() * v


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v (the same rotation; well conditioned at every t)."""
    return abar.sqrt() * x_t - (1 - abar).sqrt() * v


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)   (eq. 4 solved for x0).

    Ill conditioned where abar -> 0: it cancels x_t against sqrt(1 - abar) eps and divides by
    sqrt(abar), so rounding in x_t or eps grows by 1 / sqrt(abar) (2e4 at t = T-1 of the cosine
    schedule); :meth:`GaussianDiffusion.denoise` evaluates it in float64."""
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def min_snr_weight(abar: torch.Tensor, prediction: Literal["epsilon", "v"], gamma: float = 5.0) -> torch.Tensor:
    """Per-timestep weight of the MSE so that the loss is min(SNR, gamma) ||x0 - x0_hat||^2.

    Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    https://arxiv.org/abs/2303.09556 (eq. 7): with SNR = abar / (1 - abar),
    ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2.
    """
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / (snr if prediction == "epsilon" else snr + 1)


def guided_prediction(cond: Denoised, uncond: Denoised, scale: float) -> Denoised:
    """uncond + scale (cond - uncond) of eps (Ho & Salimans 2022 eq. 6 with scale = 1 + w) and of x0:
    the weights 1 - scale and scale sum to one, so the guided pair keeps x_t = sqrt(abar) x0 +
    sqrt(1 - abar) eps, and its x0 is the x0 of the guided eps (and of the guided v)."""
    return Denoised(*(u + scale * (c - u) for c, u in zip(cond, uncond)))


def static_clip(pred: Denoised, x_t: torch.Tensor, abar: torch.Tensor) -> Denoised:
    """The prediction with x0 clamped to [-1, 1] (improved-diffusion's ``clip_denoised``) and, where
    the clamp moved it, the eps that goes with it, (x_t - sqrt(abar) x0) / sqrt(1 - abar) (float64).

    Args: pred (B, C, H, W) each; x_t (B, C, H, W); abar broadcastable to x_t, float64.
    """
    x0 = pred.x0.clamp(-1.0, 1.0)
    a = abar.double()
    eps = ((x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).to(pred.eps.dtype)
    return Denoised(x0, torch.where(x0 == pred.x0, pred.eps, eps))


class GaussianDiffusion:
    """The forward process q and the training objective; the network is passed in.

    Args:
        alphas_cumprod: (T,) float64 alpha-bar, decreasing from ~1 to ~0.
        prediction: what the network outputs, "epsilon" or "v".
        weighting: "uniform" (L_simple) or "min_snr" (:func:`min_snr_weight`).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: Literal["epsilon", "v"] = "epsilon",
                 weighting: Literal["uniform", "min_snr"] = "uniform"):
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.prediction, self.weighting = prediction, weighting
        self.num_timesteps = len(alphas_cumprod)

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar at timesteps t (B,), shaped (B, 1, ..., 1) to broadcast against ``like``."""
        a = self.alphas_cumprod.to(t.device)[t].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def betas(self) -> torch.Tensor:
        """beta_t = 1 - abar_t / abar_{t-1} (T,) float64, with abar_{-1} = 1."""
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / prev

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) (eq. 4): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step q(x_t | x_{t-1}) (eq. 2): sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise."""
        b = self.betas().to(t.device)[t].to(x_prev.dtype).view(-1, *([1] * (x_prev.dim() - 1)))
        return (1 - b).sqrt() * x_prev + b.sqrt() * noise

    def denoise(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Denoised:
        """The network output (B, C, H, W) at x_t (B, C, H, W), timesteps t (B,), as the pair
        (x0_hat, eps_hat) in x_t's dtype, each formed directly from what the network predicts:
        v gives both by the rotation (Salimans & Ho 2022, sec. 4), eps gives x0 by eq. 4, which
        is ill conditioned as abar -> 0 and so is evaluated in float64 (:func:`x0_from_eps`)."""
        x, o = x_t.double(), out.double()
        a = self.abar(t, x)  # (B, 1, 1, 1) float64
        if self.prediction == "epsilon":
            x0, eps = x0_from_eps(x, o, a), o
        else:
            x0, eps = x0_from_v(x, o, a), eps_from_v(x, o, a)
        return Denoised(x0.to(x_t.dtype), eps.to(x_t.dtype))

    def training_losses(self, net: nn.Module, x0: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per image (B,): "mse" of L_simple (eq. 14) or of the v regression, and the weighted "loss".

        Args: x0 (B, C, H, W) in [-1, 1]; t (B,) long; labels (B,) or None (unconditional).
        """
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        ab = self.abar(t, x0)
        target = noise if self.prediction == "epsilon" else v_from_eps(x0, noise, ab)
        mse = (net(x_t, t, labels).float() - target).pow(2).flatten(1).mean(1)  # (B,)
        weight = 1.0 if self.weighting == "uniform" else min_snr_weight(ab.flatten(), self.prediction)
        return {"mse": mse, "loss": weight * mse}

    # -- the variational bound (Ho et al. eq. 5) ------------------------------------
    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7) for 0-based t >= 1, float64."""
        abar = self.alphas_cumprod.to(t.device)
        shape = (-1, *([1] * (x0.dim() - 1)))
        a_t, a_prev = abar[t].view(shape), abar[t - 1].view(shape)
        beta = 1.0 - a_t / a_prev
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0.double() + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t.double()
        return mean, beta * (1 - a_prev) / (1 - a_t)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per image (B,), nats."""
        a = self.alphas_cumprod[-1].item()
        mean_sq = a * x0.double().pow(2)
        return 0.5 * (mean_sq + (1 - a) - 1 - math.log(1 - a)).flatten(1).sum(1)

    def vlb_term(self, denoise_fn: DenoiseFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One term of the bound per image (B,), nats, at 0-based timesteps t (B,):

        t = 0:  L_0 = -log p(x_0 | x_1), a discretised Gaussian around the predicted x_0 (eq. 13)
                with variance beta_1;
        t >= 1: L_{t} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), p with the posterior's
                variance (the beta-tilde choice of sec. 3.2) and the mean of eq. 11.
        """
        x_t = self.q_sample(x0, t, noise)
        x0_hat = denoise_fn(x_t, t).x0.clamp(-1.0, 1.0).double()
        out = torch.empty(x0.shape[0], dtype=torch.float64, device=x0.device)
        first = t == 0
        if first.any():
            log_scale = 0.5 * torch.log(self.betas()[0]).to(x0.device)
            out[first] = -discretized_gaussian_log_prob(x0[first], x0_hat[first], log_scale).flatten(1).sum(1)
        later = ~first
        if later.any():
            tl = t[later]
            mean_q, var = self.posterior(x0[later], x_t[later], tl)
            mean_p, _ = self.posterior(x0_hat[later], x_t[later], tl)
            out[later] = ((mean_q - mean_p).pow(2) / (2 * var)).flatten(1).sum(1)
        return out

    def nll_bound(self, denoise_fn: DenoiseFn, x0: torch.Tensor, timesteps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """-ELBO per image (B,), nats: L_T + L_0 exactly, and the sum of L_1..L_{T-1} estimated
        without bias from one uniform draw in each of ``timesteps`` blocks of consecutive t
        (:func:`vlb_strata`), weighted by the block's size; every term when ``timesteps`` >= T - 1.
        The terms fall roughly as 1/t, so the blocks grow geometrically: the small t that carry
        most of the bound are summed one by one. Noise comes from the CPU ``generator``."""
        b, device = x0.shape[0], x0.device
        zero = torch.zeros(b, dtype=torch.long, device=device)
        total = self.prior_kl(x0) + self.vlb_term(denoise_fn, x0, zero, cpu_randn(x0.shape, generator, device))
        edges = vlb_strata(self.num_timesteps, timesteps)
        sizes = (edges[1:] - edges[:-1]).tolist()
        u = torch.rand(len(sizes), generator=generator, dtype=torch.float64)
        for start, size, uk in zip(edges[:-1].tolist(), sizes, u.tolist()):
            t = torch.full((b,), start + min(int(uk * size), size - 1), dtype=torch.long, device=device)
            total = total + size * self.vlb_term(denoise_fn, x0, t, cpu_randn(x0.shape, generator, device))
        return total


def vlb_strata(num_timesteps: int, blocks: int) -> torch.Tensor:
    """Edges (K+1,) long of K = min(blocks, T-1) blocks of consecutive timesteps tiling 1..T-1,
    sizes growing geometrically (blocks of one at the start, while the geometric step is < 1)."""
    end = num_timesteps  # exclusive
    k = min(blocks, end - 1)
    edges = [1]
    for i in range(k):
        left = k - i
        ratio = (end / edges[-1]) ** (1.0 / left)
        edges.append(end if left == 1 else min(max(edges[-1] + 1, round(edges[-1] * ratio)), end - left + 1))
    return torch.tensor(edges, dtype=torch.long)


# ----------------------------------------------------------------------------- the family


class Diffusion(nn.Module):
    """A U-Net trained as a DDPM denoiser, with the family interface."""

    def __init__(self, cfg: DiffusionConfig, spec: ImageSpec):
        super().__init__()
        c, h, w = spec.shape
        levels = len(cfg.channel_mults)
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise InputError(f"diffusion.channel_mults: {levels - 1} downsamplings do not divide {h}x{w} images")
        if any(not 0 <= i < levels for i in cfg.attention_levels):
            raise InputError(
                f"diffusion.attention_levels: {list(cfg.attention_levels)} must index channel_mults (0..{levels - 1})"
            )
        self.cfg, self.spec = cfg, spec
        self.net = UNet(c, cfg.channels, cfg.channel_mults, cfg.num_res_blocks, cfg.attention_levels,
                        cfg.dropout, spec.num_classes if cfg.conditional else 0)
        self.process = GaussianDiffusion(SCHEDULES[cfg.schedule](cfg.timesteps), cfg.prediction, cfg.loss_weighting)

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        c = self.cfg
        return {"model": OptimizerGroup(list(self.parameters()), c.lr, c.betas, c.weight_decay)}

    def training_losses(self, x: torch.Tensor, labels: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        t = torch.randint(0, self.process.num_timesteps, (b,), device=x.device)
        y = None
        if self.cfg.conditional:  # drop labels to the null class so the net also learns p(x)
            drop = torch.rand(b, device=x.device) < self.cfg.p_uncond
            y = torch.where(drop, torch.full_like(labels, self.spec.num_classes), labels)
        terms = self.process.training_losses(self.net, x, t, y)  # each (B,)
        return {"loss": terms["loss"].mean(), "mse": terms["mse"].mean().detach()}

    def denoiser(self, labels: torch.Tensor | None, options: DiffusionSamplingConfig) -> DenoiseFn:
        """The network as the samplers' (x0_hat, eps_hat) predictor, guided (CFG) and clipped as
        ``options`` say."""
        null = None if labels is None else torch.full_like(labels, self.spec.num_classes)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> Denoised:
            if labels is None or options.guidance_scale == 1.0:
                pred = self.process.denoise(self.net(x, t, labels), x, t)
            else:  # one batched pass: conditional and null-class halves
                x2, t2 = torch.cat([x, x]), torch.cat([t, t])
                both = self.process.denoise(self.net(x2, t2, torch.cat([labels, null])), x2, t2)
                cond, uncond = zip(*(p.chunk(2) for p in both))
                pred = guided_prediction(Denoised(*cond), Denoised(*uncond), options.guidance_scale)
            if options.clip_denoised == "static":
                pred = static_clip(pred, x, self.process.abar(t, x.double()))
            return pred

        return denoise

    def _check(self, n: int, labels: torch.Tensor | None, o: DiffusionSamplingConfig) -> torch.Tensor | None:
        """Validated labels (n,) on the model's device, or None for an unconditional model."""
        if not isinstance(o, DiffusionSamplingConfig):
            raise InputError(f"options: expected DiffusionSamplingConfig, got {type(o).__name__}")
        if o.sampler_steps(self.process.num_timesteps) > self.process.num_timesteps:
            raise InputError(
                f"diffusion.sampling.steps: {o.steps} exceeds diffusion.timesteps={self.process.num_timesteps}"
            )
        if o.guidance_scale != 1.0 and not self.cfg.conditional:
            raise InputError("diffusion.sampling.guidance_scale: guidance needs a conditional model; use 1.0")
        if o.guidance_scale != 1.0 and self.cfg.p_uncond == 0.0:
            raise InputError("diffusion.sampling.guidance_scale: the model never saw the null class (p_uncond=0)")
        return check_labels(labels, n, num_classes=self.spec.num_classes, conditional=self.cfg.conditional,
                            family="diffusion", device=next(self.parameters()).device)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               options: DiffusionSamplingConfig | None = None) -> torch.Tensor:
        o = self.cfg.sampling if options is None else options
        labels = self._check(n, labels, o)
        x_T = cpu_randn((n, *self.spec.shape), generator, next(self.parameters()).device)
        x0 = run_sampler(o.sampler, self.denoiser(labels, o), x_T, self.process.alphas_cumprod,
                         steps=o.steps, spacing=o.spacing, eta=o.eta, generator=generator)
        return x0.clamp(-1.0, 1.0)

    def nfe(self, options: DiffusionSamplingConfig | None = None) -> int:
        """Network evaluations per image: one per sampler step (all T for ddpm), two with guidance."""
        o = self.cfg.sampling if options is None else options
        return o.sampler_steps(self.process.num_timesteps) * (2 if self.cfg.conditional and o.guidance_scale != 1.0 else 1)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood:
        """The variational lower bound on log p(x) of the 8-bit image (Ho et al. eq. 5), in nats.

        A conditional model given labels bounds log p(x | y); without labels it uses the null
        class, the unconditional model it learnt with label dropout (p_uncond > 0).
        """
        y = None
        if self.cfg.conditional:
            if labels is None:
                if self.cfg.p_uncond == 0.0:
                    raise InputError("labels: this conditional diffusion model never saw the null class "
                                     "(p_uncond=0); pass labels for log p(x | y)")
                labels = torch.full((x.shape[0],), self.spec.num_classes, dtype=torch.long)
            y = labels.long().to(x.device)
        denoise = lambda x_t, t: self.process.denoise(self.net(x_t, t, y), x_t, t)  # noqa: E731
        n = self.cfg.vlb_timesteps
        nats = -self.process.nll_bound(denoise, x, n, generator)
        exact_sum = n >= self.process.num_timesteps - 1
        return LogLikelihood(nats=nats, kind="lower_bound",
                             estimator="vlb" if exact_sum else f"vlb-stratified-{n}")


def build_diffusion(cfg: DiffusionConfig, spec: ImageSpec) -> Diffusion:
    return Diffusion(cfg, spec)
