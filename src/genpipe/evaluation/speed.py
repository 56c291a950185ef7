"""Sampling cost: images per second and network evaluations per image, measured the same way
for every family, on the very batches the evaluation scores.

:func:`sample_timed` draws the scored images in batches of ``evaluate.batch_size``, each
bracketed by a device synchronisation so that asynchronous CUDA work is inside its time.
:func:`sampling_speed` takes the median images/s over those batches, leaving out the first
(allocations, autotuning, lazy init: the warm-up) whenever there is more than one. No images
are drawn only to be timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from genpipe.images import to_uint8
from genpipe.models.base import network_evaluations


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` runs (its first parameter or buffer)."""
    return next(iter([*model.parameters(), *model.buffers()])).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TimedSamples:
    images: torch.Tensor  # (n, C, H, W) uint8
    batches: tuple[tuple[int, float], ...]  # (images, seconds) per batch, in drawing order

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.batches)


@torch.no_grad()
def sample_timed(model: torch.nn.Module, n: int, options: Any, seed: int, batch_size: int) -> TimedSamples:
    """``n`` uint8 images from one generator seeded with ``seed``, drawn ``batch_size`` at a
    time, with each batch's sampling time (device-synchronised)."""
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    out, batches = [], []
    for i in range(0, n, batch_size):
        k = min(batch_size, n - i)
        t0 = time.perf_counter()
        images = model.sample(k, generator=generator, options=options)
        _sync(device)
        batches.append((k, time.perf_counter() - t0))
        out.append(to_uint8(images.float().cpu()))
    return TimedSamples(torch.cat(out), tuple(batches))


def sampling_speed(model: torch.nn.Module, options: Any, timed: TimedSamples) -> dict[str, Any]:
    """Median images/s over ``timed``'s batches after the first (the warm-up; with a single
    batch, that one), with the NFE and what was measured."""
    kept = timed.batches[1:] or timed.batches
    rates = sorted(k / max(s, 1e-12) for k, s in kept)
    mid = len(rates) // 2
    median = rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2
    return {
        "images_per_s": median,
        "batch_size": timed.batches[0][0],
        "timed_batches": len(kept),
        "warm_up_excluded": len(timed.batches) > 1,
        "nfe": network_evaluations(model, options),
        "device": str(model_device(model)),
        "threads": torch.get_num_threads(),
    }
