"""The single-device training loop, shared by every family and every runner.

Written for one device (torchtitan's rule); data parallelism comes from outside through
a :class:`World` (``LocalWorld`` in-process, Ray Train's DDP in ``ray_train``). The loop
itself never imports MLflow or Ray: it reports through a :class:`TrainLogger` and a
:class:`Checkpointer`, both given by the caller.

Determinism: batches are a pure function of (seed, step, rank), like DistributedSampler
with drop_last, on either data path (:class:`InMemoryBatches` here, or
:class:`genpipe.data.stream.ShardStream`); model noise comes from the global torch RNG seeded
with seed + rank and saved in each checkpoint, so a resumed run continues the same random stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from genpipe.artifacts import checkpoint_state
from genpipe.config import TrainConfig
from genpipe.data import ImageSplit
from genpipe.errors import InputError
from genpipe.images import to_model_range, to_uint8
from genpipe.training.ema import make_ema

SAMPLE_GRID = 64  # images in the sample grids logged during training


class World(Protocol):
    """The data-parallel world the loop runs in."""

    rank: int
    world_size: int

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module: ...  # DDP or not
    def all_gather(self, obj: Any) -> list[Any]: ...
    def mean(self, t: torch.Tensor) -> torch.Tensor: ...
    def progress(self, total: int, initial: int, desc: str) -> Any: ...


class TrainLogger(Protocol):
    """Where rank 0 sends losses and sample images (MLflow in practice)."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_samples(self, step: int, images: torch.Tensor) -> None: ...


class Checkpointer(Protocol):
    """Called on every rank at each checkpoint; ``state`` is None except on rank 0."""

    def save(self, state: dict[str, Any] | None, step: int, final: bool, metrics: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class LoopResult:
    step: int
    losses: dict[str, float]  # means over the last logging window, all ranks
    seconds: float  # wall-clock of this call (not counting earlier, resumed segments)
    images_per_second: float


class _TrainingStep(nn.Module):
    """Routes ``forward`` to ``training_losses`` so DDP's gradient hooks see the step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor, phase: str) -> dict[str, torch.Tensor]:
        return self.model.training_losses(x, labels, phase)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(n: int, batch_size: int, seed: int, step: int, rank: int, world_size: int) -> torch.Tensor:
    """Indices of the batch at ``step`` for ``rank``: epoch-wise shuffles, sharded by rank."""
    per_rank = n // world_size
    per_epoch = per_rank // batch_size
    if per_epoch == 0:
        raise ValueError(f"train.batch_size={batch_size} x {world_size} workers exceeds the {n} training images")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    mine = perm[rank : per_rank * world_size : world_size]
    return mine[k * batch_size : (k + 1) * batch_size]


@runtime_checkable
class BatchSource(Protocol):
    """Where a rank's batches come from: images (B, C, H, W) uint8 and labels (B,) int64 for the
    steps ``start`` to ``stop``, each a pure function of (seed, step, rank, world size)."""

    kind: str  # "memory" or "shards": what the checkpoint's meta records as data_path

    def batches(self, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def report(self) -> dict[str, Any] | None: ...  # what it read, for the checkpoint; None: nothing to say


class InMemoryBatches:
    """The split held whole (one tensor), batches drawn by :func:`batch_indices`."""

    kind = "memory"

    def __init__(self, data: ImageSplit, batch_size: int, seed: int, rank: int, world_size: int):
        self.data, self.batch_size, self.seed, self.rank, self.world_size = data, batch_size, seed, rank, world_size

    def batches(self, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start, stop):
            idx = batch_indices(len(self.data), self.batch_size, self.seed, step, self.rank, self.world_size)
            yield self.data.images[idx], self.data.labels[idx]

    def report(self) -> None:
        return None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU of compute capability 8 or
    more (Ampere on; torch's own check, without emulation), a CPU with AVX512-BF16 or AMX-BF16
    (elsewhere torch emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    caps = torch.cpu.get_capabilities()
    return device.type == "cpu" and bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` (or a family's ``precision``) on ``device``: "bf16" or "fp32";
    ``auto`` is bf16 autocast where the device computes bf16 natively."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def _autocast(device: torch.device, precision: str):
    """bf16 autocast (matmuls and convolutions in bf16, reductions and losses in fp32; the
    weights, gradients and optimizer state stay fp32) or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


class _Window:
    """Loss sums over a logging window, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, values: dict[str, torch.Tensor], prefix: str) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[prefix + k] = self.sums[prefix + k] + v if prefix + k in self.sums else v

    def flush(self, world: World, images_per_step: int) -> tuple[dict[str, float], float]:
        """Means over the window and all ranks, and images per second; then reset."""
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] for k in keys]).double().cpu() / max(self.steps, 1)
        means = dict(zip(keys, world.mean(local).tolist()))
        ips = self.steps * images_per_step / max(time.perf_counter() - self.start, 1e-9)
        self.__init__()
        return means, ips


def _phase_step(step_module: nn.Module, opt: torch.optim.Optimizer, params: list, x: torch.Tensor,
                y: torch.Tensor, phase: str, cfg: TrainConfig, device: torch.device,
                precision: str) -> dict[str, torch.Tensor]:
    """One optimizer step of one phase; returns its losses and the pre-clip gradient norm. A
    non-finite gradient norm (the same on every rank: it is taken after DDP's all-reduce) raises
    :class:`NonFiniteTraining` before the step, so the weights stay the last finite ones."""
    with _autocast(device, precision):
        losses = step_module(x, y, phase)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if not torch.isfinite(grad_norm):
        raise NonFiniteTraining(float(losses["loss"].detach()), float(grad_norm))
    opt.step()
    return {**losses, "grad_norm": grad_norm}


class NonFiniteTraining(Exception):
    """A phase's gradient norm came out inf or nan (the loss with it, usually)."""

    def __init__(self, loss: float, grad_norm: float):
        super().__init__(f"loss {loss:.4g}, gradient norm {grad_norm:.4g}")
        self.loss, self.grad_norm = loss, grad_norm


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_loop(
    model: nn.Module,
    data: ImageSplit | BatchSource,  # the split in memory, or a rank's stream of batches
    cfg: TrainConfig,
    *,
    seed: int,  # base seed; rank r uses seed + r for model noise
    device: torch.device,  # where this rank computes
    world: World,  # LocalWorld or the Ray Train world
    logger: TrainLogger | None,  # rank 0 only; None elsewhere
    checkpointer: Checkpointer,  # every rank
    meta: dict[str, Any],  # saved in checkpoints: family, config, mlflow run id, ...
    resume: dict[str, Any] | None = None,  # a checkpoint to continue from
) -> LoopResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps on ``data``; returns the last losses."""
    model.to(device)
    groups = model.optimizer_groups()
    optimizers = {
        phase: torch.optim.AdamW(g.params, lr=g.lr, betas=g.betas, weight_decay=g.weight_decay)
        for phase, g in groups.items()
    }
    ema = make_ema(model, cfg.ema_decay)
    precision = resolve_precision(cfg.precision, device)
    source = data if isinstance(data, BatchSource) else InMemoryBatches(data, cfg.batch_size, seed, world.rank,
                                                                         world.world_size)
    # what the steps ran on, kept in every checkpoint
    meta = {**meta, "precision": precision, "device": device.type, "data_path": source.kind}
    step_module = world.wrap(_TrainingStep(model), device)
    torch.manual_seed(seed + world.rank)
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        for phase, opt in optimizers.items():
            opt.load_state_dict(resume["optimizers"][phase])
        if world.rank < len(resume["rng"]):  # same world size: the same random stream goes on
            set_rng_state(resume["rng"][world.rank], device)
        step = int(resume["step"])

    images_per_step = cfg.batch_size * world.world_size
    window, last, first_step, t0 = _Window(), {}, step, time.perf_counter()
    saved = step if resume is not None else 0  # the step of the newest checkpoint this run can go back to
    seconds_before = float(resume.get("train_seconds", 0.0)) if resume is not None else 0.0
    bar = world.progress(cfg.steps, step, meta.get("family", "train"))
    sample_seed = seed + 1_000_003  # the same noise at every step: grids are comparable
    with closing(source.batches(step, cfg.steps)) as batches:  # a stream's reader thread ends with the loop
        while step < cfg.steps:
            images, labels = next(batches)
            x = to_model_range(images).to(device, non_blocking=True)  # (B, C, H, W) in [-1, 1]
            y = labels.to(device, non_blocking=True)  # (B,)
            factor = lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_min_ratio)
            for phase, opt in optimizers.items():
                for pg in opt.param_groups:
                    pg["lr"] = groups[phase].lr * factor
                try:
                    losses = _phase_step(step_module, opt, groups[phase].params, x, y, phase, cfg, device, precision)
                except NonFiniteTraining as bad:
                    kept = f"the last checkpoint (step {saved}) is kept" if saved else "no checkpoint was written"
                    raise InputError(f"{meta.get('family', 'train')}: training diverged at step {step + 1} "
                                     f"({'' if len(optimizers) == 1 else phase + ' phase, '}{bad}); {kept}: "
                                     "lower the learning rate or check the settings") from None
                window.add(losses, "" if len(optimizers) == 1 else f"{phase}/")
            ema.update_parameters(model)
            step += 1
            window.steps += 1
            bar.update(1)
            final = step == cfg.steps

            if step % cfg.log_every == 0 or final:
                last, ips = window.flush(world, images_per_step)
                if logger is not None:
                    logger.log_metrics(step, {**last, "lr": groups[next(iter(groups))].lr * factor, "images_per_s": ips})
                bar.set_postfix(loss=f"{last.get('loss', next(iter(last.values()))):.4f}", img_s=f"{ips:.0f}")
            if logger is not None and (step % cfg.sample_every == 0 or final):
                ema.module.eval()
                imgs = ema.module.sample(SAMPLE_GRID, generator=torch.Generator().manual_seed(sample_seed))
                ema.module.train()
                logger.log_samples(step, to_uint8(imgs.float().cpu()))
            if step % cfg.checkpoint_every == 0 or final:
                gathered = world.all_gather((rng_state(device), source.report()))
                rngs, reads = [g[0] for g in gathered], [g[1] for g in gathered]
                elapsed = seconds_before + time.perf_counter() - t0
                state = (checkpoint_state(family=meta.get("family"), step=step, total_steps=cfg.steps, seconds=elapsed,
                                          model=model.state_dict(), ema=ema.state_dict(),
                                          optimizers={p: o.state_dict() for p, o in optimizers.items()}, rngs=rngs,
                                          meta={**meta, "data_reads": reads} if any(reads) else meta,
                                          world_size=world.world_size)
                         if world.rank == 0 else None)
                checkpointer.save(state, step, final=final, metrics=last)
                saved = step
    bar.close()
    seconds = time.perf_counter() - t0
    return LoopResult(step, last, seconds, (step - first_step) * images_per_step / max(seconds, 1e-9))
