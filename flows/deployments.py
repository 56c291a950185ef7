"""Deployments of both flows, declared in code from params.yaml.

- ``genpipe-pipeline/scheduled``: the training pipeline on ``pipeline.schedule`` (cron).
- ``genpipe-batch-generation/on-demand``: unscheduled; triggered with parameters.

``python -m flows.deployments serve`` registers both with the Prefect API
(``PREFECT_API_URL``) and runs their flow runs in this process until stopped;
``python -m flows.deployments register`` only registers them (for a look in the UI, or
for tests).
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment

from flows.generate import batch_generation
from flows.pipeline import pipeline
from genpipe.config import load_config

PIPELINE = "scheduled"
GENERATION = "on-demand"


def build_deployments(params: str = "params.yaml") -> list[RunnerDeployment]:
    cfg = load_config(params)
    scheduled = pipeline.to_deployment(
        name=PIPELINE,
        schedules=[CronSchedule(cron=cfg.pipeline.schedule, timezone=cfg.pipeline.timezone)],
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["serve", "register"])
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    deployments = build_deployments(args.params)
    if args.action == "serve":
        serve(*deployments)
    else:
        for d in deployments:
            print(f"registered {d.flow_name}/{d.name}: {d.apply()}")


if __name__ == "__main__":
    main()
