"""The train stage: one family, in-process or under Ray Train, tracked as one MLflow run.

``train_family`` is what ``genpipe train`` and the pipeline's train task call. It checks
the inputs, opens the MLflow run ``<family>-<dataset>`` (nested under a parent when the
pipeline runs it), runs :func:`fit` on one or many ranks, then promotes
``models/<family>/last.pt`` to ``checkpoint.pt`` with ``config.json`` beside it and logs
the checkpoint as an artifact.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genpipe import tracking
from genpipe.artifacts import CONFIG, FINAL, LAST, family_dir, load_checkpoint, seed_dir, trained_config, write_config_json
from genpipe.config import Config
from genpipe.data import ImageSplit, load_split, read_card
from genpipe.data.stream import ShardedDataset, ShardPlan, choose_data_path
from genpipe.errors import InputError
from genpipe.images import to_model_range
from genpipe.models import ImageSpec, get_family
from genpipe.runtime import configure_cpu, isolated_rng, pick_device
from genpipe.training.fit import LocalCheckpointer, build_model, fit, open_training_data
from genpipe.training.ray_train import train_with_ray
from genpipe.training.world import LocalWorld

# sections whose change makes a checkpoint belong to a different experiment
RESUME_SECTIONS = ("seed", "data", "train")


@dataclass(frozen=True)
class TrainOutcome:
    family: str
    run_id: str
    checkpoint: Path
    step: int
    losses: dict[str, float]
    seconds: float


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if (d := _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)) is not None:
                return d
        return None
    return None if a == b else f"{path}: {a!r} then, {b!r} now"


def _resume_state(cfg: Config, family: str, out_dir: Path) -> dict[str, Any]:
    state = load_checkpoint(out_dir / LAST)
    trained_config(out_dir / LAST, state)  # readable by today's genpipe, or one line saying not
    if state["family"] != family or not state["meta"].get("mlflow_run_id"):
        raise InputError(f"--resume: {out_dir / LAST} is not a {family} run to continue")
    now = cfg.to_dict()
    then = state["config"]
    for section in (*RESUME_SECTIONS, family):
        if (diff := _first_difference(then.get(section), now.get(section), section)) is not None:
            raise InputError(f"--resume: {out_dir / LAST} was trained with another config ({diff})")
    return state


def _check_inputs(cfg: Config, family: str, card: dict) -> None:
    tc = cfg.train_for(family)
    world = tc.num_workers if tc.runner == "ray" else 1
    if card["counts"]["train"] // world < tc.batch_size:
        raise InputError(
            f"train.batch_size (or {family}.batch_size): {tc.batch_size} per worker x {world} workers exceeds the "
            f"{card['counts']['train']} training images in {cfg.paths.data}"
        )
    if cfg.family(family).conditional and card.get("labelled") is False:  # a folder of images without classes
        raise InputError(f"{family}.conditional: the dataset in {cfg.paths.data} has no labels "
                         f"({card.get('description', card['source'])}); train it unconditionally, or sort the "
                         "images into one sub-folder per class and prepare again")
    if tc.runner == "local":
        pick_device(tc.device)  # fails now if cuda is asked for and absent
    if tc.data_uri is not None:  # the workers' copy: reachable, and the same dataset
        open_training_data(cfg, family, card["sha256"])
    if choose_data_path(tc, card, get_family(family).trainer == "fit") == "memory":
        _preflight(cfg, family, load_split(cfg.paths.data, "train"))  # the shards' hashes and labels too
        return
    dataset = ShardedDataset(cfg.paths.data, cfg.storage)  # streamed: checked without holding the split
    dataset.verify()
    ShardPlan.build(dataset, tc, world, cfg.seed)  # every worker gets shards and whole batches
    _preflight(cfg, family, dataset.head("train", 2))


def _preflight(cfg: Config, family: str, data: ImageSplit) -> None:
    """Build the family's model for this data and, for a family trained by steps, take each
    phase's loss on two images: settings the data cannot take fail here, before a run exists."""
    spec = ImageSpec(data.shape, data.num_classes)
    with isolated_rng():
        model = build_model(cfg, family, spec)
    if get_family(family).trainer == "fit":
        return
    x, y = to_model_range(data.images[:2]), data.labels[:2]
    try:
        with isolated_rng(), torch.no_grad():
            for phase in model.optimizer_groups():
                model.training_losses(x, y, phase)
    except (RuntimeError, ValueError, IndexError) as exc:  # shapes that do not fit, from torch
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{family}: its settings do not fit {spec.shape[1]}x{spec.shape[2]} images of "
                         f"{cfg.paths.data} ({first})") from None


def train_family(
    cfg: Config, family: str, *, resume: bool = False, parent_run_id: str | None = None, seed: int | None = None
) -> TrainOutcome:
    """Train ``family`` on the prepared dataset; returns where the checkpoint went.

    ``seed`` other than ``cfg.seed`` (one of ``stability_seeds``) trains a replicate with
    that seed into ``models/<family>/seeds/<seed>/``, everything else the same.
    """
    get_family(family)
    card = read_card(cfg.paths.data)
    _check_inputs(cfg, family, card)
    replicate = seed is not None and seed != cfg.seed
    if replicate:
        if seed not in cfg.stability_seeds:
            raise InputError(f"--seed {seed}: not one of stability_seeds {list(cfg.stability_seeds)} (nor seed {cfg.seed})")
        cfg = cfg.model_copy(update={"seed": seed, "stability_seeds": ()})  # a config of its own, still valid
    out_dir = seed_dir(cfg.paths.models, family, seed) if replicate else family_dir(cfg.paths.models, family)
    resume_state = _resume_state(cfg, family, out_dir) if resume else None
    uri = tracking.tracking_uri()
    run_name = f"{family}-{card['source']}" + (f"-seed{seed}" if replicate else "")
    logged_until = None  # a fresh run has logged nothing
    if resume_state is not None:
        run_id = resume_state["meta"]["mlflow_run_id"]
        logged_until = tracking.last_logged_step(run_id, uri)
        tracking.client(uri).update_run(run_id, status="RUNNING")
    else:
        tags = {"genpipe.family": family, "genpipe.dataset_sha256": card["sha256"], "genpipe.git_commit": tracking.git_commit(),
                "genpipe.role": "stability-replicate" if replicate else "model"}
        run_id = tracking.start_run(cfg.tracking.experiment, run_name, run_params(cfg, family), tags, parent_run_id, uri)
    meta = {
        "family": family,
        "config": cfg.to_dict(),
        "mlflow_run_id": run_id,
        "dataset_sha256": card["sha256"],
        "git_commit": tracking.git_commit(),
    }
    t0 = time.perf_counter()
    ok = False
    try:
        if resume_state is None:
            tracking.log_dataset(run_id, card, cfg.paths.data, uri=uri)
        step, losses = run_training(cfg, family, out_dir=out_dir, meta=meta, resume=resume_state, run_id=run_id,
                                    uri=uri, run_name=f"{run_name}-{run_id[:8]}", logged_until=logged_until)
        final, state = _promote(out_dir, cfg, step)
        seconds = time.perf_counter() - t0
        steps_batch = cfg.train_for(family).batch_size if get_family(family).trainer != "fit" else None
        tracking.log_params(run_id, ran_params(state, steps_batch), uri=uri)
        # the loop's time over every segment of the run (a resumed run's, too), as evaluation reports it
        tracking.log_metrics(run_id, {"train_seconds": state.get("train_seconds", seconds)}, step=step, uri=uri)
        tracking.log_artifact(run_id, final, "checkpoint", uri=uri)
        tracking.log_artifact(run_id, out_dir / CONFIG, "checkpoint", uri=uri)
        ok = True
    except InputError as exc:  # found only once training ran: the run says why, and the line says where it is
        tracking.set_tags(run_id, {"genpipe.failure": str(exc)[:500]}, uri=uri)
        raise InputError(f"{exc} (MLflow run {run_id} marked FAILED)") from None
    finally:
        tracking.end_run(run_id, ok=ok, uri=uri)
    return TrainOutcome(family, run_id, final, step, losses, seconds)


def run_training(cfg: Config, family: str, *, out_dir: Path, meta: dict[str, Any], resume: dict[str, Any] | None,
                 run_id: str, uri: str, run_name: str, logged_until: int | None = None) -> tuple[int, dict[str, float]]:
    """Train in this process (the local runner; a fitted family, whose EM is not data-parallel) or
    under Ray Train, leaving ``out_dir/last.pt``; the final step and its losses. The loop logs
    its losses and sample grids to the MLflow run ``run_id``; nothing else here tracks."""
    if cfg.train.runner == "local" or get_family(family).trainer == "fit":
        # train.threads is the local runner's; a fitted family under Ray fits in the caller's
        # process (the flow's, with pipeline.threads), whose threads it leaves alone
        configure_cpu(cfg.train.threads if cfg.train.runner == "local" else 0)
        result = fit(cfg, family, world=LocalWorld(), device=pick_device(cfg.train.device),
                     logger=tracking.MlflowTrainLogger(run_id, uri, logged_until), checkpointer=LocalCheckpointer(out_dir),
                     meta=meta, resume=resume)
        return result.step, result.losses
    ray_result = train_with_ray(cfg, family, run_id=run_id, tracking_uri=uri, meta=meta, family_dir=out_dir,
                                run_name=run_name, resume=resume, logged_until=logged_until)
    return int(ray_result.metrics["step"]), {k: v for k, v in ray_result.metrics.items() if k != "step"}


def run_params(cfg: Config, family: str) -> dict[str, str]:
    """The MLflow params of a training run: the settings in effect, once each — ``train.*`` with
    the family's own steps / batch size / precision folded in (a fitted family has no steps),
    the family's other settings, the data and the seed; unset values left out."""
    tree = cfg.to_dict()
    spec = get_family(family)
    own = {k: v for k, v in tree[family].items() if k not in ("steps", "batch_size", "precision")}
    chosen = {"profile": cfg.profile, "seed": cfg.seed, "data": tree["data"], family: own}
    if spec.trainer != "fit":
        chosen["train"] = cfg.train_for(family).model_dump(mode="json")
    return tracking.flatten_params(chosen)


def ran_params(state: dict[str, Any], batch_size: int | None) -> dict[str, str]:
    """What the finished run ran on, from its checkpoint: ``ran.device``, ``ran.precision``,
    ``ran.world_size`` (workers), ``ran.data_path`` (memory or shards) and, for a family trained by
    steps of ``batch_size`` per worker, ``ran.global_batch_size``."""
    meta = state.get("meta", {})
    world = int(meta.get("world_size", 1))
    out = {"ran.device": meta.get("device", "cpu"), "ran.world_size": str(world)}
    if meta.get("precision"):
        out["ran.precision"] = meta["precision"]
    if meta.get("data_path"):
        out["ran.data_path"] = meta["data_path"]
    if batch_size is not None:
        out["ran.global_batch_size"] = str(batch_size * world)
    return out


def _promote(out_dir: Path, cfg: Config, step: int) -> tuple[Path, dict[str, Any]]:
    """``last.pt`` of a finished run becomes ``checkpoint.pt``, with ``config.json`` beside it;
    the path and the state it holds."""
    last, final = out_dir / LAST, out_dir / FINAL
    state = load_checkpoint(last)
    if state["step"] != state["total_steps"] or step != state["total_steps"]:
        raise RuntimeError(f"{last}: holds step {state['step']} of {state['total_steps']}, the run reported {step}")
    write_config_json(out_dir, cfg.to_dict())
    os.replace(last, final)
    return final, state
