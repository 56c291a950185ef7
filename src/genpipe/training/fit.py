"""One family's training on one rank, whoever runs it: the train split, the family's model, and
the loop (or, for a fitted family, its one ``fit``). The in-process runner and every Ray Train
worker call :func:`fit`; it reports through the logger and checkpointer it is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genpipe.artifacts import LAST, checkpoint_state, save_checkpoint
from genpipe.config import Config
from genpipe.data import load_split
from genpipe.images import to_uint8
from genpipe.models import ImageSpec, get_family
from genpipe.runtime import isolated_rng
from genpipe.training.loop import SAMPLE_GRID, Checkpointer, LoopResult, TrainLogger, World, rng_state, train_loop


class LocalCheckpointer:
    """In-process runs write ``last.pt`` themselves, atomically."""

    def __init__(self, directory: Path):
        self.directory = directory

    def save(self, state: dict[str, Any] | None, step: int, final: bool, metrics: dict[str, float]) -> None:
        if state is not None:
            save_checkpoint(self.directory / LAST, state)


def build_model(cfg: Config, family: str, spec: ImageSpec) -> nn.Module:
    return get_family(family).build(cfg.family(family), spec)


def fit(
    cfg: Config,
    family: str,
    *,
    world: World,
    device: torch.device,
    logger: TrainLogger | None,
    checkpointer: Checkpointer,
    meta: dict[str, Any],
    resume: dict[str, Any] | None,
) -> LoopResult:
    """Load the train split, build the family's model, run the loop (on one rank)."""
    data = load_split(cfg.paths.data, "train")
    spec = ImageSpec(data.shape, data.num_classes)
    if get_family(family).trainer == "fit":  # by EM / in closed form, from its own seed: a fitted family
        # trains in the flow's process, whose other threads draw from the global RNG, so no reseeding
        with isolated_rng():
            model = build_model(cfg, family, spec)
        return fit_once(model, data, seed=cfg.seed, logger=logger, checkpointer=checkpointer, meta=meta)
    with isolated_rng(cfg.seed):  # the same initial weights on every rank and every run
        model = build_model(cfg, family, spec)
    return train_loop(
        model, data, cfg.train_for(family), seed=cfg.seed, device=device, world=world,
        logger=logger, checkpointer=checkpointer, meta=meta, resume=resume,
    )


def fit_once(
    model: nn.Module, data, *, seed: int, logger: TrainLogger | None, checkpointer: Checkpointer, meta: dict[str, Any]
) -> LoopResult:
    """Train a :class:`FittedModel` (e.g. the Gaussian mixture): one ``fit``, one checkpoint."""
    t0 = time.perf_counter()
    summary = model.fit(data.images, data.labels, seed)  # its own seed: not the global RNG other threads use
    seconds = time.perf_counter() - t0
    weights = model.state_dict()
    state = checkpoint_state(family=meta.get("family"), step=1, total_steps=1, seconds=seconds, model=weights,
                             ema={**{f"module.{k}": v for k, v in weights.items()}, "n_averaged": torch.tensor(1)},
                             optimizers={}, rngs=[rng_state(torch.device("cpu"))], meta=meta, world_size=1)
    if logger is not None:
        logger.log_metrics(1, {**summary, "fit_seconds": seconds})
        logger.log_samples(1, to_uint8(model.sample(SAMPLE_GRID, generator=torch.Generator().manual_seed(seed + 1_000_003))))
    checkpointer.save(state, 1, final=True, metrics=summary)
    return LoopResult(1, summary, seconds, len(data) / max(seconds, 1e-9))
