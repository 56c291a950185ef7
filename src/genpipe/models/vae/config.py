"""The VAE's config section (``vae:`` in params.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genpipe.sections import FamilyConfig


class VAEConfig(FamilyConfig):
    """Convolutional VAE (Kingma & Welling 2014) with a discretised-logistic decoder."""

    latent_dim: int = Field(20, ge=1)  # size of z
    channels: tuple[int, ...] = Field((32, 64), min_length=1)  # conv widths, one per 2x downsample
    kl_weight: float = Field(1.0, gt=0.0)  # 1.0 is the ELBO; other values give a beta-VAE
    iwae_samples: int = Field(64, ge=1)  # k of the importance-weighted bound used as its likelihood
    # p(z): N(0, I) | VampPrior (Tomczak & Welling 2018; params.yaml's choice). "standard" when
    # absent, so checkpoints written before the option existed load as what they are
    prior: Literal["standard", "vamp"] = "standard"
    pseudo_inputs: int = Field(25, ge=1)  # K learned pseudo-inputs of the VampPrior
