"""The base classes of every config section, apart from :mod:`genpipe.config` so that each
family's section can sit in its own folder (``models/<family>/config.py``) and the full
:class:`genpipe.config.Config` can be built from the family registry."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator


SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")  # keys whose values are never shown
MAX_SEED = 2**31 - 1  # the offsets stages add to a seed stay within numpy's and sklearn's 32-bit seeds
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def check_folder(path: Path) -> Path:
    """``path`` if it is a folder or one can be made there: neither it nor a folder above it is a file."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{p} is a file, not a folder" if p == path else f"{p}, above it, is a file")
            break
    return path


Folder = Annotated[Path, AfterValidator(check_folder)]  # a local output folder (made when first written)


def _takes_bool(annotation: Any) -> bool:
    """Whether a boolean may appear in a field's value: its type admits one somewhere (``bool``,
    ``bool | None``, ``Any``, ``Literal[True]``), or holds a section, which checks its own fields."""
    if annotation is bool or annotation is Any or isinstance(annotation, bool):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_takes_bool(a) for a in typing.get_args(annotation))


def _holds_bool(value: Any) -> bool:
    """Whether ``value`` is a boolean or a list, tuple or mapping holding one (at any depth)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_bool(v) for v in value.values())
    return False


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys refused, floats finite (no inf, no
    nan), and a boolean is not a number (``steps: true`` is an error, not 1; nor is ``true`` in
    ``stability_seeds: [true]`` or ``betas: [true, 0.9]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_other_types(cls, value: Any, info: ValidationInfo) -> Any:
        if _holds_bool(value) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("a boolean is not accepted here")
        return value


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
