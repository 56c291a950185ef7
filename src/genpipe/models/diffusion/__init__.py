"""The diffusion family: DDPM with a small U-Net (model.py; samplers in genpipe.samplers) and
its config section (config.py)."""

from __future__ import annotations

from genpipe.models.base import Family
from genpipe.models.diffusion.config import DiffusionConfig
from genpipe.models.diffusion.model import build_diffusion, Diffusion

def claims(results, losses) -> list[str]:
    """The introductions' 'diffusion gives the best image quality', by FID."""
    by_fid = sorted(results, key=lambda f: results[f].quality.fid)
    holds = by_fid[0] == "diffusion"
    return [f"'Diffusion gives the best quality': **{'holds' if holds else 'does not hold'}** here "
            f"(diffusion ranks {by_fid.index('diffusion') + 1} of {len(by_fid)} by FID)."]


FAMILY = Family(
    name="diffusion",
    config_type=DiffusionConfig,
    build=build_diffusion,
    summary="DDPM with a small U-Net (epsilon or v); samplers: ddpm, ddim, dpm_solver++; likelihood: variational bound",
    claims=claims,
)

__all__ = ["Diffusion", "DiffusionConfig", "FAMILY", "build_diffusion"]
