"""The in-process world: one rank, no wrapping, a tqdm progress bar."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


class LocalWorld:
    rank = 0
    world_size = 1

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        return module.to(device)

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def progress(self, total: int, initial: int, desc: str) -> Any:
        return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=0.5)


def pick_device(requested: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; ``cuda`` without a GPU is an input error."""
    from genpipe.errors import InputError

    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device: cuda requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
