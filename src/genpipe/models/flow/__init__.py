"""The normalizing-flow family: a Glow-style multi-scale flow (model.py) of the layers in
layers.py, and its config section (config.py)."""

from __future__ import annotations

from genpipe.models.base import Family
from genpipe.models.flow.config import FlowConfig
from genpipe.models.flow.model import build_flow, Glow

FAMILY = Family(
    name="flow",
    config_type=FlowConfig,
    build=build_flow,
    summary="Glow multi-scale flow (actnorm, LU 1x1 conv, affine coupling); likelihood: dequantised lower bound",
)

__all__ = ["FAMILY", "FlowConfig", "Glow", "build_flow"]
