"""Where every stage's artifacts live and how they are read back: checkpoints, their config,
the evaluation records. The one place that knows ``models/<family>/checkpoint.pt``.

Checkpoints: one ``torch.save`` file read back with ``weights_only=True``.

Contents (plain tensors, dicts, lists, strings and numbers only)::

    format, family, step, total_steps
    model, ema                     state dicts (ema = AveragedModel: module.* + n_averaged)
    optimizers                     {phase: optimizer state dict}
    rng                            [per rank: {"torch": ByteTensor, "cuda": [ByteTensor]}]
    config                         the resolved config (also written as config.json beside it)
    meta                           mlflow_run_id, dataset_sha256, world_size, git_commit, ...

``models/<family>/last.pt`` is the latest checkpoint of a run in progress;
``models/<family>/checkpoint.pt`` appears only when a run has finished. Replicates trained
with the extra ``stability_seeds`` (only to measure the spread of FID across seeds) live in
``models/<family>/seeds/<seed>/`` with the same files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from genpipe.config import validate_config
from genpipe.data import read_card
from genpipe.errors import InputError
from genpipe.models import FAMILIES, ImageSpec, get_family
from genpipe.runtime import isolated_rng
from genpipe.storage import atomic_write_bytes

FORMAT = 1
FINAL = "checkpoint.pt"
LAST = "last.pt"
CONFIG = "config.json"


def family_dir(models_dir: Path | str, family: str) -> Path:
    return Path(models_dir) / family


def metrics_path(folder: Path | str, family: str) -> Path:
    """``metrics/<family>.json``: the evaluation's flat summary (DVC metrics)."""
    return Path(folder) / f"{family}.json"


def provenance_path(folder: Path | str, family: str) -> Path:
    """``metrics/<family>.provenance.json``: the full evaluation record (every number and its source)."""
    return Path(folder) / f"{family}.provenance.json"


def seed_dir(models_dir: Path | str, family: str, seed: int) -> Path:
    """Where a replicate trained with one of ``stability_seeds`` lives (same layout inside)."""
    return family_dir(models_dir, family) / "seeds" / str(int(seed))


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (a reader never sees half a checkpoint)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no checkpoint here")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line, not a traceback
        raise InputError(f"{path}: not a readable genpipe checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a genpipe checkpoint (format {FORMAT})")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise InputError(f"{path}: not a complete genpipe checkpoint ({key!r} missing or not a {kind.__name__})")
    if not isinstance(state["meta"].get("mlflow_run_id", ""), (str, type(None))):
        raise InputError(f"{path}: not a complete genpipe checkpoint (meta.mlflow_run_id is not a string)")
    return state


CHECKPOINT_KEYS = {"family": str, "step": int, "total_steps": int, "model": dict, "ema": dict, "config": dict, "meta": dict}


def trained_config(path: Path | str, state: dict[str, Any]):
    """The config a checkpoint was trained with, validated; an :class:`InputError` naming the file
    and the first bad key when today's genpipe cannot read it."""
    try:
        return validate_config(state["config"])
    except ValueError as exc:  # pydantic's ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: its config is not one this genpipe reads ({where + ': ' if where else ''}"
                         f"{first['msg']}); train it again") from None


def checkpoint_state(*, family: str | None, step: int, total_steps: int, seconds: float, model: dict[str, Any],
                     ema: dict[str, Any], optimizers: dict[str, Any], rngs: list[dict[str, Any]], meta: dict[str, Any],
                     world_size: int) -> dict[str, Any]:
    """The contents of a checkpoint (the layout above); ``meta["config"]`` becomes its ``config``."""
    return {
        "format": FORMAT,
        "family": family,
        "step": step,
        "total_steps": total_steps,
        "train_seconds": seconds,  # wall-clock of training up to this step, over resumes
        "model": model,
        "ema": ema,
        "optimizers": optimizers,
        "rng": rngs,
        "config": meta.get("config", {}),
        "meta": {k: v for k, v in meta.items() if k != "config"} | {"world_size": world_size},
    }


def trained_checkpoint(models_dir: Path | str, family: str, seed: int | None = None) -> Path:
    """``models/<family>/checkpoint.pt`` (or a ``stability_seeds`` replicate's), which must exist;
    the :class:`InputError` otherwise says which command makes it."""
    get_family(family)
    path = (family_dir(models_dir, family) if seed is None else seed_dir(models_dir, family, seed)) / FINAL
    if not path.exists():
        if seed is None:
            raise InputError(f"{path}: no trained model; run `genpipe train --family {family}` first")
        raise InputError(f"{path}: no {family} trained with seed {seed} (stability_seeds); "
                         f"run `genpipe train --family {family} --seed {seed}`")
    return path


def load_trained(cfg, family: str, device: torch.device | str = "cpu", seed: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained ``family`` (with a ``seed`` other than params' ``seed``, the replicate trained with
    it) as an eval-mode model with its EMA weights, and its checkpoint state."""
    path = trained_checkpoint(cfg.paths.models, family, None if seed is None or seed == cfg.seed else seed)
    card = read_card(cfg.paths.data)
    return load_model(path, card["shape"], card["num_classes"], device)


def load_model(path: Path | str, shape: tuple[int, int, int], num_classes: int, device: torch.device | str = "cpu"):
    """The EMA weights of a checkpoint in a model built from the config it was trained with
    (not today's params), in eval mode; returns (model, checkpoint state)."""
    state = load_checkpoint(path)
    trained = trained_config(path, state)
    family = state["family"]
    if family not in FAMILIES:
        raise InputError(f"{path}: its family {family!r} is not registered here")
    with isolated_rng():  # its initial weights, overwritten below, draw nothing from other threads' streams
        model = get_family(family).build(trained.family(family), ImageSpec(tuple(shape), num_classes))
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    try:
        model.load_state_dict(ema)
    except RuntimeError:  # the family's architecture changed since this checkpoint was written
        raise InputError(f"{path}: its weights do not fit today's {family} model; train it again") from None
    return model.to(device).eval(), state


def write_config_json(directory: Path | str, config: dict[str, Any]) -> None:
    """The resolved config beside the checkpoint, for people and diff tools."""
    atomic_write_bytes(Path(directory) / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
