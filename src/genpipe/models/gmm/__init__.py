"""The Gaussian-mixture family, the classical baseline: EM on pixels after PCA (model.py) and its
config section (config.py)."""

from __future__ import annotations

from genpipe.models.base import Family
from genpipe.models.gmm.config import GMMConfig
from genpipe.models.gmm.model import build_gmm, GaussianMixtureModel

def claims(results, losses) -> list[str]:
    """The classical baseline: does every neural likelihood beat the mixture's?"""
    ll = {f: r.likelihood.bits_per_dim for f, r in results.items() if r.likelihood is not None}
    if "gmm" not in ll:
        return []
    worse = [f for f in ll if f != "gmm" and ll[f] >= ll["gmm"]]
    return ["Every neural likelihood beats the Gaussian mixture." if not worse
            else f"Not beating the Gaussian mixture ({ll['gmm']:.3f}): {', '.join(worse)}."]


FAMILY = Family(
    name="gmm",
    config_type=GMMConfig,
    build=build_gmm,
    summary="Gaussian mixture (EM, scikit-learn) after PCA; likelihood: dequantised density (a lower bound)",
    trainer="fit",
    claims=claims,
)

__all__ = ["FAMILY", "GMMConfig", "GaussianMixtureModel", "build_gmm"]
