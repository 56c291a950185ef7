"""Checkpoints: one ``torch.save`` file read back with ``weights_only=True``.

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

from genpipe.errors import InputError
from genpipe.storage import atomic_write_bytes

FORMAT = 1
FINAL = "checkpoint.pt"
LAST = "last.pt"
CONFIG = "config.json"


def family_dir(models_dir: Path | str, family: str) -> Path:
    return Path(models_dir) / family


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
    return state


def load_model(path: Path | str, shape: tuple[int, int, int], num_classes: int, device: torch.device | str = "cpu"):
    """The EMA weights of a checkpoint in a model built from the config it was trained with
    (not today's params), in eval mode; returns (model, checkpoint state)."""
    from genpipe.config import Config
    from genpipe.models import ImageSpec, get_family

    state = load_checkpoint(path)
    trained = Config.model_validate(state["config"])
    family = state["family"]
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
