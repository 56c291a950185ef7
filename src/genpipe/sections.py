"""The base classes of every config section, apart from :mod:`genpipe.config` so that each
family's section can sit in its own folder (``models/<family>/config.py``) and the full
:class:`genpipe.config.Config` can be built from the family registry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FamilyConfig(Section):
    """Fields every trainable family has: its optimizer."""

    conditional: bool = False  # learn p(x | y) from the dataset labels; sample takes labels
    steps: int | None = Field(None, ge=1)  # this family's optimizer steps; None = train.steps
    batch_size: int | None = Field(None, ge=1)  # this family's batch per worker; None = train.batch_size
    precision: Literal["auto", "fp32", "bf16"] | None = None  # this family's; None = train.precision
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class SamplingSection(Section):
    """Base of a family's ``sampling`` section: settings chosen at generation time."""

    def label(self) -> str:
        """The setting in a few characters, for tables and run names (``temperature=0.7``)."""
        return ", ".join(f"{k}={v}" for k, v in self.model_dump(mode="json").items())

    def series(self) -> str:
        """The curve this setting belongs to in a sweep's FID-vs-NFE plot (settings of one series
        differ in their NFE): by default each setting is its own."""
        return self.label()
