"""The VAE family: a convolutional VAE with a discretised-logistic decoder (model.py) and its
config section (config.py)."""

from __future__ import annotations

from genpipe.models.base import Family
from genpipe.models.vae.config import VAEConfig
from genpipe.models.vae.model import build_vae, VAE

def claims(results, losses) -> list[str]:
    """The introductions' 'VAEs are blurry': sample sharpness relative to the real images."""
    sharp = results["vae"].quality.sharpness_ratio
    others = sorted((r.quality.sharpness_ratio, f) for f, r in results.items())
    return [f"'VAEs are blurry': VAE sample sharpness is {sharp:.2f}× that of real images "
            f"(rank {[f for _, f in others].index('vae') + 1} of {len(others)} from the blurriest) — "
            f"**{'holds' if sharp < 0.8 else 'does not hold'}** (threshold 0.8)."]


FAMILY = Family(
    name="vae",
    config_type=VAEConfig,
    build=build_vae,
    summary="convolutional VAE, discretised-logistic decoder, N(0, I) or VampPrior; likelihood: IWAE-k (a lower bound)",
    claims=claims,
)

__all__ = ["FAMILY", "VAE", "VAEConfig", "build_vae"]
