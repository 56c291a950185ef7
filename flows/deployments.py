"""Deployments of both flows, declared in code from params.yaml.

- ``genpipe-pipeline/scheduled``: the training pipeline on ``pipeline.schedule`` (cron).
- ``genpipe-batch-generation/on-demand``: unscheduled; triggered with parameters.

``python -m flows.deployments serve`` registers both with the Prefect API
(``PREFECT_API_URL``) and runs their flow runs in this process until stopped;
``python -m flows.deployments register`` only registers them (for a look in the UI, or
for tests).

``--interval SECONDS`` replaces the cron with a run every SECONDS seconds, the first one
SECONDS after registering: a quick check that a server's scheduler fires and that this
process picks the runs up (``serve --interval 600``). The scheduled deployment allows one run
at a time: a run that comes due while another is still running is cancelled (Prefect's
CANCEL_NEW), since both would write the same outputs. Serving (or registering) again without
``--interval`` puts the cron back; stopping ``serve`` pauses the deployments until it serves
them again.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import RunnerDeployment

from flows import command_line
from flows.generate import batch_generation
from flows.pipeline import pipeline
from genpipe.cli import OneLineParser
from genpipe.config import Config, load_config

PIPELINE = "scheduled"
GENERATION = "on-demand"


def pipeline_schedule(cfg: Config, interval: float | None = None) -> CronSchedule | IntervalSchedule:
    """The cron of ``pipeline.schedule``, or every ``interval`` seconds when one is given."""
    if interval is None:
        return CronSchedule(cron=cfg.pipeline.schedule, timezone=cfg.pipeline.timezone)
    if interval <= 0:
        raise ValueError(f"interval: must be a positive number of seconds (got {interval})")
    return IntervalSchedule(interval=timedelta(seconds=interval), timezone=cfg.pipeline.timezone)


def build_deployments(params: str = "params.yaml", interval: float | None = None) -> list[RunnerDeployment]:
    """Both deployments; ``interval`` (seconds) replaces the pipeline's cron (see the module docstring)."""
    cfg = load_config(params)
    scheduled = pipeline.to_deployment(
        name=PIPELINE,
        schedules=[pipeline_schedule(cfg, interval)],
        # one pipeline at a time: a run that comes due while another still runs is cancelled, not
        # started beside it on the same outputs (the next one on the schedule picks up the changes)
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        parameters={"params": params},
        tags=["genpipe", "training"],
        description="prepare -> train every family -> evaluate -> generate, on a schedule",
    )
    on_demand = batch_generation.to_deployment(
        name=GENERATION,
        parameters={"params": params, "n": cfg.generate.n, "seed": cfg.generate.seed},
        tags=["genpipe", "generation"],
        description="batch-generate images + a Parquet manifest from a trained family or MLflow run",
    )
    return [scheduled, on_demand]


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def main() -> None:
    p = OneLineParser(prog="python -m flows.deployments", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["serve", "register"])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--interval", type=_seconds, default=None, metavar="SECONDS",
                   help="run the pipeline every SECONDS seconds instead of on pipeline.schedule")
    args = p.parse_args()
    command_line(lambda: _run(args.action, args.params, args.interval))


def _run(action: str, params: str, interval: float | None) -> None:
    deployments = build_deployments(params, interval)
    if action == "serve":
        serve(*deployments)
    else:
        for d in deployments:
            print(f"registered {d.flow_name}/{d.name}: {d.apply()}")


if __name__ == "__main__":
    main()
