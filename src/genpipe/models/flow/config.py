"""The flow's config section (``flow:`` in params.yaml) and its sampling settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from genpipe.sections import FamilyConfig, SamplingSection


class FlowSamplingConfig(SamplingSection):
    """How the flow samples: the temperature of its Gaussian latents."""

    temperature: float = Field(0.7, ge=0.0, le=2.0)  # eps scale; 0 = mean image path, 1 = the model's density


class FlowConfig(FamilyConfig):
    """Glow-style multi-scale flow (Kingma & Dhariwal 2018) trained by maximum likelihood."""

    # above FamilyConfig's 1e-3 for the short quick budget; grad_clip 1.0 keeps it stable
    lr: float = Field(5e-3, gt=0.0, le=1.0)
    # one entry per scale (squeeze + that many steps + split); where H and W divide by 2 fewer
    # times than there are entries (28 px: twice), the extra levels' steps join the last one kept
    steps_per_level: tuple[PositiveInt, ...] = Field((4, 4, 4), min_length=1, max_length=8)
    hidden: int = Field(64, ge=1)  # width of each coupling's conv net
    coupling: Literal["affine", "additive"] = "affine"  # additive = NICE (volume preserving)
    input_transform: Literal["logit", "identity"] = "logit"  # RealNVP's logit of the pixels, or none (Glow)
    logit_alpha: float = Field(0.05, gt=0.0, lt=0.5)  # logit(alpha + (1 - 2 alpha) p) keeps the edges finite
    eval_dequant_samples: int = Field(4, ge=1)  # uniform-noise draws per image in log_likelihood
    sampling: FlowSamplingConfig = FlowSamplingConfig()
