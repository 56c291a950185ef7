"""Shared by the family tests: run a few optimiser steps on one fixed batch."""

from __future__ import annotations

import torch


def first_and_last_loss(model: torch.nn.Module, x: torch.Tensor, lr: float, steps: int) -> tuple[float, float]:
    """The family's "loss" before the first and at the last of ``steps`` Adam steps on ``x``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.training_losses(x, None, "model")["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0], losses[-1]
