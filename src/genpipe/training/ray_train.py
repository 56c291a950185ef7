"""The same training loop under Ray Train (V2): DDP on gloo (CPU) or NCCL (GPU).

The driver builds a ``TorchTrainer`` whose workers each run :func:`genpipe.training.fit`
with a :class:`RayWorld`; rank 0 logs to the MLflow run the driver created (Ray Train V2
has no MLflow callback) and reports checkpoints through ``ray.train.report``, which Ray
persists under ``train.storage_path``. :class:`CopyLatestCheckpoint` runs on the Train
controller and copies each persisted checkpoint to ``models/<family>/last.pt``, so both
runners leave the same files behind.

Resuming inside one ``fit`` (a worker died) comes from ``ray.train.get_checkpoint()``;
``genpipe train --resume`` hands the workers ``last.pt`` through the object store.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.experimental.tqdm_ray import tqdm as ray_tqdm
from ray.train.torch import TorchConfig, TorchTrainer
from torch import nn

from genpipe.artifacts import LAST, load_checkpoint, save_checkpoint
from genpipe.config import validate_config
from genpipe.errors import InputError
from genpipe.models import get_family
from genpipe.runtime import MilestoneLog, configure_cpu, ensure_ray, interactive, local_cluster, progress_bar
from genpipe.tracking import MlflowTrainLogger
from genpipe.training.fit import fit

CKPT_FILE = "checkpoint.pt"


class _RayBar:
    """tqdm_ray (renders on the driver) with tqdm's ``set_postfix``."""

    def __init__(self, total: int, initial: int, desc: str):
        self.desc = desc
        self.bar = ray_tqdm(total=total, desc=desc, unit="step")
        self.bar.update(initial)

    def set_postfix(self, **kw: Any) -> None:
        self.bar.set_description(self.desc + " " + " ".join(f"{k}={v}" for k, v in kw.items()))

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class RayWorld:
    """One Ray Train worker's view: its rank, DDP wrapping, collectives; its progress shows on
    the driver as a bar when the driver is :func:`interactive`, else as milestone lines."""

    def __init__(self, interactive: bool = False, unused_parameters: bool = False) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.interactive = interactive
        self.unused_parameters = unused_parameters  # the family's Family.unused_parameters

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if self.world_size == 1:
            return module.to(device)
        return ray.train.torch.prepare_model(
            module, move_to_device=device, parallel_strategy_kwargs={"find_unused_parameters": self.unused_parameters}
        )

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        device = ray.train.torch.get_device() if dist.get_backend() == "nccl" else torch.device("cpu")
        t = t.to(device)
        dist.all_reduce(t)
        return (t / self.world_size).cpu()

    def progress(self, total: int, initial: int, desc: str) -> Any:
        if self.rank != 0:  # one bar per family: rank 0's
            return progress_bar(total, desc, "step", initial, enabled=False)
        return _RayBar(total, initial, desc) if self.interactive else MilestoneLog(total, initial, desc)


class RayCheckpointer:
    """Rank 0 writes its state to a temp folder; every rank calls ``ray.train.report``."""

    def save(self, state: dict[str, Any] | None, step: int, final: bool, metrics: dict[str, float]) -> None:
        metrics = {"step": step, **metrics}
        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp) / CKPT_FILE, state)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


class CopyLatestCheckpoint(UserCallback):
    """On the Train controller: copy each persisted checkpoint to ``<family_dir>/last.pt``."""

    def __init__(self, family_dir: str):
        self.family_dir = family_dir

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            src = Path(d) / CKPT_FILE
            tmp = Path(self.family_dir) / f".{LAST}.copy"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp)
            os.replace(tmp, Path(self.family_dir) / LAST)


def _worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    if os.path.isdir(config["cwd"]):  # relative paths in params.yaml mean the driver's folder
        os.chdir(config["cwd"])
    tree = config["config"]  # its S3 secrets come masked (Config.to_dict): the worker's own AWS_* variables or role serve
    cfg = validate_config({**tree, "storage": {**tree["storage"], "access_key_id": None, "secret_access_key": None}})
    _quiet_worker_logs()
    world = RayWorld(interactive=config.get("interactive", False),
                     unused_parameters=get_family(config["family"]).unused_parameters)
    configure_cpu(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    resume = None
    if (ckpt := ray.train.get_checkpoint()) is not None:  # restarted after a failure
        with ckpt.as_directory() as d:
            resume = load_checkpoint(Path(d) / CKPT_FILE)
    elif config.get("resume_ref") is not None:
        resume = ray.get(config["resume_ref"])
    logger = (MlflowTrainLogger(config["run_id"], config["tracking_uri"], config.get("logged_until"))
              if world.rank == 0 else None)
    fit(
        cfg,
        config["family"],
        world=world,
        device=ray.train.torch.get_device(),
        logger=logger,
        checkpointer=RayCheckpointer(),
        meta=config["meta"],
        resume=resume,
    )


def _quiet_worker_logs() -> None:
    """Ray Train 2.60 logs every ``ray.train.report`` at INFO ("Reporting training result ...")
    under a logger named by its file path, which ``LoggingConfig``'s filter (``ray.train.*``)
    does not match: that one logger goes to WARNING on the worker. And it logs the traceback of
    whatever the training function raised, bad input (a diverged loss, a corrupt shard) too:
    for :class:`InputError` the driver's one line is the whole story, so that record is dropped."""
    try:  # private modules: imported here so that another Ray layout only skips this
        from ray.train.v2._internal import util
        from ray.train.v2._internal.execution import context
    except ImportError:  # another layout: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(util.__name__).addFilter(_not_an_input_error_traceback)


def _not_an_input_error_traceback(record: logging.LogRecord) -> bool:
    """False for Ray Train's "Error in training function" record when the error is an InputError."""
    text = record.getMessage()
    last = text.rstrip().rsplit("\n", 1)[-1]
    return not (text.startswith("Error in training function") and last.startswith(f"{InputError.__module__}.InputError:"))


class LeanTorchTrainer(TorchTrainer):
    """``TorchTrainer`` without the per-fit DatasetManager and (on a local cluster)
    PlacementGroupCleaner actors, which genpipe never needs (docs/benchmarks.md, "Lighter Ray
    Train fits"). Ray has no switch, so this filters the private ``_create_default_callbacks``
    by class name; tests/training/test_ray.py fails if either starts.
    """

    def _create_default_callbacks(self):
        drop = set() if self.datasets else {"DatasetsCallback"}
        if local_cluster():
            drop.add("PlacementGroupCleanerCallback")
        return [c for c in super()._create_default_callbacks() if type(c).__name__ not in drop]


def train_with_ray(
    cfg, family: str, *, run_id: str, tracking_uri: str, meta: dict[str, Any], family_dir: Path,
    run_name: str, resume: dict[str, Any] | None, logged_until: int | None = None,
) -> ray.train.Result:
    """Run :func:`_worker` on ``train.num_workers`` Ray Train workers; the Ray ``Result``."""
    ensure_ray()
    tc = cfg.train
    storage = Path(tc.storage_path).resolve().as_posix() if "://" not in tc.storage_path else tc.storage_path
    trainer = LeanTorchTrainer(
        _worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "cwd": os.getcwd(),
            "family": family,
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "meta": meta,
            "resume_ref": ray.put(resume) if resume is not None else None,
            "logged_until": logged_until,  # a resumed run's steps MLflow has already
            "interactive": interactive(),  # the driver's terminal, not the worker's
        },
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # not a line per checkpoint and worker start
            callbacks=[CopyLatestCheckpoint(str(family_dir.resolve()))],
        ),
    )
    try:
        return trainer.fit()
    except ray.train.WorkerGroupError as exc:  # bad input on a worker stays one clear line
        for failure in exc.worker_failures.values():
            cause = getattr(failure, "cause", failure)
            if isinstance(cause, InputError) or isinstance(failure, InputError):
                raise InputError(str(cause)) from None
        raise
