"""The GAN's config section (``gan:`` in params.yaml) and its sampling settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genpipe.sections import FamilyConfig, SamplingSection


class GANSamplingConfig(SamplingSection):
    """How ``sample`` draws z."""

    # None: z ~ N(0, I). t > 0: each z_i ~ N(0, 1) conditioned on |z_i| <= t, the law of
    # BigGAN's truncation trick (redraw while |z_i| > t); smaller t trades diversity for fidelity.
    truncation: float | None = Field(None, gt=0.0)


class GANConfig(FamilyConfig):
    """DCGAN (Radford et al. 2016) trained as a non-saturating, hinge or WGAN-GP game.

    ``lr`` is the step size of both players; ``lr_g`` / ``lr_d`` override it for one of them
    (two time-scale updates, Heusel et al. 2017). The loop's warm-up and cosine decay apply
    to both. There is one D step per G step (the loop runs each phase once per batch).
    """

    lr: float = Field(2e-4, gt=0.0, le=1.0)  # Adam step size of both players unless lr_g / lr_d is set
    betas: tuple[float, float] = (0.5, 0.999)  # DCGAN's; WGAN-GP's paper uses (0.0, 0.9)
    lr_g: float | None = Field(None, gt=0.0, le=1.0)  # generator step size; None = lr
    lr_d: float | None = Field(None, gt=0.0, le=1.0)  # discriminator step size; None = lr (TTUR: lr_d > lr_g)
    latent_dim: int = Field(64, ge=1)  # size of z
    g_width: int = Field(32, ge=1)  # G channels at half the image side, doubled at each coarser level
    d_width: int = Field(32, ge=1)  # D channels after its first stride-2 conv, doubled at each level
    loss: Literal["non_saturating", "hinge", "wgan_gp"] = "non_saturating"  # the game: losses.D_LOSSES / G_LOSSES
    # D's normalisation after its first layer: batch | layer (GroupNorm(1), WGAN-GP's critic) | none
    d_norm: Literal["batch", "layer", "none"] = "batch"
    spectral_norm: bool = False  # W / sigma(W) on every D layer (Miyato et al. 2018)
    gp_weight: float = Field(10.0, ge=0.0)  # lambda of the gradient penalty (wgan_gp only)
    sampling: GANSamplingConfig = GANSamplingConfig()

    @model_validator(mode="after")
    def _penalty_needs_per_image_critic(self) -> GANConfig:
        if self.loss == "wgan_gp" and self.d_norm == "batch":
            raise ValueError("d_norm batch does not go with loss wgan_gp (batch norm mixes the images "
                             "of a batch, so the per-image gradient penalty is not the critic's); use layer or none")
        return self
