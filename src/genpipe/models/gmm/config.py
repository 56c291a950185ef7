"""The Gaussian mixture's config section (``gmm:`` in params.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genpipe.sections import FamilyConfig


class GMMConfig(FamilyConfig):
    """Gaussian mixture on pixels after PCA (the classical baseline), fitted by EM."""

    components: int = Field(10, ge=1)  # mixture components (per class when conditional)
    covariance: Literal["full", "diag"] = "full"
    pca_components: int = Field(0, ge=0)  # K principal directions; 0 = no PCA (all pixels)
    reg_covar: float = Field(1e-4, gt=0.0)  # added to covariance diagonals (stability)
    max_iter: int = Field(200, ge=1)  # EM iterations
    dequantization_samples: int = Field(4, ge=1)  # uniform-noise draws when evaluating log p
