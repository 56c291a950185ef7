"""The in-process world: one rank, no wrapping, a progress bar (or milestone lines)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genpipe.runtime import progress_bar


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
        return progress_bar(total, desc, "step", initial)
