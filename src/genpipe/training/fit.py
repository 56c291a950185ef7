"""One family's training on one rank, whoever runs it: the train split, the family's model, and
the loop (or, for a fitted family, its one ``fit``). The in-process runner and every Ray Train
worker call :func:`fit`; it reports through the logger and checkpointer it is given.

The train split comes whole into memory or, past ``train.memory_limit_mb`` (or with
``train.data_path: shards``), as this rank's stream of its own shards (:mod:`genpipe.data.stream`),
from ``paths.data`` or the copy at ``train.data_uri``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genpipe.artifacts import LAST, checkpoint_state, save_checkpoint
from genpipe.config import Config
from genpipe.data import ImageSplit, load_split, read_card
from genpipe.data.stream import ShardedDataset, ShardPlan, ShardStream, choose_data_path
from genpipe.errors import InputError
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
    """Load (or stream) the train split, build the family's model, run the loop (on one rank)."""
    data = train_data(cfg, family, world, meta.get("dataset_sha256"))
    card = data.card if isinstance(data, ImageSplit) else data.dataset.card
    spec = ImageSpec(tuple(card["shape"]), int(card["num_classes"]))
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


def open_training_data(cfg: Config, family: str, expected_sha256: str | None = None) -> ShardedDataset:
    """The prepared dataset training reads: ``train.data_uri`` (a copy of ``paths.data`` that every
    node can reach, checked to be the same dataset) or ``paths.data``."""
    tc = cfg.train_for(family)
    dataset = ShardedDataset(tc.data_uri or cfg.paths.data, cfg.storage)
    if tc.data_uri is not None and expected_sha256 is not None and dataset.card["sha256"] != expected_sha256:
        raise InputError(f"train.data_uri: {dataset.uri} holds dataset {dataset.card['sha256'][:12]}, not "
                         f"{expected_sha256[:12]} of {cfg.paths.data}; copy the prepared dataset there again")
    return dataset


def train_data(cfg: Config, family: str, world: World, expected_sha256: str | None) -> ImageSplit | ShardStream:
    """This rank's train data: the split in memory (as it always was, from ``paths.data``), or its stream."""
    tc = cfg.train_for(family)
    fitted = get_family(family).trainer == "fit"
    if tc.data_uri is None and choose_data_path(tc, read_card(cfg.paths.data), fitted) == "memory":
        return load_split(cfg.paths.data, "train")
    dataset = open_training_data(cfg, family, expected_sha256)
    if choose_data_path(tc, dataset.card, fitted) == "memory":
        return dataset.load_split("train")
    plan = ShardPlan.build(dataset, tc, world.world_size, cfg.seed)
    return ShardStream(dataset, plan, world.rank, tc.prefetch_shards)


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
