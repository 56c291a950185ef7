"""Convolutional variational autoencoder.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes", https://arxiv.org/abs/1312.6114

    log p(x) >= ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))          (eq. 3)

with q(z|x) = N(mu(x), diag sigma(x)^2), p(z) = N(0, I) and the reparameterisation
z = mu + sigma * eps, eps ~ N(0, I) (sec. 2.4), so the gradient flows through the sample.
The KL of two Gaussians is closed-form (appendix B):

    KL = 1/2 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)

The decoder p(x|z) is a per-pixel discretised logistic over the 256 levels
(:mod:`genpipe.models.distributions`), so -ELBO is an upper bound on the code length
of the 8-bit image and bits/dim need no dequantisation correction. Samples are the
decoder means of z ~ p(z), the usual way to show a VAE (and why it looks smooth).

Its likelihood estimate is the importance-weighted bound (Burda et al. 2016, IWAE,
https://arxiv.org/abs/1509.00519, eq. 8), tighter than the ELBO as k grows:

    log p(x) >= log 1/k sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z | x)

With ``prior: vamp`` the prior is the VampPrior (Tomczak & Welling 2018, "VAE with a
VampPrior", https://arxiv.org/abs/1705.07120, eq. 9): the encoder's posterior averaged over
K learned pseudo-inputs u_k,

    p(z) = 1/K sum_k q(z | u_k),

so the prior follows the aggregate posterior instead of leaving N(0, I)'s regions that no
image encodes to (those decode to non-digits). Its KL has no closed form: the ELBO uses the
single-sample estimate log q(z|x) - log p(z) at the reparameterised z, and IWAE uses this
log p(z). Sampling draws k uniformly, then z ~ q(z | u_k).

With ``conditional`` it is a conditional VAE (Sohn et al. 2015): the label's one-hot code
is an input of both q(z | x, y) and p(x | z, y); the prior stays independent of y (for the
VampPrior, pseudo-input k carries the fixed label k mod the number of classes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LogLikelihood, OptimizerGroup, check_labels, cpu_randn
from genpipe.models.distributions import discretized_logistic_log_prob, gaussian_log_prob
from genpipe.models.nets.conv import ResBlock, downsample, group_norm, upsample
from genpipe.models.vae.config import VAEConfig


class VAE(nn.Module):
    """Conv encoder -> (mu, log sigma^2) -> z -> conv decoder -> (mean, log scale) per pixel."""

    def __init__(self, cfg: VAEConfig, spec: ImageSpec):
        super().__init__()
        c, h, w = spec.shape
        n_down = len(cfg.channels)
        if h % (2**n_down) or w % (2**n_down):
            raise InputError(
                f"vae.channels: {n_down} downsamplings do not divide the {h}x{w} images; use fewer channels"
            )
        self.cfg, self.spec = cfg, spec
        self.num_labels = spec.num_classes if cfg.conditional else 0  # one-hot width fed to both halves
        self.bottom = (cfg.channels[-1], h // 2**n_down, w // 2**n_down)  # (C', H', W')
        widths = (cfg.channels[0], *cfg.channels)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, padding=1),
            *(downsample(a, b) for a, b in zip(widths[:-1], widths[1:])),
            group_norm(widths[-1]), nn.SiLU(), nn.Flatten(),
        )
        self.encoder_out = nn.Linear(math.prod(self.bottom) + self.num_labels, 2 * cfg.latent_dim)
        rev = widths[::-1]
        self.decoder_in = nn.Linear(cfg.latent_dim + self.num_labels, math.prod(self.bottom))
        self.decoder = nn.Sequential(
            ResBlock(rev[0], rev[0]),
            *(upsample(a, b) for a, b in zip(rev[:-1], rev[1:])),
            group_norm(rev[-1]), nn.SiLU(), nn.Conv2d(rev[-1], 2 * c, 3, padding=1),
        )
        if cfg.prior == "vamp":  # pseudo-inputs, kept in [-1, 1] by a hardtanh (as the paper); start dark grey
            self.pseudo_inputs = nn.Parameter(torch.randn(cfg.pseudo_inputs, c, h, w) * 0.01 - 0.5)
            labels = torch.arange(cfg.pseudo_inputs) % self.num_labels if self.num_labels else torch.empty(0)
            self.register_buffer("pseudo_labels", labels.long(), persistent=False)

    # -- the two halves -------------------------------------------------------------
    def _with_label(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.num_labels:
            return h
        return torch.cat([h, nn.functional.one_hot(labels, self.num_labels).to(h.dtype)], dim=1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> mu, logvar, each (B, latent_dim)."""
        mu, logvar = self.encoder_out(self._with_label(self.encoder(x), labels)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, latent_dim) -> mean, log_scale of p(x|z), each (B, C, H, W)."""
        hidden = self.decoder_in(self._with_label(z, labels)).view(-1, *self.bottom)
        mean, log_scale = self.decoder(hidden).chunk(2, dim=1)
        return mean, log_scale.clamp(min=-7.0)

    def _labels(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """Checked labels for sampling: None for an unconditional model, a balanced mix if absent."""
        return check_labels(labels, n, num_classes=self.spec.num_classes, conditional=self.cfg.conditional,
                            family="vae", device=device)

    # -- the prior ----------------------------------------------------------------------
    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The VampPrior's K components q(z | u_k): mu, logvar (K, latent_dim); None for N(0, I)."""
        if self.cfg.prior != "vamp":
            return None
        return self.encode(nn.functional.hardtanh(self.pseudo_inputs), self.pseudo_labels)  # labels: conditional only

    def prior_log_prob(self, z: torch.Tensor, components: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """log p(z) per row of z (B, latent_dim), with ``components`` from :meth:`prior_components`."""
        if components is None:
            return gaussian_log_prob(z, z.new_zeros(()), z.new_zeros(())).sum(1)
        mu, logvar = components  # (K, Z)
        log_qk = gaussian_log_prob(z.unsqueeze(1), mu, 0.5 * logvar).sum(2)  # (B, K)
        return log_qk.logsumexp(1) - math.log(mu.shape[0])

    def elbo_terms(self, x: torch.Tensor, eps: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: log p(x|z) with z = mu + sigma * eps, and KL(q(z|x) || p(z)), in nats (closed
        form for N(0, I); for the VampPrior the one-sample estimate log q(z|x) - log p(z))."""
        mu, logvar = self.encode(x, labels)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterisation trick
        mean, log_scale = self.decode(z, labels)
        log_px_z = discretized_logistic_log_prob(x, mean, log_scale).flatten(1).sum(1)  # (B,)
        components = self.prior_components()
        if components is None:
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
        else:
            kl = gaussian_log_prob(z, mu, 0.5 * logvar).sum(1) - self.prior_log_prob(z, components)
        return log_px_z, kl

    # -- the family interface ---------------------------------------------------------
    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        c = self.cfg
        return {"model": OptimizerGroup(list(self.parameters()), c.lr, c.betas, c.weight_decay)}

    def training_losses(self, x: torch.Tensor, labels: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        eps = torch.randn(x.shape[0], self.cfg.latent_dim, device=x.device)
        log_px_z, kl = self.elbo_terms(x, eps, labels if self.num_labels else None)
        dims = x[0].numel()
        recon, kl = -log_px_z.mean(), kl.mean()
        return {
            "loss": (recon + self.cfg.kl_weight * kl) / dims,  # per dimension keeps lr scale-free
            "recon_nats": recon.detach(),
            "kl_nats": kl.detach(),
            "elbo_bpd": ((recon + kl) / (dims * math.log(2))).detach(),
        }

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None, options=None
    ) -> torch.Tensor:
        return self.decode_latents(self.sample_latents(n, generator), labels)

    @torch.no_grad()
    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        eps = cpu_randn((n, self.cfg.latent_dim), generator, device)
        components = self.prior_components()
        if components is None:
            return eps
        mu, logvar = components
        k = torch.randint(mu.shape[0], (n,), generator=generator).to(device)  # a pseudo-input per draw
        return mu[k] + torch.exp(0.5 * logvar[k]) * eps

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, labels: torch.Tensor | None = None, options=None) -> torch.Tensor:
        mean, _ = self.decode(z, self._labels(labels, z.shape[0], z.device))
        return mean.clamp(-1.0, 1.0)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood:
        """The IWAE bound with k = ``iwae_samples`` (k = 1 is the ELBO): a lower bound on log p(x)."""
        k, labels = self.cfg.iwae_samples, (labels if self.num_labels else None)
        mu, logvar = self.encode(x, labels)  # (B, Z)
        std = torch.exp(0.5 * logvar)
        components = self.prior_components()
        total = []
        for _ in range(k):  # one posterior sample per image at a time keeps memory flat in k
            eps = cpu_randn(mu.shape, generator, mu.device)
            z = mu + std * eps
            mean, log_scale = self.decode(z, labels)
            log_px_z = discretized_logistic_log_prob(x, mean, log_scale).flatten(1).sum(1)
            log_qz = gaussian_log_prob(z, mu, 0.5 * logvar).sum(1)
            total.append(log_px_z + self.prior_log_prob(z, components) - log_qz)  # log p(x, z_i) - log q(z_i | x)
        bound = torch.stack(total).logsumexp(0) - math.log(k)  # (B,)
        return LogLikelihood(nats=bound, kind="lower_bound", estimator="elbo" if k == 1 else f"iwae-{k}")


def build_vae(cfg: VAEConfig, spec: ImageSpec) -> VAE:
    return VAE(cfg, spec)
