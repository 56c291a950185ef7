"""GAN objectives as pure functions of discriminator outputs (logits, or critic values).

Every function takes the raw outputs D(x) of real images and D(G(z)) of generated ones,
shape (B,), and returns a scalar to *minimise*. Outputs are cast to float32 first, so the
losses are computed at full precision under bf16 autocast.

Non-saturating (Goodfellow et al. 2014, https://arxiv.org/abs/1406.2661, eq. 1 and sec. 3):

    L_D = -E[log sigma(D(x))] - E[log(1 - sigma(D(G(z))))]
        = E[softplus(-D(x))] + E[softplus(D(G(z)))]
    L_G = -E[log sigma(D(G(z)))] = E[softplus(-D(G(z)))]      (instead of E[log(1 - sigma)],
                                                                which saturates early on)

L_D is minimal (0) when sigma(D(x)) -> 1 and sigma(D(G(z))) -> 0 and equals 2 log 2 when
D cannot tell (sigma = 1/2 everywhere), the value at the game's optimum p_g = p_data (sec. 4).

Hinge (Lim & Ye 2017, https://arxiv.org/abs/1705.02894; Miyato et al. 2018, eq. 16):

    L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],    L_G = -E[D(G(z))]

Wasserstein with gradient penalty (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028,
Algorithm 1): the critic estimates W(p_data, p_g) = max_{||f||_L <= 1} E[f(x)] - E[f(G(z))],

    L_D = E[D(G(z))] - E[D(x)] + lambda * E[(||grad_x D(x_hat)||_2 - 1)^2]
    L_G = -E[D(G(z))]

with x_hat = eps * x + (1 - eps) * G(z), eps ~ U[0, 1] per image (eq. 3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["non_saturating", "hinge", "wgan_gp"]


# ----------------------------------------------------------------------------- non-saturating
def non_saturating_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-E[log sigma(D(x))] - E[log(1 - sigma(D(G(z))))] from logits ``real``, ``fake`` (B,)."""
    return F.softplus(-real.float()).mean() + F.softplus(fake.float()).mean()


def non_saturating_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """-E[log sigma(D(G(z)))] from logits ``fake`` (B,)."""
    return F.softplus(-fake.float()).mean()


# ----------------------------------------------------------------------------- hinge
def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]; zero once real >= 1 and fake <= -1."""
    return F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean()


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake.float().mean()


# ----------------------------------------------------------------------------- Wasserstein
def wasserstein_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: minus the critic's estimate of the Wasserstein-1 distance."""
    return fake.float().mean() - real.float().mean()


wasserstein_g_loss = hinge_g_loss  # the same -E[D(G(z))] (Lim & Ye 2017 took hinge G from WGAN)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """lambda * E[(||grad D(x_hat)||_2 - 1)^2] on x_hat = eps * real + (1 - eps) * fake.

    Args:
        critic: images (B, C, H, W) -> values (B,); must not mix images of a batch
            (no batch norm), or the per-image gradient is not the critic's.
        real, fake: (B, C, H, W); ``fake`` is detached from the generator here.
        eps: (B,) interpolation weights in [0, 1].
        weight: lambda (10 in the paper).
    Returns:
        A scalar, differentiable w.r.t. the critic's parameters (create_graph=True).
    """
    eps = eps.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)  # (B, 1, 1, 1)
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat).float()  # (B,)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)  # (B, C, H, W)
    norm = grad.float().flatten(1).norm(2, dim=1)  # (B,)
    return weight * (norm - 1.0).pow(2).mean()


# ----------------------------------------------------------------------------- by name
D_LOSSES: dict[LossKind, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "non_saturating": non_saturating_d_loss,
    "hinge": hinge_d_loss,
    "wgan_gp": wasserstein_d_loss,  # + gradient_penalty, added by the model
}
G_LOSSES: dict[LossKind, Callable[[torch.Tensor], torch.Tensor]] = {
    "non_saturating": non_saturating_g_loss,
    "hinge": hinge_g_loss,
    "wgan_gp": wasserstein_g_loss,
}


def discriminator_score(kind: LossKind, logits: torch.Tensor) -> torch.Tensor:
    """What to log as "D(x)": sigma(logit) for the non-saturating loss, the raw value otherwise."""
    logits = logits.detach().float()
    return torch.sigmoid(logits).mean() if kind == "non_saturating" else logits.mean()
