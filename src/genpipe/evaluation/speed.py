"""Sampling cost: images per second and network evaluations per image, measured the same way
for every family.

One warm-up batch (allocations, autotuning, lazy init), then ``repeats`` timed batches of
``batch_size`` images, each bracketed by a device synchronisation so that asynchronous CUDA
work is inside the measurement. The same seeded generator feeds every batch.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from genpipe.models.base import network_evaluations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sampling_speed(model: torch.nn.Module, options: Any, batch_size: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Images/s after warm-up at ``batch_size``, with the NFE and what was measured."""
    device = next(iter([*model.parameters(), *model.buffers()])).device
    generator = torch.Generator().manual_seed(seed)
    model.sample(batch_size, generator=generator, options=options)  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.sample(batch_size, generator=generator, options=options)
        _sync(device)
        times.append(time.perf_counter() - t0)
    per_batch = sorted(times)[len(times) // 2]  # the median batch
    return {
        "images_per_s": batch_size / per_batch,
        "seconds_per_batch": per_batch,
        "batch_size": batch_size,
        "repeats": repeats,
        "nfe": network_evaluations(model, options),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
