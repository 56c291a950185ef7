"""Generative adversarial network: DCGAN networks, three selectable objectives.

Goodfellow et al. 2014, "Generative Adversarial Nets", https://arxiv.org/abs/1406.2661:
a generator G maps z ~ N(0, I) to images and a discriminator D tells them from data,

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]                          (eq. 1)

trained by alternating gradient steps (Algorithm 1; here one D step, then one G step per
batch: the keys of :meth:`GAN.optimizer_groups` are the training loop's phases, in order).
The objectives (non-saturating, hinge, WGAN-GP) are pure functions in
:mod:`genpipe.models.gan.losses`.

Networks follow DCGAN (Radford et al. 2016, https://arxiv.org/abs/1511.06434, sec. 3):
G projects z to 4x4 and doubles the resolution with stride-2 transposed convolutions,
BatchNorm and ReLU, tanh output; D halves it with stride-2 convolutions and LeakyReLU(0.2),
no BatchNorm on its first layer. Widths double at each coarser level (DCGAN's ngf / ndf).
Options: spectral normalisation of every D layer (Miyato et al. 2018,
https://arxiv.org/abs/1802.05957); conditional p(x | y) with class-conditional BatchNorm
in G (de Vries et al. 2017, https://arxiv.org/abs/1707.00683) and a projection
discriminator D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018,
https://arxiv.org/abs/1802.05637, eq. 3).

A GAN has no likelihood: :meth:`GAN.log_likelihood` returns None. Samples are G(z) with
the BatchNorm running statistics (batch-independent); the training loop samples from its
EMA copy of the whole model, so from the weight-averaged generator (Yazici et al. 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, OptimizerGroup, check_labels, cpu_randn
from genpipe.models.gan.config import GANConfig, GANSamplingConfig
from genpipe.models.gan.losses import D_LOSSES, G_LOSSES, LossKind, discriminator_score, gradient_penalty


# ----------------------------------------------------------------------------- building blocks
class ClassBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (or shared when unconditional).

    y = gamma[c] * (x - mu) / sqrt(var + eps) + beta[c]  (conditional BatchNorm, de Vries
    et al. 2017). Running statistics are float buffers only (no integer counter).
    """

    def __init__(self, channels: int, num_classes: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        rows = max(num_classes, 1)  # one shared row when unconditional
        self.gain = nn.Parameter(torch.ones(rows, channels))
        self.bias = nn.Parameter(torch.zeros(rows, channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, batch_stats: bool) -> torch.Tensor:
        """x (B, C, H, W), y (B,) or None; ``batch_stats`` normalises by (and tracks) the batch."""
        h = F.batch_norm(x, self.running_mean, self.running_var, None, None, batch_stats, self.momentum, self.eps)
        gain, bias = (self.gain[y], self.bias[y]) if y is not None else (self.gain[:1], self.bias[:1])  # (B|1, C)
        return h * gain[:, :, None, None] + bias[:, :, None, None]


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN sec. 4: weights ~ N(0, 0.02), BatchNorm gains ~ N(1, 0.02), biases 0.

    (The random gains also make a conditional G depend on the label from the start.)
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, ClassBatchNorm2d):
        nn.init.normal_(module.gain, 1.0, 0.02)


MAX_BASE = 8  # the side of the generator's first feature map (and the discriminator's last), at most


def num_levels(spec: ImageSpec) -> tuple[int, int]:
    """(n, base): the image is ``base * 2**n`` square, ``base`` in 4..MAX_BASE the side of the
    coarsest feature map (4 for powers of two, as in DCGAN; 7 for 28 px), n >= 1 doublings."""
    _, h, w = spec.shape
    if h != w:
        raise InputError(f"gan: images must be square (got {h}x{w}); set data.resolution")
    n, base = 0, h
    while base % 2 == 0 and base // 2 >= 4:
        n, base = n + 1, base // 2
    if n < 1 or base > MAX_BASE:
        ok = sorted({b * 2 ** max(1, round(math.log2(h / b))) for b in range(4, MAX_BASE + 1)}, key=lambda s: (abs(s - h), s))
        raise InputError(f"gan: a {h}x{h} image is not base x 2^n with base in 4..{MAX_BASE} and n >= 1; "
                         f"data.resolution: {ok[0]} would work")
    return n, base


class Generator(nn.Module):
    """z (B, latent_dim) -> base x base -> ... -> image (B, C, H, W) in (-1, 1) (base 4 at 2^k).

    At each resolution up to H/2: (stride-2 transposed conv,) BN, ReLU, 3x3 conv, BN, ReLU;
    one 3x3 conv per level beyond DCGAN, cheap at these resolutions. A last transposed conv makes the image.
    """

    def __init__(self, cfg: GANConfig, spec: ImageSpec, num_classes: int):
        super().__init__()
        n, self.base = num_levels(spec)
        self.widths = [cfg.g_width * 2 ** (n - 1 - i) for i in range(n)]  # at base, 2 base, ..., H/2
        self.project = nn.Linear(cfg.latent_dim, self.widths[0] * self.base**2, bias=False)  # DCGAN's 1x1 -> 4x4
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False) for a, b in zip(self.widths, self.widths[1:])
        )
        self.convs = nn.ModuleList(nn.Conv2d(w, w, 3, padding=1, bias=False) for w in self.widths)
        self.norms = nn.ModuleList(ClassBatchNorm2d(w, num_classes) for w in self.widths for _ in range(2))
        self.to_image = nn.ConvTranspose2d(self.widths[-1], spec.shape[0], 4, stride=2, padding=1)
        self.apply(dcgan_init_)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None, batch_stats: bool) -> torch.Tensor:
        h = self.project(z).view(-1, self.widths[0], self.base, self.base)  # (B, w0, base, base)
        for i, conv in enumerate(self.convs):
            if i:
                h = self.ups[i - 1](h)  # (B, w_i, base 2^i, base 2^i)
            h = F.relu(self.norms[2 * i](h, y, batch_stats))
            h = F.relu(self.norms[2 * i + 1](conv(h), y, batch_stats))
        return torch.tanh(self.to_image(h))  # (B, C, H, W)


def _d_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":  # batch statistics only: D is never evaluated in eval mode
        return nn.BatchNorm2d(channels, track_running_stats=False)
    return nn.GroupNorm(1, channels) if kind == "layer" else nn.Identity()


class Discriminator(nn.Module):
    """image (B, C, H, W) [, y (B,)] -> logit / critic value (B,); projection head if conditional."""

    def __init__(self, cfg: GANConfig, spec: ImageSpec, num_classes: int):
        super().__init__()
        n, base = num_levels(spec)
        widths = [cfg.d_width * 2**i for i in range(n)]  # at H/2, ..., base x base
        layers: list[nn.Module] = [nn.Conv2d(spec.shape[0], widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1, bias=cfg.d_norm == "none"), _d_norm(cfg.d_norm, b),
                       nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers, nn.Flatten())  # phi(x): (B, w_last * base^2)
        self.head = nn.Linear(widths[-1] * base**2, 1)  # psi; DCGAN's final 4x4 valid conv
        self.embed = nn.Embedding(num_classes, widths[-1] * base**2) if num_classes else None
        self.apply(dcgan_init_)
        if cfg.spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    spectral_norm(m)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.features(x)  # (B, F)
        out = self.head(h).squeeze(1)  # (B,)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)  # projection: <embed(y), phi(x)>
        return out


def truncated_normal(shape: tuple[int, ...], threshold: float, generator: torch.Generator | None,
                     device: torch.device) -> torch.Tensor:
    """N(0, 1) conditioned on |z| <= threshold, by the inverse CDF (one uniform per entry, on the CPU)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    lo = 0.5 * math.erfc(threshold / math.sqrt(2.0))  # Phi(-t)
    p = lo + u * (1.0 - 2.0 * lo)  # uniform on [Phi(-t), Phi(t)]
    return (math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)).float().to(device)


# ----------------------------------------------------------------------------- the family
class GAN(nn.Module):
    """Generator + discriminator; the loop steps D then G on every batch."""

    def __init__(self, cfg: GANConfig, spec: ImageSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.num_classes = spec.num_classes if cfg.conditional else 0
        self.generator = Generator(cfg, spec, self.num_classes)
        self.discriminator = Discriminator(cfg, spec, self.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- training --------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        c = self.cfg
        lr_d = c.lr if c.lr_d is None else c.lr_d
        lr_g = c.lr if c.lr_g is None else c.lr_g
        return {  # order = the loop's phases: D first, then G against the updated D
            "discriminator": OptimizerGroup(list(self.discriminator.parameters()), lr_d, c.betas, c.weight_decay),
            "generator": OptimizerGroup(list(self.generator.parameters()), lr_g, c.betas, c.weight_decay),
        }

    def training_losses(self, x: torch.Tensor, labels: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        """One phase on a data batch x (B, C, H, W); fakes are drawn for the same labels."""
        y = labels if self.num_classes else None
        z = torch.randn(x.shape[0], self.cfg.latent_dim, device=x.device)  # global RNG (loop-seeded)
        if phase == "discriminator":
            return self._discriminator_losses(x, y, z)
        if phase == "generator":
            return self._generator_losses(y, z)
        raise ValueError(f"unknown GAN phase {phase!r}")

    def _discriminator_losses(self, x: torch.Tensor, y: torch.Tensor | None,
                              z: torch.Tensor) -> dict[str, torch.Tensor]:
        kind = self.cfg.loss
        with torch.no_grad():  # D's step must not reach G
            fake = self.generator(z, y, batch_stats=True)  # (B, C, H, W)
        real_out, fake_out = self.discriminator(x, y), self.discriminator(fake, y)  # (B,), (B,)
        adversarial = D_LOSSES[kind](real_out, fake_out)
        out = {"d_real": discriminator_score(kind, real_out), "d_fake": discriminator_score(kind, fake_out),
               "adversarial": adversarial.detach()}
        loss = adversarial
        if kind == "wgan_gp":
            eps = torch.rand(x.shape[0], device=x.device)  # (B,) interpolation weights
            penalty = gradient_penalty(lambda im: self.discriminator(im, y), x, fake, eps, self.cfg.gp_weight)
            loss = loss + penalty
            out |= {"gradient_penalty": penalty.detach(), "wasserstein_estimate": -adversarial.detach()}
        return {"loss": loss, **out}

    def _generator_losses(self, y: torch.Tensor | None, z: torch.Tensor) -> dict[str, torch.Tensor]:
        fake = self.generator(z, y, batch_stats=True)  # (B, C, H, W)
        fake_out = self.discriminator(fake, y)  # (B,)
        return {
            "loss": G_LOSSES[self.cfg.loss](fake_out),
            "d_fake": discriminator_score(self.cfg.loss, fake_out),
            # per-pixel spread across the batch; collapsing towards 0 is mode collapse
            "fake_pixel_std": fake.detach().float().std(0).mean(),
        }

    # -- sampling --------------------------------------------------------------------
    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws z ~ N(0, I), (n, latent_dim), noise from the CPU ``generator``."""
        return cpu_randn((n, self.cfg.latent_dim), generator, self.device)

    def decode_latents(self, z: torch.Tensor, labels: torch.Tensor | None = None, options=None) -> torch.Tensor:
        """G(z) (n, C, H, W) in [-1, 1] with BatchNorm running statistics (batch-independent).

        Latent arithmetic ("glasses man - man + woman") is ``decode_latents(z1 - z2 + z3)``.
        """
        y = self._class_labels(z.shape[0], labels)
        return self.generator(z.to(self.device), y, batch_stats=False).clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               options: GANSamplingConfig | None = None) -> torch.Tensor:
        opts = self.cfg.sampling if options is None else options
        if not isinstance(opts, GANSamplingConfig):
            raise InputError(f"options: the gan family takes GANSamplingConfig, got {type(opts).__name__}")
        self._class_labels(n, labels)  # refuse bad labels before drawing noise
        if opts.truncation is None:
            z = self.sample_latents(n, generator)
        else:
            z = truncated_normal((n, self.cfg.latent_dim), opts.truncation, generator, self.device)
        return self.decode_latents(z, labels, opts)

    def _class_labels(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels G is conditioned on: given ones checked, or a balanced i % K mix."""
        return check_labels(labels, n, num_classes=self.spec.num_classes, conditional=self.cfg.conditional,
                            family="gan", device=self.device)

    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> None:
        """A GAN defines no density p(x): None."""
        return None


def build_gan(cfg: GANConfig, spec: ImageSpec) -> GAN:
    return GAN(cfg, spec)
