"""The pipeline's tasks: prepare, train, evaluate, generate, tracking and DVC bookkeeping."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun

from genpipe import tracking
from genpipe.config import Config, load_config
from genpipe.data import prepare_dataset, read_card
from genpipe.errors import InputError
from genpipe.evaluation.stage import evaluate_family
from genpipe.evaluation.features import train_feature_net
from genpipe.evaluation.report import write_report
from genpipe.generation import generate_images
from genpipe.results import EvaluationResult
from genpipe.tracking.dvc import commit_pipeline
from genpipe.training import train_family

RETRIES = 1  # default; the pipeline flow sets pipeline.task_retries from params.yaml
RETRY_DELAY = 10  # seconds


def retry_unless_input_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's ``retry_condition_fn``: retry what can recover (a lost Ray worker, an S3 hiccup),
    never bad user input (:class:`InputError`), which fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), InputError)


# the options of the tasks a retry can help; `with_options(retries=...)` keeps the condition
RETRYING: dict[str, Any] = {"retries": RETRIES, "retry_delay_seconds": RETRY_DELAY,
                            "retry_condition_fn": retry_unless_input_error}


def _cfg(params: str, overrides: list[str] | None) -> Config:
    return load_config(params, overrides or [])


@task(name="start-pipeline-run", task_run_name="start-pipeline-run")
def start_pipeline_run(params: str, overrides: list[str] | None) -> str:
    cfg = _cfg(params, overrides)
    return tracking.start_pipeline_run(cfg, read_card(cfg.paths.data))


@task(name="prepare", task_run_name="prepare")
def prepare(params: str, overrides: list[str] | None) -> dict[str, Any]:
    card = prepare_dataset(_cfg(params, overrides))
    return {k: card[k] for k in ("source", "shape", "counts", "sha256")}


@task(name="train", task_run_name="train-{family}-seed{seed}", **RETRYING)
def train(params: str, overrides: list[str] | None, family: str, parent_run_id: str | None,
          seed: int | None = None) -> dict[str, Any]:
    out = train_family(_cfg(params, overrides), family, parent_run_id=parent_run_id, seed=seed)
    return {**asdict(out), "checkpoint": str(out.checkpoint)}


@task(name="features", task_run_name="features", **RETRYING)
def features(params: str, overrides: list[str] | None, parent_run_id: str | None = None) -> dict[str, Any]:
    return train_feature_net(_cfg(params, overrides), progress=False, parent_run_id=parent_run_id)


@task(name="report", task_run_name="report")
def report(params: str, overrides: list[str] | None) -> dict[str, Any]:
    out = write_report(_cfg(params, overrides))
    return {k: out[k] for k in ("markdown", "html", "verdict")}


@task(name="evaluate", task_run_name="evaluate-{family}")
def evaluate(params: str, overrides: list[str] | None, family: str) -> EvaluationResult:
    return evaluate_family(_cfg(params, overrides), family)


@task(name="generate", task_run_name="generate-{family}", **RETRYING)
def generate(
    params: str, overrides: list[str] | None, family: str | None, run_id: str | None = None, n: int | None = None,
    out: str | None = None, seed: int | None = None, labels: str | None = None,
) -> dict[str, Any]:
    res = generate_images(_cfg(params, overrides), family, run_id=run_id, n=n, out=out, seed=seed, labels=labels)
    return asdict(res)


@task(name="finish-pipeline-run", task_run_name="finish-pipeline-run")
def finish_pipeline_run(run_id: str, metrics: dict[str, EvaluationResult], ok: bool, report_files: list[str] | None = None) -> None:
    tracking.finish_pipeline_run(run_id, metrics, ok, report_files)


@task(name="record-with-dvc", task_run_name="record-with-dvc")
def record_with_dvc(repo: str = ".") -> list[str]:
    return commit_pipeline(Path(repo))
