"""Exponential moving average of the weights, via torch's ``AveragedModel``.

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so that short runs
are not dominated by their random initialisation (the schedule TensorFlow's
ExponentialMovingAverage uses with ``num_updates``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, num_updates: int) -> float:
    """The decay used for the update after ``num_updates`` earlier updates."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers), updated with ``ema.update_parameters``."""

    @torch.no_grad()
    def multi_avg_fn(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged) -> None:
        d = ema_decay_at(decay, int(num_averaged))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - d)
        for e, p in zip(ema_params, params):  # integer buffers (BatchNorm's step counter) are copied
            if not e.is_floating_point():
                e.copy_(p)

    return AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)
