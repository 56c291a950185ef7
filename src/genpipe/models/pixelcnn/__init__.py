"""The autoregressive family: a gated PixelCNN (model.py) and its config section (config.py)."""

from __future__ import annotations

from genpipe.models.base import Family
from genpipe.models.pixelcnn.config import PixelCNNConfig
from genpipe.models.pixelcnn.model import build_pixelcnn, PixelCNN

FAMILY = Family(
    name="pixelcnn",
    config_type=PixelCNNConfig,
    build=build_pixelcnn,
    summary="gated PixelCNN, 256-way softmax or discretised logistic mixture per sub-pixel; "
            "likelihood: exact (autoregressive)",
)

__all__ = ["FAMILY", "PixelCNN", "PixelCNNConfig", "build_pixelcnn"]
