"""Datasets: sources -> Parquet shards + dataset card -> tensors.

The names below load on first use, so that importing a submodule (the decoding workers import
:mod:`genpipe.data.files`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ImageSplit": "dataset", "load_split": "dataset", "prepare_dataset": "prepare", "read_card": "prepare"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"genpipe.data.{_EXPORTS[name]}"), name)
